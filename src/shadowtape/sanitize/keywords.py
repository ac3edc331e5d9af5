"""What a key name says it holds: `billingAddress`, `card_holder`, `X-Customer-Name` and
`cardholder` are split into words and matched against the policy's vocabularies.

Exact key rules miss what real APIs call things (`holder`, `customer_name`, `addr`,
`shipping_address`), so the policy names *words* instead of keys: a key holds a person's name
when one of its words is a person-name word and none of its words says otherwise
(`product_name`, `hostname`, `owner_id` are no names). Words come from camelCase, snake_case,
kebab-case, dots and digits, and compounds of known words are split (`cardholder` -> card
holder, `firstname` -> first name); a word the vocabularies do not know stays whole, so
`namespace` is `namespace`, never `name` + `space`.

Pure functions over names; the policy compiles one `KeyVocabulary` per process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

_CAMEL_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
# Words that only separate or qualify: known to the splitter so compounds around them split.
_GLUE = frozenset(
    [
        "of",
        "on",
        "at",
        "by",
        "in",
        "to",
        "for",
        "the",
        "and",
        "or",
        "id",
        "ids",
        "no",
        "num",
        "nr",
        "number",
        "code",
        "type",
        "date",
        "time",
        "key",
    ]
)


@dataclass(frozen=True, slots=True)
class Category:
    """One vocabulary: what a key holds when its words match."""

    name: str
    action: str
    # A key matches when it contains one of these; an entry of several words ("tax id")
    # needs all of them.
    words: tuple[tuple[str, ...], ...]
    # Words that, in a key below a matching key, also match (`holder: {first: ..}`).
    parts: tuple[str, ...] = ()
    # Words that veto a match (`product_name`, `owner_id`).
    unless: tuple[str, ...] = ()
    # What a value must contain to be taken for this category: "letter", "digit" or "any".
    needs: str = "any"

    @property
    def rule_id(self) -> str:
        return f"key_words:{self.name}"


class KeyVocabulary:
    """Compiled categories with a cache per key name."""

    def __init__(self, categories: Iterable[Category]) -> None:
        self.categories = tuple(categories)
        known: set[str] = set(_GLUE)
        for c in self.categories:
            for entry in c.words:
                known.update(entry)
            known.update(c.parts)
            known.update(c.unless)
        self.known = frozenset(w for w in known if w)
        self._cache: dict[str, Category | None] = {}
        self._part_cache: dict[tuple[str, str], Category | None] = {}

    def words(self, key: str) -> tuple[str, ...]:
        return split_key(key, self.known)

    def category(self, key: str) -> Category | None:
        """The first category (in policy order) whose words the key holds."""
        if key in self._cache:
            return self._cache[key]
        words = self.words(key)
        found = None
        wordset = set(words)
        for c in self.categories:
            if wordset.intersection(c.unless):
                continue
            if any(all(w in wordset for w in entry) for entry in c.words):
                found = c
                break
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[key] = found
        return found

    def part_category(self, parent: str, key: str) -> Category | None:
        """The category a key below `parent` takes as a part of it: `first` under `holder`."""
        cache_key = (parent, key)
        if cache_key in self._part_cache:
            return self._part_cache[cache_key]
        found = None
        outer = self.category(parent)
        if outer is not None and outer.parts:
            words = set(self.words(key))
            if words.intersection(outer.parts) and not words.intersection(outer.unless):
                found = outer
        if len(self._part_cache) > 50_000:
            self._part_cache.clear()
        self._part_cache[cache_key] = found
        return found


def value_fits(category: Category, value: str) -> bool:
    """Whether a value could hold what the category names: a name has letters, a phone
    number digits; `owner_id: 1234` is no name."""
    if category.needs == "letter":
        return any(ch.isalpha() for ch in value)
    if category.needs == "digit":
        return any(ch.isdigit() for ch in value)
    return bool(value.strip())


def split_key(key: str, known: frozenset[str]) -> tuple[str, ...]:
    """`billingAddress_line1` -> ("billing", "address", "line", "1"); `cardholder` -> ("card",
    "holder") when both are known words."""
    return _split_key(key, known)


@lru_cache(maxsize=65_536)
def _split_key(key: str, known: frozenset[str]) -> tuple[str, ...]:
    out: list[str] = []
    for part in re.split(r"[^A-Za-z0-9]+", key):
        for piece in _CAMEL_RE.findall(part):
            low = piece.lower()
            if low.isdigit() or low in known:
                out.append(low)
            else:
                out.extend(_compound(low, known))
    return tuple(out)


def _compound(word: str, known: frozenset[str]) -> list[str]:
    """The split of `word` into the fewest known words of two or more letters, or the word
    itself when it is no such compound."""
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for end in range(2, n + 1):
        for start in range(0, end - 1):
            prefix = best[start]
            piece = word[start:end]
            if prefix is None or piece not in known:
                continue
            candidate = [*prefix, piece]
            current = best[end]
            if current is None or len(candidate) < len(current):
                best[end] = candidate
    result = best[n]
    return result if result else [word]
