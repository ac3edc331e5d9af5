"""Value propagation: the values sanitize replaced somewhere, and every other place they occur.

A name given once under `full_name` and quoted in a support ticket that no detector reads as
a name is still the same person. So the job runs in two passes: the first scrubs and learns
every value a rule or a detector replaced (a *literal*, with the kind of replacement it got),
the second replaces every remaining occurrence of a literal anywhere in the dataset with the
same kind of replacement, which is keyed on the value: the ticket gets the pseudonym the
`full_name` field got.

Matching is on word boundaries (a literal is never replaced inside a longer word) and, for a
literal that is a part of a full name ("Quackenbush" of "Zebulon Quackenbush"), only where
it is written capitalised, so a surname that is also a word ("Baker", "Rose") is not
replaced in "baker's dozen". Short values, values with no letters and fewer than six digits,
and common English words are never learned: replacing every "2024" or "gold" in a dataset
would break dates, replay and diff for nothing.

Memory: one dictionary entry per distinct literal, about 250 bytes each (README "Value
propagation"). The set is bounded (`propagation.max_literals`); past the bound the job stops
with an error instead of propagating only some (fail-closed).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from shadowtape.errors import InputError
from shadowtape.sanitize import lexicon, markers

# Kinds of replacement, strongest first: a value learned under several keeps the strongest,
# whatever the order the row groups were read in (the result must not depend on workers).
KIND_PRIORITY = {"redact": 0, "drop": 1, "secret": 2, "hash": 3, "pseudonymize": 4}
ENTITY_PRIORITY = 5  # "entity:<E>" kinds, ordered among themselves by name
PART_SUFFIX = "+part"
MAX_LITERAL_LENGTH = 256
MIN_DIGITS_WITHOUT_LETTERS = 6
_TOKEN_RE = re.compile(r"\w+")
_WORD_RE = re.compile(r"[^\W\d_][\w'’-]*")
_STRUCTURAL_WORDS = frozenset(
    ("true", "false", "null", "none", "nil", "undefined", "yes", "no", "n/a", "na",
     "unknown", "default", "other", "test")
)  # fmt: skip


class LiteralBoundError(InputError):
    """More distinct sensitive values than propagation.max_literals."""


def _rank(kind: str) -> tuple[int, str]:
    base = kind.removesuffix(PART_SUFFIX)
    prio = KIND_PRIORITY.get(base, ENTITY_PRIORITY)
    # A part of a name ranks below the full value it came from.
    return (prio * 2 + (kind != base), base)


def stronger(a: str, b: str) -> str:
    return a if _rank(a) <= _rank(b) else b


@dataclass(slots=True)
class LiteralCollector:
    """Literals learned in one unit of work; merged in the driver."""

    min_length: int = 4
    part_min_length: int = 3
    literals: dict[str, str] = field(default_factory=dict)  # literal -> kind
    _rejected: set[str] = field(default_factory=set)  # seen, not eligible, no name parts

    def learn(self, value: str, kind: str, *, is_name: bool = False) -> None:
        text = value.strip()
        # The same value is replaced again in every row that holds it: learned once.
        if self.literals.get(text) == kind or text in self._rejected:
            return
        if len(self._rejected) > 100_000:
            self._rejected.clear()
        if self._eligible(text):
            self._put(text, kind)
        elif not is_name:
            self._rejected.add(text)
        if is_name:
            self.learn_parts(text, kind)

    def learn_parts(self, text: str, kind: str) -> None:
        lex = lexicon.lexicon()
        words = _WORD_RE.findall(text)
        if len(words) < 2:
            return
        for word in words:
            word = word.strip("'’-")
            if (
                len(word) >= self.part_min_length
                and (word.istitle() or word.isupper())
                and not lex.is_common(word)
                and not markers.is_marked_word(word)
            ):
                self._put(word, kind + PART_SUFFIX)

    def _eligible(self, text: str) -> bool:
        if len(text) < self.min_length or len(text) > MAX_LITERAL_LENGTH:
            return False
        if not _TOKEN_RE.search(text):
            return False
        if not any(ch.isalpha() for ch in text):
            digits = sum(ch.isdigit() for ch in text)
            if digits < MIN_DIGITS_WITHOUT_LETTERS:
                return False
        low = text.lower()
        if low in _STRUCTURAL_WORDS:
            return False
        if " " not in text and lexicon.lexicon().is_common(text):
            return False
        # Our own replacements are never learned: they are already safe.
        if markers.is_opaque_token(text) or markers.PSEUDONYM_EMAIL_RE.match(text):
            return False
        return not (text.startswith("[") and text.endswith("]") and " " not in text)

    def _put(self, text: str, kind: str) -> None:
        old = self.literals.get(text)
        self.literals[text] = kind if old is None else stronger(old, kind)


def merge(into: dict[str, str], other: Mapping[str, str], bound: int) -> None:
    """Add `other` to `into`; raises LiteralBoundError past `bound` distinct literals."""
    for text, kind in other.items():
        old = into.get(text)
        into[text] = kind if old is None else stronger(old, kind)
    if len(into) > bound:
        raise LiteralBoundError(
            f"value propagation: more than {bound:,} distinct sensitive values in this "
            "dataset; no output was written. Raise propagation.max_literals in the policy "
            "(about 250 bytes of memory per value and worker), sanitize the dataset in parts, "
            "or set propagation.enabled: false"
        )


@dataclass(frozen=True, slots=True)
class LiteralSet:
    """The merged literals, as the second pass needs them: picklable, built once per worker."""

    literals: tuple[tuple[str, str], ...]
    fingerprint: str

    @classmethod
    def of(cls, literals: Mapping[str, str]) -> LiteralSet:
        items = tuple(sorted(literals.items()))
        digest = hashlib.sha256()
        for text, kind in items:
            digest.update(
                text.encode("utf-8", "surrogateescape") + b"\x00" + kind.encode() + b"\x01"
            )
        return cls(items, digest.hexdigest()[:16])

    def __len__(self) -> int:
        return len(self.literals)


# A replacement for a matched occurrence: (matched text, kind) -> new text.
Replace = Callable[[str, str], str]


class LiteralMatcher:
    """Finds literals in text on word boundaries. Each literal is indexed by its longest word
    (rarer than its first: a phone number's first word is "1"), so the cost per text is one
    dictionary lookup per word, not per literal, and a text none of whose words is such a key
    word is passed over at once."""

    def __init__(self, literals: Iterable[tuple[str, str]]) -> None:
        self._index: dict[str, list[tuple[str, str, int, bool]]] = {}
        for text, kind in literals:
            words = list(_TOKEN_RE.finditer(text))
            if not words:
                continue
            # The longest word that is not a common one ("street", "suite"), else the longest.
            lex = lexicon.lexicon()
            rare = [m for m in words if not lex.is_common(m.group())] or words
            key = max(rare, key=lambda m: len(m.group()))
            part = kind.endswith(PART_SUFFIX)
            entry = (text.lower(), kind.removesuffix(PART_SUFFIX), key.start(), part)
            self._index.setdefault(key.group().lower(), []).append(entry)

    def __bool__(self) -> bool:
        return bool(self._index)

    def could_match(self, text: str) -> bool:
        """Whether any literal occurs in `text` (a whole body, before it is walked)."""
        return bool(self.find(text))

    def replace(self, text: str, replace: Replace) -> tuple[str, int]:
        """`text` with every literal occurrence replaced, and how many were."""
        spans = self.find(text)
        if not spans:
            return text, 0
        out: list[str] = []
        pos = 0
        for start, end, kind in spans:
            out += [text[pos:start], replace(text[start:end], kind)]
            pos = end
        out.append(text[pos:])
        return "".join(out), len(spans)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping (start, end, kind) of literal occurrences, in text order; of
        overlapping ones the longest wins ("Jane Doe" over "Jane")."""
        if not self._index:
            return []
        candidates: list[tuple[int, int, str]] = []
        for m in _TOKEN_RE.finditer(text):
            entries = self._index.get(m.group().lower())
            if not entries:
                continue
            for low, kind, lead, part in entries:
                start = m.start() - lead
                end = start + len(low)
                if start < 0 or text[start:end].lower() != low:
                    continue
                if not _boundary(text, start, end):
                    continue
                found = text[start:end]
                if part and not (found.istitle() or found.isupper()):
                    continue
                candidates.append((start, end, kind))
        candidates.sort(key=lambda c: (c[0], -(c[1] - c[0])))
        spans: list[tuple[int, int, str]] = []
        for start, end, kind in candidates:
            if spans and start < spans[-1][1]:
                if end - start > spans[-1][1] - spans[-1][0] and start == spans[-1][0]:
                    spans[-1] = (start, end, kind)
                continue
            spans.append((start, end, kind))
        return spans


def _boundary(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_")
