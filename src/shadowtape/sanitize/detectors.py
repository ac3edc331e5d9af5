"""What counts as sensitive in free text: Presidio's pattern recognizers plus our own.

Nothing is downloaded (see FIELD-NOTES): no `en_core_web_lg`, an explicit list of
recognizers, and an offline tldextract for the email recognizer. Without a trained model the
recognizers are called directly (no spaCy pass at all); a trained spaCy model (`--nlp-model`)
runs through Presidio's AnalyzerEngine and adds its named entities (PERSON, LOCATION, ...).

Presidio's cost is per call, not per match: about a millisecond for a short string, most of it
in the phone recognizer trying eight regions. So `Detector.find` first asks cheap questions
(could this recognizer match this text at all?) and most values never reach a recognizer.
Callers cache per distinct value on top of that.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowtape.errors import InputError
from shadowtape.keyed import is_token

# Entities whose recognizers are pure patterns: available on any machine.
PATTERN_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "UUID",
    "MAC_ADDRESS",
    "CRYPTO",
    "JWT",
    "BEARER_TOKEN",
    "API_KEY",
)
# Entities that only a trained spaCy model finds (with the blank pipeline they find nothing).
MODEL_ENTITIES = ("PERSON", "LOCATION", "NRP", "ORGANIZATION")
KNOWN_ENTITIES = PATTERN_ENTITIES + MODEL_ENTITIES

# The domain every pseudonymous email gets. `.invalid` is reserved (RFC 2606) and is no public
# suffix, so such an address can never reach a real mailbox, and verify can tell our
# pseudonyms from leaked addresses without the key.
PSEUDONYM_EMAIL_SUFFIX = ".invalid"
# Pseudonymous IPs come from ranges no host on the internet has: 240.0.0.0/4 (reserved) and
# 2001:db8::/32 (documentation).
PSEUDONYM_NETWORKS = (ipaddress.ip_network("240.0.0.0/4"), ipaddress.ip_network("2001:db8::/32"))
# Pseudonymous UUIDs are version 8 ("custom", RFC 9562), which no generator of real ids emits.
_UUID8_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-8[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-")

_JWT_PATTERN = r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
# Only the credential after the scheme is the secret: "Bearer " stays, so the replacement of a
# bearer token equals the replacement of the same token seen on its own.
_BEARER_PATTERN = r"(?i)(?<=bearer )[A-Za-z0-9\-._~+/]{12,}=*"
_API_KEY_PATTERNS = (
    r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}\b",  # Stripe
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google
    r"\bglpat-[A-Za-z0-9_-]{20}\b",  # GitLab
)

# A value with none of these characters cannot match any pattern recognizer we enable: emails
# need '@', numbers need digits, JWTs start with "eyJ", bearer tokens follow "bearer", IPv6
# needs ':', API keys have a known prefix. This one test keeps most strings (names of things,
# enum values) away from Presidio.
_MAYBE_SENSITIVE_RE = re.compile(
    r"[0-9@:]|eyJ|(?i:bearer)|_live_|_test_|AKIA|gh[pousr]_|xox[abprs]-|AIza|glpat-"
)
# Structural values that match recognizers by accident (a date read as a phone number).
_STRUCTURAL_RES = (
    re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"),
    re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$"),
    re.compile(r"^-?\d{1,6}(\.\d+)?$"),
    re.compile(r"^stk_[a-z2-7]{26}$"),
)
# Values that are, whole, one of our own replacements: the common case of a value sanitize
# wrote itself (verify, and the check that a new pseudonym is clean).
_WHOLE_PSEUDONYM_RES = (
    ("EMAIL_ADDRESS", re.compile(r"^[a-z2-7]{10}@[a-z2-7]{8}\.example\.invalid$")),
    (
        "IP_ADDRESS",
        re.compile(r"^24\d\.\d{1,3}\.\d{1,3}\.\d{1,3}$|^25[0-5]\.\d{1,3}\.\d{1,3}\.\d{1,3}$"),
    ),
    ("IP_ADDRESS", re.compile(r"^2001:db8:[0-9a-f:]*$")),
    ("UUID", _UUID8_RE),
)
_UUID_SHAPE_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    entity: str
    score: float


def is_pseudonym(entity: str, text: str) -> bool:
    """Whether a match is one of our own replacements (see the markers above)."""
    if is_token(text):
        return True
    if entity == "EMAIL_ADDRESS":
        return text.lower().endswith(PSEUDONYM_EMAIL_SUFFIX)
    if entity == "IP_ADDRESS":
        try:
            addr = ipaddress.ip_address(text.split("/")[0].split("%")[0])
        except ValueError:
            return False
        return any(addr in net for net in PSEUDONYM_NETWORKS if net.version == addr.version)
    if entity == "UUID":
        return bool(_UUID8_RE.match(text))
    return False


def unavailable_entities(entities: Iterable[str], nlp_model: str | None) -> tuple[str, ...]:
    """Entities a policy asks for that nothing can find here (model entities without a
    model): reported, so a policy never silently does less than it says."""
    return tuple(e for e in entities if e in MODEL_ENTITIES and not nlp_model)


def check_nlp_model(name: str | None) -> None:
    """Refuse, up front and in one line, a --nlp-model that is not installed: spaCy would
    otherwise fail deep inside a worker (or try to download it)."""
    if name is None:
        return
    import spacy

    if not (spacy.util.is_package(name) or Path(name).exists()):
        raise InputError(
            f"--nlp-model {name}: no such spaCy model installed here; install it "
            f"(python -m spacy download {name}) or leave --nlp-model out"
        )


def could_contain_sensitive(text: str) -> bool:
    if not _MAYBE_SENSITIVE_RE.search(text):
        return False
    if any(r.match(text) for r in _STRUCTURAL_RES):
        return False
    return not any(r.match(text) and is_pseudonym(e, text) for e, r in _WHOLE_PSEUDONYM_RES)


def _offline_tldextract():  # noqa: ANN202 - tldextract's type, imported lazily
    import tldextract

    # No suffix-list URLs: the bundled snapshot is used and nothing is fetched.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def build_recognizers(entities: Iterable[str]) -> list[tuple[str, Any]]:
    """(entity, Presidio recognizer) for each entity that has a pattern recognizer."""
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        MacAddressRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
        UuidRecognizer,
    )

    extract = _offline_tldextract()

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    factories = {
        "EMAIL_ADDRESS": OfflineEmailRecognizer,
        "PHONE_NUMBER": PhoneRecognizer,
        "CREDIT_CARD": CreditCardRecognizer,
        "IBAN_CODE": IbanRecognizer,
        "IP_ADDRESS": IpRecognizer,
        "US_SSN": UsSsnRecognizer,
        "UUID": UuidRecognizer,
        "MAC_ADDRESS": MacAddressRecognizer,
        "CRYPTO": CryptoRecognizer,
        "JWT": lambda: PatternRecognizer(
            supported_entity="JWT", patterns=[Pattern("jwt", _JWT_PATTERN, 0.9)]
        ),
        "BEARER_TOKEN": lambda: PatternRecognizer(
            supported_entity="BEARER_TOKEN", patterns=[Pattern("bearer", _BEARER_PATTERN, 0.9)]
        ),
        "API_KEY": lambda: PatternRecognizer(
            supported_entity="API_KEY",
            patterns=[Pattern(f"api_key_{i}", p, 0.9) for i, p in enumerate(_API_KEY_PATTERNS)],
        ),
    }
    return [(e, factories[e]()) for e in entities if e in factories]


def nlp_engine(model: str | None):  # noqa: ANN202 - a Presidio NlpEngine
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class LocalSpacyNlpEngine(SpacyNlpEngine):
        """Loads a blank pipeline (or an installed model) and never downloads anything."""

        def load(self) -> None:
            self.nlp = {"en": spacy.load(model) if model else spacy.blank("en")}

    return LocalSpacyNlpEngine(models=[{"lang_code": "en", "model_name": model or "blank"}])


MIN_PHONE_DIGITS = 7
_IPV4_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
_UUID_ANYWHERE_RE = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
)
_DIGITS = str.maketrans("", "", "0123456789")
_IBAN_START_RE = re.compile(r"[A-Za-z]{2}\d{2}")
_IP_HINT_RE = re.compile(r"\d\.\d|:")
_UUID_HINT_RE = re.compile(r"[0-9a-fA-F]{8}-")
_MAC_HINT_RE = re.compile(r"[0-9a-fA-F]{2}[:.-][0-9a-fA-F]{2}")
_BEARER_HINT_RE = re.compile(r"(?i)bearer ")
_API_KEY_HINT_RE = re.compile(r"_live_|_test_|AKIA|gh[pousr]_|xox[abprs]-|AIza|glpat-")
# What a text must contain for each recognizer to have any chance; (text, digit count) -> bool.
# All are necessary conditions of the recognizer's own patterns except the phone one, which is
# a choice: a personal phone number has at least 7 digits, and running the phone recognizer
# (8 regions, ~0.5 ms) on every SKU, year and count is where the time of a naive pass goes.
_CANDIDATE: dict[str, Callable[[str, int], bool]] = {
    "EMAIL_ADDRESS": lambda t, d: "@" in t,
    # E.164 numbers have at most 15 digits: a longer run of digits alone is no phone number;
    # nor is a dotted quad.
    "PHONE_NUMBER": lambda t, d: (
        d >= MIN_PHONE_DIGITS and not (d > 15 and t.isdigit()) and not _IPV4_RE.match(t)
    ),
    "CREDIT_CARD": lambda t, d: d >= 12,
    "US_SSN": lambda t, d: d >= 9,
    "IBAN_CODE": lambda t, d: d >= 2 and bool(_IBAN_START_RE.search(t)),
    "IP_ADDRESS": lambda t, d: bool(_IP_HINT_RE.search(t)),
    "UUID": lambda t, d: d > 0 and bool(_UUID_HINT_RE.search(t)),
    "MAC_ADDRESS": lambda t, d: bool(_MAC_HINT_RE.search(t)),
    "JWT": lambda t, d: "eyJ" in t,
    "BEARER_TOKEN": lambda t, d: bool(_BEARER_HINT_RE.search(t)),
    "API_KEY": lambda t, d: bool(_API_KEY_HINT_RE.search(t)),
}


class Detector:
    """Finds sensitive spans in a string. One per process; build it once, it is slow to make.

    With pattern recognizers only (no --nlp-model), each recognizer is called directly and
    only on texts that could match it: Presidio's AnalyzerEngine would tokenize every text
    with spaCy and run every recognizer, which costs more than the matching itself and adds
    nothing a pattern needs. With a trained model the full AnalyzerEngine runs.
    """

    def __init__(
        self,
        entities: Iterable[str],
        score_threshold: float = 0.4,
        nlp_model: str | None = None,
    ) -> None:
        # Presidio logs every recognizer it loads at INFO and warns about unused languages.
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        wanted = list(dict.fromkeys(entities))
        self.score_threshold = score_threshold
        self.unavailable = unavailable_entities(wanted, nlp_model)
        self.entities = tuple(e for e in wanted if e not in self.unavailable)
        self._find_uuids = "UUID" in self.entities
        self._recognizers = build_recognizers(self.entities)
        model_entities = [e for e in self.entities if e in MODEL_ENTITIES]
        self._engine = self._analyzer(nlp_model, model_entities) if model_entities else None

    def _analyzer(self, nlp_model: str | None, model_entities: list[str]):  # noqa: ANN202
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer

        registry = RecognizerRegistry(supported_languages=["en"])
        for _, recognizer in self._recognizers:
            registry.add_recognizer(recognizer)
        registry.add_recognizer(SpacyRecognizer(supported_entities=model_entities))
        return AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp_engine(nlp_model),
            supported_languages=["en"],
            default_score_threshold=self.score_threshold,
        )

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings, in text order; our own pseudonyms are not findings."""
        if not text or not self.entities:
            return []
        if self._engine is not None:
            results = [
                (r.start, r.end, r.entity_type, r.score)
                for r in self._engine.analyze(
                    text=text,
                    language="en",
                    entities=list(self.entities),
                    score_threshold=self.score_threshold,
                )
            ]
        else:
            results = self._find_patterns(text)
        found = [Finding(*r) for r in results if r[3] >= self.score_threshold]
        # Overlaps first: a phone-number reading of one of our pseudonymous IPs loses to the
        # IP reading, and then the IP is recognised as ours.
        return [
            f for f in _resolve_overlaps(found) if not is_pseudonym(f.entity, text[f.start : f.end])
        ]

    def _find_patterns(self, text: str) -> list[tuple[int, int, str, float]]:
        if not could_contain_sensitive(text):
            return []
        # An id in UUID shape holds nothing else (its digit runs are not phone numbers); it is a
        # finding only where the policy says UUIDs are personal. Masked with same-length
        # filler, so spans still index the original text.
        if not self._find_uuids and "-" in text:
            if _UUID_SHAPE_RE.match(text):
                return []
            text = _UUID_ANYWHERE_RE.sub(lambda m: "_" * len(m.group()), text)
        digits = len(text) - len(text.translate(_DIGITS))
        out = []
        for entity, recognizer in self._recognizers:
            check = _CANDIDATE.get(entity)
            if check is not None and not check(text, digits):
                continue
            for r in recognizer.analyze(text, [entity], None):
                out.append((r.start, r.end, r.entity_type, r.score))
        return out


def _resolve_overlaps(found: list[Finding]) -> list[Finding]:
    # A URL recognizer hit inside an email, a phone inside a card: keep the strongest, then the
    # longest match, so each character is replaced once.
    ranked = sorted(found, key=lambda f: (-f.score, -(f.end - f.start), f.start, f.entity))
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
