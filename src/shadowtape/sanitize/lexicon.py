"""Person names and street addresses in free text, without a trained model.

A pattern cannot describe a name, and with a blank spaCy pipeline Presidio finds no PERSON at
all (FIELD-NOTES). This finder combines three kinds of evidence:

- a name list: the given names and surnames of every Latin-script locale that Faker ships
  (MIT licence, maintained, about 21,000 given names and 21,000 surnames; see README
  "Names without a model" for the measured recall and why not gender-guesser, GPL, or
  names-dataset, scraped from a leaked social network);
- context cues that make the next capitalised words a name whatever they are: honorifics
  (Mr, Ms, Dr, ...), "my name is", "Dear", a signature after "Regards,";
- street-address shapes: a house number, capitalised words and a street suffix (Faker's
  lists of suffixes for English, German, French, Spanish, Italian and Dutch addresses), an
  optional unit and a postcode.

Common English words are never a name on their own ("Will", "May", "Price" are names too), so
a single word needs a strong cue, and a pair of words needs both to come from the name list
unless the given name is unambiguous.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

PERSON = "PERSON"
STREET_ADDRESS = "STREET_ADDRESS"
LEXICON_ENTITIES = (PERSON, STREET_ADDRESS)

_LATIN_NAME_RE = re.compile(r"^[A-Za-zÀ-ÖØ-öø-ÿĀ-ſ'’-]{2,}$")


@dataclass(frozen=True, slots=True)
class Lexicon:
    given: frozenset[str]  # lower-case
    surnames: frozenset[str]  # lower-case
    common: frozenset[str]  # lower-case English words that are not names by themselves
    street_suffixes: frozenset[str]  # lower-case, without a final dot

    def is_name(self, word: str) -> bool:
        low = word.lower()
        return low in self.given or low in self.surnames

    def is_common(self, word: str) -> bool:
        return word.lower().rstrip(".") in self.common


def _faker_names() -> tuple[set[str], set[str]]:
    import faker.providers.person as person_pkg

    given: set[str] = set()
    surnames: set[str] = set()
    for module in pkgutil.iter_modules(person_pkg.__path__):
        provider = importlib.import_module(f"{person_pkg.__name__}.{module.name}").Provider
        for attrs, into in (
            (("first_names", "first_names_male", "first_names_female"), given),
            (("last_names", "last_names_male", "last_names_female"), surnames),
        ):
            for attr in attrs:
                names = provider.__dict__.get(attr)
                if isinstance(names, dict | tuple | list | set | frozenset):
                    for name in names:
                        # Multi-word entries ("Van der Berg") and non-Latin scripts are left
                        # out: the finder reads Latin-script words one at a time.
                        if isinstance(name, str) and _LATIN_NAME_RE.match(name):
                            into.add(name.lower())
    return given, surnames


def _street_suffixes() -> set[str]:
    out: set[str] = set()
    for locale in ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"):
        try:
            provider = importlib.import_module(f"faker.providers.address.{locale}").Provider
        except ImportError:  # pragma: no cover - a Faker without the locale
            continue
        for attr in ("street_suffixes", "street_suffixes_long", "street_suffixes_short"):
            for suffix in getattr(provider, attr, ()) or ():
                out.add(str(suffix).lower().rstrip("."))
        for attr in ("street_prefixes", "street_titles"):
            for prefix in getattr(provider, attr, ()) or ():
                if isinstance(prefix, str) and " " not in prefix:
                    out.add(prefix.lower())
    # The abbreviations people type (USPS and Royal Mail); Faker lists only full words.
    out.update(
        [
            "st",
            "ave",
            "av",
            "rd",
            "blvd",
            "dr",
            "ln",
            "ct",
            "pl",
            "sq",
            "ter",
            "terr",
            "hwy",
            "pkwy",
            "cir",
            "cres",
            "crt",
            "way",
            "aly",
            "expy",
            "fwy",
            "trl",
            "plz",
            "str",
            "ctr",
            "mt",
            "pt",
        ]
    )
    return out


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """Built once per process (about 0.1 s)."""
    from faker.providers.lorem.en_US import Provider as Lorem
    from spacy.lang.en.stop_words import STOP_WORDS

    given, surnames = _faker_names()
    suffixes = _street_suffixes()
    common = {w.lower() for w in Lorem.word_list} | {w.lower() for w in STOP_WORDS}
    common |= {h.lower() for h in _HONORIFICS} | suffixes
    common |= {m.lower() for m in _CALENDAR}
    # Colours name products ("Coral Lamp", "Olive Desk") more often than people.
    from faker.providers.color import Provider as Colors

    common |= {w.lower() for c in Colors.all_colors for w in re.findall(r"[A-Z][a-z]+", c)}
    return Lexicon(frozenset(given), frozenset(surnames), frozenset(common), frozenset(suffixes))


_HONORIFICS = (
    "Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Sir", "Dame", "Lady", "Lord", "Rev",
    "Herr", "Frau", "Mme", "Mlle", "Monsieur", "Madame", "Sr", "Sra", "Srta", "Señor",
    "Señora", "Sig", "Signor", "Signora", "Dhr", "Mevr",
)  # fmt: skip
_CALENDAR = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Sept",
    "Oct",
    "Nov",
    "Dec",
    "Mon",
    "Tue",
    "Wed",
    "Thu",
    "Fri",
    "Sat",
    "Sun",
]

# A capitalised word of a name: "Anne", "O'Brien", "Smith-Jones", "McDonald", "ZEBULON", or an
# initial ("J.").
_WORD = (
    r"(?:[A-ZÀ-ÖØ-ÞĀ-Ž][a-zß-öø-ÿā-ž]*(?:['’-][A-ZÀ-ÖØ-Þa-zß-öø-ÿ][a-zß-öø-ÿ]+)*"
    r"[a-zß-öø-ÿā-ž]|[A-Z]\.)"
)
_NAME_RUN_RE = re.compile(rf"(?<![\w@.]){_WORD}(?:[ \t]+{_WORD}){{0,3}}(?![\w@])")
_UPPER_RUN_RE = re.compile(r"(?<![\w@.])[A-Z]{2,}(?:[ \t]+[A-Z]{2,}){1,2}(?![\w@])")
_HONORIFIC_RE = re.compile(
    r"(?<![\w])(?:" + "|".join(_HONORIFICS) + r")\.?[ \t]+(?=" + _WORD + ")",
)
# Phrases after which the next capitalised words are a name, whatever they are.
_STRONG_CUE_RE = re.compile(
    r"(?i:\bmy name(?: is|'s|’s)|\bmy full name is|\bname:|\bcalled|\bsigned(?: by)?|\battn:?"
    r"|\battention:|\bc/o|\bdear|\bcontact person:?|\bcardholder:?|\baccount holder:?)"
    r"[ \t]*[:,]?[ \t]+"
)
# Weaker phrases: the following words must look like a name (two words, or a listed name).
_WEAK_CUE_RE = re.compile(
    r"(?i:\bthis is|\bi am|\bi'm|\bi’m|\bhi|\bhello|\bhey|\bthanks|\bthank you|\bfrom|"
    r"\bit's|\bspeaking with|\bspoke (?:to|with)|\bask for|\bper|\bby|\bwith|\bcustomer|"
    r"\bclient|\bpatient|\bagent|\bowner|\bholder|\brecipient|\bcall|\bask|\btell|\bemail|"
    r"\btext|\bmeet|\binvite|\bcc|\bfor|\band)[ \t]*[:,]?[ \t]+"
)
# Valedictions: a name on the next line is a signature.
_SIGNATURE_RE = re.compile(
    r"(?i:regards|best|thanks|thank you|sincerely|cheers|yours|best wishes|kind regards|"
    r"warm regards|love|--)[ \t]*,?[ \t]*\r?\n[ \t]*(?=" + _WORD + ")"
)


def _name_words(text: str, start: int, limit: int = 3) -> tuple[int, int] | None:
    """The run of capitalised words starting at `start` (at most `limit`), as a span."""
    m = _NAME_RUN_RE.match(text, start)
    if not m:
        return None
    words = list(re.finditer(_WORD, m.group()))[:limit]
    lex = lexicon()
    # Trailing common words ("Dear Anna Thanks") are not part of the name.
    while words and lex.is_common(words[-1].group()) and not lex.is_name(words[-1].group()):
        words.pop()
    if not words:
        return None
    return start + words[0].start(), start + words[-1].end()


def find_people(text: str) -> Iterator[tuple[int, int, float]]:
    """Spans of person names: (start, end, score)."""
    lex = lexicon()
    seen: list[tuple[int, int]] = []

    def emit(span: tuple[int, int] | None, score: float) -> Iterator[tuple[int, int, float]]:
        if span and all(span[1] <= s or span[0] >= e for s, e in seen):
            seen.append(span)
            yield (*span, score)

    for cue in (_HONORIFIC_RE, _STRONG_CUE_RE, _SIGNATURE_RE):
        for m in cue.finditer(text):
            yield from emit(_name_words(text, m.end()), 0.85)
    for m in _WEAK_CUE_RE.finditer(text):
        span = _name_words(text, m.end())
        if span is None:
            continue
        words = text[span[0] : span[1]].split()
        unambiguous = [w for w in words if lex.is_name(w.rstrip(".")) and not lex.is_common(w)]
        if unambiguous:
            yield from emit(span, 0.7)
    for m in _NAME_RUN_RE.finditer(text):
        yield from emit(_listed_pair(m.group(), m.start()), 0.75)
    for m in _UPPER_RUN_RE.finditer(text):
        yield from emit(_listed_pair(m.group(), m.start()), 0.7)


def _listed_pair(run: str, offset: int) -> tuple[int, int] | None:
    """Within a run of capitalised words: a given name followed by a surname (both listed),
    or an unambiguous given name followed by any capitalised word that is not a common word;
    initials may stand between them. The widest such span."""
    lex = lexicon()
    words = list(re.finditer(r"\S+", run))
    best: tuple[int, int] | None = None
    for i, w in enumerate(words):
        first = w.group()
        if first.endswith("."):
            continue
        if first.lower() not in lex.given:
            if lex.is_common(first):
                continue
            # An unlisted given name before a listed surname ("Thaddeus Okonkwo-Smith" has
            # neither; "Zorya Kowalski" has one): both capitalised, neither a common word.
            nxt = words[i + 1].group() if i + 1 < len(words) else ""
            if (
                nxt.lower() in lex.surnames
                and not lex.is_common(nxt)
                and nxt.lower() not in lex.given
                and len(first) >= 3
                and not first.isupper()
            ):
                span = (offset + w.start(), offset + words[i + 1].end())
                if best is None or span[1] - span[0] > best[1] - best[0]:
                    best = span
            continue
        j = i + 1
        while j < len(words) and len(words[j].group()) == 2 and words[j].group().endswith("."):
            j += 1  # a middle initial
        if j >= len(words):
            continue
        last = words[j].group()
        if last.endswith(".") or lex.is_common(last):
            continue
        listed_last = last.lower() in lex.surnames
        if listed_last or not lex.is_common(first):
            end = j
            # A double-barrelled or second surname: "Anna Maria Lopez Garcia".
            while (
                end + 1 < len(words)
                and words[end + 1].group().lower() in lex.surnames
                and not lex.is_common(words[end + 1].group())
            ):
                end += 1
            span = (offset + w.start(), offset + words[end].end())
            if best is None or span[1] - span[0] > best[1] - best[0]:
                best = span
    return best


# --- street addresses ----------------------------------------------------------------------

_HOUSE = r"\d{1,6}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?)?"
_STREET_WORD = r"(?:[A-ZÀ-ÖØ-Þ][\wß'’.-]*|\d{1,3}(?:st|nd|rd|th)|of|de|la|le|du|del|der|von)"
_UNIT = (
    r"(?:,?[ \t]*(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|rm|bldg|building|#)\.?"
    r"[ \t]*#?[\w-]{1,6})"
)
_POSTCODE = (
    r"(?:\d{5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]?[ \t]*\d[A-Z]{2}|[A-Z]\d[A-Z][ \t]?\d[A-Z]\d|\d{4})"
)
_TAIL = (
    rf"(?:,[ \t]*[A-Z][a-zß-ÿ]['’.a-zß-ÿ-]*(?:[ \t]+[A-Z][a-zß-ÿ]['’.a-zß-ÿ-]*){{0,2}})?"  # city
    rf"(?:,?[ \t]*[A-Z]{{2}}\b)?(?:,?[ \t]*{_POSTCODE}\b)?"  # state and postcode
)
_PO_BOX_RE = re.compile(r"(?i)\bp\.?[ \t]?o\.?[ \t]*box[ \t]+\d{1,8}\b")


@lru_cache(maxsize=1)
def _address_res() -> tuple[re.Pattern[str], re.Pattern[str]]:
    suffixes = sorted(lexicon().street_suffixes, key=len, reverse=True)
    alt = "|".join(re.escape(s) for s in suffixes)
    # 123 Main Street, Apt 4, Springfield, IL 62704   |   10 Downing St
    number_first = re.compile(
        # 12 rue de Rivoli, 5 Calle Mayor
        rf"(?<![\w$€£.,])(?:{_HOUSE})[ \t]+(?i:{alt})[ \t]+{_STREET_WORD}"
        rf"(?:[ \t]+{_STREET_WORD}){{0,3}}{_UNIT}?{_TAIL}"
        # 123 Main Street, Apt 4, Springfield, IL 62704   |   10 Downing St
        rf"|(?<![\w$€£.,])(?:{_HOUSE})[ \t]+(?:[NSEW]\.?[ \t]+)?(?:{_STREET_WORD}[ \t]+){{0,4}}"
        rf"(?i:{alt})\b\.?{_UNIT}?{_TAIL}"
    )
    # Hauptstraße 5, Via Roma 12, Rue de Rivoli 99, Kerkstraat 3-5
    name_first = re.compile(
        rf"(?<![\w])(?:(?i:{alt})[ \t]+(?:{_STREET_WORD}[ \t]+){{0,3}}|[A-ZÀ-ÖØ-Þ][\wß-]*"
        rf"(?i:straße|strasse|str\.|straat|gasse|weg|allee|platz|laan|gracht|plein))"
        rf"[ \t]*(?<![\d])\d{{1,5}}[A-Za-z]?(?:-\d{{1,4}})?\b{_UNIT}?"
        rf"(?:,[ \t]*\d{{4,5}}[ \t]+[A-ZÀ-ÖØ-Þ][\w-]*)?"
    )
    return number_first, name_first


def find_addresses(text: str) -> Iterator[tuple[int, int, float]]:
    """Spans of street addresses: (start, end, score)."""
    if not any(ch.isdigit() for ch in text):
        return
    number_first, name_first = _address_res()
    lex = lexicon()
    for m in number_first.finditer(text):
        span = m.group().rstrip(" ,")
        words = re.findall(r"[^\W\d_][\w'’.-]*", span)
        # "3 items in Way" is no address: at least one word besides the suffix must be a
        # capitalised street name.
        names = [w for w in words[:-1] if w[0].isupper() and not lex.is_common(w)]
        if names or len(words) >= 3:
            yield m.start(), m.start() + len(span), 0.7
    for m in name_first.finditer(text):
        yield m.start(), m.end(), 0.7
    for m in _PO_BOX_RE.finditer(text):
        yield m.start(), m.end(), 0.7


def could_hold_names(text: str) -> bool:
    """A cheap necessary condition of find_people and find_addresses: an upper-case letter
    followed by a letter (a capitalised word), or a digit for an address."""
    return _CAPITAL_RE.search(text) is not None


_CAPITAL_RE = re.compile(r"[A-ZÀ-ÖØ-Þ][A-Za-zÀ-ÿ]")
