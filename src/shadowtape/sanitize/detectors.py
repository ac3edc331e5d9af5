"""What counts as sensitive in a string: Presidio's pattern recognizers, our own, and the
name lexicon.

Nothing is downloaded (see FIELD-NOTES): no `en_core_web_lg`, an explicit set of recognizers,
no suffix list. Without a trained model the recognizers are run directly, without Presidio's
AnalyzerEngine and its spaCy pass: each PatternRecognizer's own patterns, `validate_result`
and `invalidate_result` and its context words (which raise a weak match's score when one of
them is near it or in the key the value sits under, as Presidio's context enhancer does).
A trained spaCy model (`--nlp-model`) adds its named entities through the AnalyzerEngine.

Emails are ours, not Presidio's: its recognizer checks the domain against the public-suffix
list, so `jane@corp.internal` or `ops@host.local` would be "no email". Here any address of
the right syntax is one, whatever its top-level domain (fail-closed).

Cost: a recognizer call costs microseconds to a millisecond, so `Detector.find` first asks
cheap questions (could this recognizer match this text at all?) and most values never reach
one. Callers cache per distinct value on top of that.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from shadowtape.errors import InputError
from shadowtape.sanitize import lexicon, markers

# Our own recognizers, beside Presidio's.
OWN_ENTITIES = (
    "EMAIL_ADDRESS",
    "JWT",
    "BEARER_TOKEN",
    "API_KEY",
    "PRIVATE_KEY",
    "URL_CREDENTIALS",
)
LEXICON_ENTITIES = lexicon.LEXICON_ENTITIES
# Entities that only a trained spaCy model finds (with the blank pipeline they find nothing).
MODEL_ENTITIES = ("LOCATION", "NRP", "ORGANIZATION")
# Presidio recognizers that are not PatternRecognizers but run without a model.
_OTHER_PRESIDIO = {"PHONE_NUMBER": "PhoneRecognizer"}
# Presidio's own email recognizer is replaced by ours (see the module docstring).
_REPLACED = {"EmailRecognizer"}


@lru_cache(maxsize=1)
def presidio_pattern_classes() -> dict[str, type]:
    """Every pattern recognizer this Presidio ships, by entity: found, not listed, so a new
    Presidio's recognizers are known here without a code change."""
    from presidio_analyzer import PatternRecognizer
    from presidio_analyzer import predefined_recognizers as predefined

    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    out: dict[str, type] = {}
    for name in sorted(dir(predefined)):
        cls = getattr(predefined, name)
        if not (inspect.isclass(cls) and issubclass(cls, PatternRecognizer)):
            continue
        if name in _REPLACED:
            continue
        try:
            entity = cls().supported_entities[0]
        except Exception:  # noqa: S112 - a recognizer that needs arguments is not a pattern one
            continue
        out.setdefault(entity, cls)
    for entity, name in _OTHER_PRESIDIO.items():
        out[entity] = getattr(predefined, name)
    return out


def known_entities() -> tuple[str, ...]:
    pattern = tuple(e for e in presidio_pattern_classes() if e not in OWN_ENTITIES)
    return OWN_ENTITIES + LEXICON_ENTITIES + pattern + MODEL_ENTITIES


def pattern_entities() -> tuple[str, ...]:
    """Everything that runs without a trained model."""
    return tuple(e for e in known_entities() if e not in MODEL_ENTITIES)


# Recognizers that find structure, not personal data: every link, timestamp and id.
STRUCTURE_ENTITIES = ("URL", "DATE_TIME", "UUID")
# National identifiers outside the regions the default policy covers (global, US, UK, EU);
# a policy adds them for users there. Measured on ordinary values: IN_VOTER took 34 of 9,600
# (invoice numbers such as INV5430673).
OTHER_REGIONS = ("AU_", "CA_", "IN_", "KR_", "NG_", "PH_", "SG_", "TH_", "TR_", "ZA_")


def strict_entities() -> tuple[str, ...]:
    """What verify scans with, whatever a policy says: every recognizer that runs without a
    model, less the structure ones and the other regions' ids. The default policy lists the
    same (a test holds them together), so its pseudonyms are drawn clean of all of them."""
    return tuple(
        e
        for e in pattern_entities()
        if e not in STRUCTURE_ENTITIES and not e.startswith(OTHER_REGIONS)
    )


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    entity: str
    score: float


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


# --- our own recognizers --------------------------------------------------------------------

# Any syntactically valid address: a dot-atom local part and a dotted domain whose last label
# starts with a letter (any TLD), a single-label host (`ops@localhost`, `jo@intranet`), or an
# address literal. Quotes, '/', '&', '=',
# '?' and '%' are left out of the local part so that an address inside a URL or a query
# string is found without its surroundings (percent-encoded ones are decoded first).
EMAIL_PATTERN = (
    r"(?<![\w.+!#$*^~-])[\w!#$*+^~-]+(?:\.[\w!#$*+^~-]+)*@"
    r"(?:(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_](?:[\w-]{0,61}[^\W_])?"
    r"|\[[0-9A-Fa-f:.]+\]|[^\W_][\w-]{0,61}(?<=[^\W\d_][\w-]*))(?![\w-]|\.[\w-])"
)
# `logo@2x.png`: an image at a pixel density, the one common non-address of this shape.
_DENSITY_RE = re.compile(r"@\d+(?:\.\d+)?x\.(?:png|jpe?g|gif|webp|svg|avif)$", re.IGNORECASE)
_JWT_PATTERN = r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
# Only the credential after the scheme is the secret: "Bearer " stays, so the replacement of a
# bearer token equals the replacement of the same token seen on its own.
_BEARER_PATTERN = r"(?i)(?<=bearer )[A-Za-z0-9\-._~+/]{12,}=*"
_API_KEY_PATTERNS = (
    r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{10,}\b",  # Stripe
    r"\bwhsec_[A-Za-z0-9]{20,}\b",  # Stripe webhook secret
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub
    r"\bgithub_pat_[A-Za-z0-9_]{40,}\b",  # GitHub fine-grained
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google
    r"\bya29\.[0-9A-Za-z_-]{20,}\b",  # Google OAuth access token
    r"\bglpat-[A-Za-z0-9_-]{20}\b",  # GitLab
    r"\bnpm_[A-Za-z0-9]{36}\b",  # npm
    r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b",  # SendGrid
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b",  # OpenAI / Anthropic
    r"\bSK[0-9a-fA-F]{32}\b",  # Twilio
    r"https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,}",  # Slack webhook
)
_PRIVATE_KEY_PATTERN = (
    r"-----BEGIN (?:[A-Z0-9 ]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9 ]+ )?PRIVATE KEY-----"
)
# `scheme://user:password@host`: the user and password.
_URL_CREDENTIALS_PATTERN = r"(?<=://)[^/\s:@?#]+:[^/\s@?#]+(?=@)"

_OWN_PATTERNS: dict[str, tuple[str, ...]] = {
    "EMAIL_ADDRESS": (EMAIL_PATTERN,),
    "JWT": (_JWT_PATTERN,),
    "BEARER_TOKEN": (_BEARER_PATTERN,),
    "API_KEY": _API_KEY_PATTERNS,
    "PRIVATE_KEY": (_PRIVATE_KEY_PATTERN,),
    "URL_CREDENTIALS": (_URL_CREDENTIALS_PATTERN,),
}
_OWN_SCORES = {"EMAIL_ADDRESS": 1.0, "URL_CREDENTIALS": 1.0, "PRIVATE_KEY": 1.0}

# --- cheap necessary conditions -------------------------------------------------------------

MIN_PHONE_DIGITS = 7
_IPV4_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
_IBAN_START_RE = re.compile(r"[A-Za-z]{2}\d{2}")
_IP_HINT_RE = re.compile(r"\d\.\d|:")
_UUID_HINT_RE = re.compile(r"[0-9a-fA-F]{8}-")
_MAC_HINT_RE = re.compile(r"[0-9a-fA-F]{2}[:.-][0-9a-fA-F]{2}|[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}")
_BEARER_HINT_RE = re.compile(r"(?i)bearer ")
_API_KEY_HINT_RE = re.compile(
    r"_live_|_test_|whsec_|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|AIza|ya29\.|glpat-|npm_"
    r"|SG\.|sk-|SK[0-9a-fA-F]|hooks\.slack"
)
# What a text must contain for each recognizer to have any chance; (text, digit count) -> bool.
# All are necessary conditions of the patterns except two choices: a personal phone number has
# at least 7 digits, and any other identifier Presidio recognizes has at least 2 (its patterns
# all require digits; running ~40 recognizers on every word is where a naive pass's time goes).
_CANDIDATE: dict[str, Callable[[str, int], bool]] = {
    "EMAIL_ADDRESS": lambda t, d: "@" in t,
    # E.164 numbers have at most 15 digits: a longer run of digits alone is no phone number;
    # nor is a dotted quad.
    "PHONE_NUMBER": lambda t, d: (
        d >= MIN_PHONE_DIGITS and not (d > 15 and t.isdigit()) and not _IPV4_RE.match(t)
    ),
    "CREDIT_CARD": lambda t, d: d >= 12,
    "US_SSN": lambda t, d: d >= 9,
    "US_ITIN": lambda t, d: d >= 9,
    "ABA_ROUTING_NUMBER": lambda t, d: d >= 9,
    "UK_NHS": lambda t, d: d >= 10,
    "IBAN_CODE": lambda t, d: d >= 2 and bool(_IBAN_START_RE.search(t)),
    "IP_ADDRESS": lambda t, d: bool(_IP_HINT_RE.search(t)),
    "UUID": lambda t, d: d > 0 and bool(_UUID_HINT_RE.search(t)),
    "MAC_ADDRESS": lambda t, d: bool(_MAC_HINT_RE.search(t)),
    "CRYPTO": lambda t, d: d >= 1 and len(t) >= 26,
    "JWT": lambda t, d: "eyJ" in t,
    "BEARER_TOKEN": lambda t, d: bool(_BEARER_HINT_RE.search(t)),
    "API_KEY": lambda t, d: bool(_API_KEY_HINT_RE.search(t)),
    "PRIVATE_KEY": lambda t, d: "PRIVATE KEY-----" in t,
    "URL_CREDENTIALS": lambda t, d: "://" in t and "@" in t,
    "PERSON": lambda t, d: lexicon.could_hold_names(t),
    "STREET_ADDRESS": lambda t, d: d >= 1 and lexicon.could_hold_names(t),
}
# Identifiers found inside a longer token are parts of that token, not identifiers:
# "ORD-2024-000123" holds no phone number, "Chrome/124.0.6367.91" no IP or phone.
_MAY_BE_EMBEDDED = frozenset({"IP_ADDRESS", "MAC_ADDRESS", "CRYPTO", "IBAN_CODE"})
_JOINERS = "-/._"
_DEFAULT_CANDIDATE: Callable[[str, int], bool] = lambda t, d: d >= 2  # noqa: E731
_DIGITS = str.maketrans("", "", "0123456789")
# Whole values that are structure, not data: ISO dates and times, HTTP dates, small numbers
# and decimals (prices, counts, coordinates), our credential tokens.
_STRUCTURAL_RES = (
    re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"),
    re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$"),
    re.compile(r"^-?\d{1,6}(\.\d+)?$"),
    re.compile(r"^-?\d{1,3}\.\d+, ?-?\d{1,3}\.\d+$"),
    re.compile(r"^stk_[a-z2-7]{26}$"),
)
_UUID_SHAPE_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_UUID_ANYWHERE_RE = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
)
# A checksum over bare digits is a coin flip for random ids: measured, about 1 in 100 random
# 9-12 digit numbers (order ids, totals, counts) passes one of the national-id checksums. So a
# match of digits only, from an identifier recognizer, needs a context word (in the key it sits
# under or just before it) to count; a formatted one ("401-023-2137") or one with letters does
# not. Phone numbers, cards and network addresses keep their own scores.
# Phone numbers too (measured: 29 of 9,600 ordinary values, all bare 10-digit ids, were
# "valid" phone numbers); under a phone key, or after "call", one still counts.
_BARE_DIGITS_OK = frozenset({"CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "MAC_ADDRESS", "CRYPTO"})
_BARE_DIGITS_SCORE = 0.3
_CONTEXT_WINDOW_WORDS = 5
# Presidio's context enhancer: a context word raises a match by 0.35, to at least 0.4.
_CONTEXT_BOOST = 0.35
_CONTEXT_MIN = 0.4
_WORD_RE = re.compile(r"[^\W\d_]+")


def is_structural(text: str) -> bool:
    return any(r.match(text) for r in _STRUCTURAL_RES)


class _PatternRunner:
    """One Presidio PatternRecognizer run the way `PatternRecognizer.analyze` does, minus
    the per-call overhead (explanations, result objects, the spaCy artifacts it ignores)."""

    def __init__(self, entity: str, recognizer: Any) -> None:
        self.entity = entity
        self.recognizer = recognizer
        self.context = frozenset(w.lower() for w in getattr(recognizer, "context", None) or ())
        flags = recognizer.global_regex_flags
        self.patterns = [
            (regex.compile(p.regex, flags=flags), p.score) for p in recognizer.patterns
        ]
        # A recognizer with its own analyze() (IBAN) is called as it is.
        self.custom = "analyze" in type(recognizer).__dict__

    def find(self, text: str) -> list[tuple[int, int, float]]:
        if self.custom:
            return [(r.start, r.end, r.score) for r in self.recognizer.analyze(text, [self.entity])]
        out = []
        rec = self.recognizer
        for compiled, score in self.patterns:
            for m in compiled.finditer(text):
                start, end = m.span()
                if start == end:
                    continue
                match = text[start:end]
                valid = rec.validate_result(match)
                if valid is not None:
                    if not valid:
                        continue
                    score_here = 1.0
                else:
                    score_here = score
                if rec.invalidate_result(match):
                    continue
                out.append((start, end, score_here))
        return out


class _PhoneRunner:
    def __init__(self, recognizer: Any) -> None:
        self.entity = "PHONE_NUMBER"
        self.recognizer = recognizer
        self.context = frozenset(w.lower() for w in recognizer.context or ())

    def find(self, text: str) -> list[tuple[int, int, float]]:
        return [
            (r.start, r.end, r.score) for r in self.recognizer.analyze(text, [self.entity], None)
        ]


class _RegexRunner:
    def __init__(self, entity: str, patterns: tuple[str, ...], score: float) -> None:
        self.entity = entity
        self.context: frozenset[str] = frozenset()
        self.patterns = [regex.compile(p) for p in patterns]
        self.score = score

    def find(self, text: str) -> list[tuple[int, int, float]]:
        out = []
        for p in self.patterns:
            for m in p.finditer(text):
                if m.end() > m.start():
                    out.append((m.start(), m.end(), self.score))
        if self.entity == "EMAIL_ADDRESS":
            out = [f for f in out if not _DENSITY_RE.search(text[f[0] : f[1]])]
        return out


class _LexiconRunner:
    def __init__(self, entity: str) -> None:
        self.entity = entity
        self.context: frozenset[str] = frozenset()
        self._find = lexicon.find_people if entity == lexicon.PERSON else lexicon.find_addresses

    def find(self, text: str) -> list[tuple[int, int, float]]:
        return list(self._find(text))


def build_runners(entities: Iterable[str]) -> list[Any]:
    """A runner for each entity that has a recognizer here (model entities have none)."""
    classes = presidio_pattern_classes()
    out: list[Any] = []
    for entity in dict.fromkeys(entities):
        if entity in _OWN_PATTERNS:
            out.append(_RegexRunner(entity, _OWN_PATTERNS[entity], _OWN_SCORES.get(entity, 0.9)))
        elif entity in LEXICON_ENTITIES:
            out.append(_LexiconRunner(entity))
        elif entity == "PHONE_NUMBER":
            out.append(_PhoneRunner(classes[entity]()))
        elif entity in classes:
            out.append(_PatternRunner(entity, classes[entity]()))
    return out


def build_recognizers(entities: Iterable[str]) -> list[tuple[str, Any]]:
    """(entity, Presidio recognizer) for the AnalyzerEngine: Presidio's own classes for its
    entities, and pattern recognizers wrapping ours (the lexicon has no Presidio form)."""
    from presidio_analyzer import Pattern, PatternRecognizer

    classes = presidio_pattern_classes()
    out = []
    for entity in dict.fromkeys(entities):
        if entity in _OWN_PATTERNS:
            patterns = [
                Pattern(f"{entity}_{i}", p, 0.9) for i, p in enumerate(_OWN_PATTERNS[entity])
            ]
            out.append((entity, PatternRecognizer(supported_entity=entity, patterns=patterns)))
        elif entity in classes:
            out.append((entity, classes[entity]()))
    return out


def nlp_engine(model: str | None):  # noqa: ANN202 - a Presidio NlpEngine
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class LocalSpacyNlpEngine(SpacyNlpEngine):
        """Loads a blank pipeline (or an installed model) and never downloads anything."""

        def load(self) -> None:
            self.nlp = {"en": spacy.load(model) if model else spacy.blank("en")}

    return LocalSpacyNlpEngine(models=[{"lang_code": "en", "model_name": model or "blank"}])


class Detector:
    """Finds sensitive spans in a string. One per process; build it once, it is slow to make.

    `trust_markers` says whether our pseudonym markers may be believed (sanitized input) or
    not (raw input, where a value in 2001:db8::/32 is data like any other; see markers.py).
    """

    def __init__(
        self,
        entities: Iterable[str],
        score_threshold: float = 0.4,
        nlp_model: str | None = None,
        *,
        trust_markers: bool = False,
    ) -> None:
        # Presidio logs every recognizer it loads at INFO and warns about unused languages.
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        wanted = list(dict.fromkeys(entities))
        self.score_threshold = score_threshold
        self.trust_markers = trust_markers
        self.unavailable = unavailable_entities(wanted, nlp_model)
        self.entities = tuple(e for e in wanted if e not in self.unavailable)
        self._find_uuids = "UUID" in self.entities
        self._runners = build_runners(self.entities)
        self.context_words = frozenset().union(*(r.context for r in self._runners))
        # With a model, its PERSON findings add to the lexicon's.
        model_entities = [
            e for e in self.entities if e in MODEL_ENTITIES or (nlp_model and e == "PERSON")
        ]
        self._model_entities = model_entities
        self._engine = self._analyzer(nlp_model, model_entities) if model_entities else None

    def _analyzer(self, nlp_model: str | None, model_entities: list[str]):  # noqa: ANN202
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer

        registry = RecognizerRegistry(supported_languages=["en"])
        registry.add_recognizer(SpacyRecognizer(supported_entities=model_entities))
        return AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp_engine(nlp_model),
            supported_languages=["en"],
            default_score_threshold=self.score_threshold,
        )

    def find(
        self, text: str, context: Iterable[str] = (), *, trust: bool | None = None
    ) -> list[Finding]:
        """Non-overlapping findings, in text order. `context`: the words of the key the text
        sits under. Our own pseudonyms are not findings where markers are trusted."""
        if not text or not self.entities:
            return []
        trusted = self.trust_markers if trust is None else trust
        found = [Finding(*r) for r in self._find_patterns(text, context, trusted)]
        if self._engine is not None:
            found += [
                Finding(r.start, r.end, r.entity_type, r.score)
                for r in self._engine.analyze(
                    text=text,
                    language="en",
                    entities=self._model_entities,
                    score_threshold=self.score_threshold,
                )
            ]
        found = resolve_overlaps([f for f in found if f.score >= self.score_threshold])
        # Overlaps first: a phone-number reading of one of our pseudonymous IPs loses to the
        # IP reading, and then the IP is recognised as ours.
        if trusted:
            found = [f for f in found if not markers.is_pseudonym(f.entity, text[f.start : f.end])]
        return found

    def _find_patterns(
        self, text: str, context: Iterable[str], trusted: bool
    ) -> list[tuple[int, int, str, float]]:
        if is_structural(text) or (trusted and markers.is_opaque_token(text)):
            return []
        # An id in UUID shape holds nothing else (its digit runs are not phone numbers); it is a
        # finding only where the policy says UUIDs are personal. Masked with same-length
        # filler, so spans still index the original text.
        scan = text
        if not self._find_uuids and "-" in text:
            if _UUID_SHAPE_RE.match(text):
                return []
            scan = _UUID_ANYWHERE_RE.sub(lambda m: "_" * len(m.group()), text)
        digits = len(scan) - len(scan.translate(_DIGITS))
        key_words = frozenset(w.lower() for w in context) & self.context_words
        lowered: list[tuple[int, str]] | None = None
        out = []
        for runner in self._runners:
            check = _CANDIDATE.get(runner.entity, _DEFAULT_CANDIDATE)
            if not check(scan, digits):
                continue
            embedded_ok = runner.entity in _MAY_BE_EMBEDDED or not isinstance(
                runner, _PatternRunner | _PhoneRunner
            )
            for start, end, score in runner.find(scan):
                if not embedded_ok and _embedded(scan, start, end):
                    continue
                if runner.entity not in _BARE_DIGITS_OK and scan[start:end].isdigit():
                    score = min(score, _BARE_DIGITS_SCORE)
                if score < self.score_threshold and runner.context:
                    if lowered is None:
                        lowered = [(m.start(), m.group().lower()) for m in _WORD_RE.finditer(scan)]
                    if _has_context(runner.context, key_words, lowered, start):
                        score = min(1.0, max(_CONTEXT_MIN, score + _CONTEXT_BOOST))
                out.append((start, end, runner.entity, score))
        return out


def _embedded(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    before2 = text[start - 2] if start > 1 else " "
    after = text[end] if end < len(text) else " "
    after2 = text[end + 1] if end + 1 < len(text) else " "
    return (
        before.isalnum()
        or (before in _JOINERS and before2.isalnum())
        or after.isalnum()
        or (after in _JOINERS and after2.isalnum())
    )


def _has_context(
    words: frozenset[str], key_words: frozenset[str], lowered: list[tuple[int, str]], start: int
) -> bool:
    if key_words & words:
        return True
    before = [w for pos, w in lowered if pos < start][-_CONTEXT_WINDOW_WORDS:]
    return any(w in words for w in before)


def resolve_overlaps(found: list[Finding]) -> list[Finding]:
    # A finding inside a longer one is part of it (an NHS-shaped "415-555-2671" inside the
    # phone number "+1 415-555-2671"): the longer is replaced whole, so the value gets the
    # same pseudonym wherever it is found. Of findings that merely overlap, keep the
    # strongest, then the longest, so each character is replaced once.
    found = [
        f
        for f in found
        if not any(
            g.start <= f.start and f.end <= g.end and (g.end - g.start) > (f.end - f.start)
            for g in found
        )
    ]
    # Credentials in a URL outrank the email-shaped "password@host" around them.
    ranked = sorted(
        found,
        key=lambda f: (
            -f.score,
            f.entity != "URL_CREDENTIALS",
            -(f.end - f.start),
            f.start,
            f.entity,
        ),
    )
    kept: list[Finding] = []
    for f in ranked:
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def could_contain_sensitive(text: str) -> bool:
    """Whether any recognizer could match (for callers that want to skip work)."""
    return bool(text) and not is_structural(text)
