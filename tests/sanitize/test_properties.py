"""Property tests (Hypothesis): pseudonyms keep their format and are pure functions of key and
value; literal matching never replaces inside a longer word."""

from __future__ import annotations

import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowtape.keyed import Key, Keyed
from shadowtape.sanitize import markers
from shadowtape.sanitize.keywords import split_key
from shadowtape.sanitize.literals import LiteralMatcher
from shadowtape.sanitize.pseudonyms import Pseudonymizer, luhn_valid

KEY = Key(b"property-key-0123456789abcdef-0123", "test")
P = Pseudonymizer(Keyed(KEY))
words = st.text(alphabet=string.ascii_letters, min_size=1, max_size=12)
texts = st.text(alphabet=string.ascii_letters + string.digits + " .,-'@", max_size=40)


@given(texts)
@settings(max_examples=200, deadline=None)
def test_text_keeps_every_character_class_and_is_deterministic(value: str) -> None:
    out = P.text(value)
    assert len(out) == len(value)
    for a, b in zip(value, out, strict=True):
        assert a.isdigit() == b.isdigit() and a.isalpha() == b.isalpha()
        if not a.isalnum():
            assert a == b
        if a.isalpha():
            assert a.isupper() == b.isupper() or len(value) == 1
    assert Pseudonymizer(Keyed(Key(KEY.secret, "again"))).text(value) == out
    for word in re.findall(r"[A-Za-z]{3,}", out):
        assert markers.is_marked_word(word)


@given(st.lists(words, min_size=1, max_size=4))
@settings(max_examples=100, deadline=None)
def test_a_name_and_its_parts_get_the_same_words(parts: list[str]) -> None:
    full = P.text(" ".join(parts))
    assert full.split(" ") == [P.text(p) for p in parts]


@given(
    st.from_regex(r"[a-z][a-z0-9._-]{0,15}@[a-z][a-z0-9-]{0,10}(\.[a-z]{2,8}){1,2}", fullmatch=True)
)
@settings(max_examples=100, deadline=None)
def test_email_pseudonyms_are_marked_emails(email: str) -> None:
    out = P.email(email)
    assert markers.PSEUDONYM_EMAIL_RE.match(out)
    assert out == P.email(email.upper())


@given(st.from_regex(r"4[0-9]{15}", fullmatch=True))
@settings(max_examples=100, deadline=None)
def test_card_pseudonyms_stay_luhn_valid_cards(card: str) -> None:
    out = P.card(card)
    assert len(out) == 16 and out.isdigit() and luhn_valid(out) and out[0] == "9"


@given(words, texts, texts)
@settings(max_examples=200, deadline=None)
def test_literals_match_on_word_boundaries_only(literal: str, before: str, after: str) -> None:
    literal = literal + "xq"  # at least three letters
    matcher = LiteralMatcher([(literal, "pseudonymize")])
    text = f"{before} {literal} {after}"
    out, n = matcher.replace(text, lambda found, kind: "#" * len(found))
    assert n >= 1 and f" {'#' * len(literal)} " in out
    glued = f"{before}a{literal}b{after}"
    assert matcher.find(glued) == [s for s in matcher.find(glued) if not glued[s[0] - 1].isalnum()]


@given(
    st.lists(
        st.sampled_from(["billing", "address", "card", "holder", "first", "name"]),
        min_size=1,
        max_size=3,
    )
)
def test_key_splitting_reads_every_spelling_alike(parts: list[str]) -> None:
    known = frozenset(["billing", "address", "card", "holder", "first", "name"])
    expected = tuple(parts)
    camel = parts[0] + "".join(p.capitalize() for p in parts[1:])
    for spelling in ("_".join(parts), "-".join(parts), camel, "".join(parts)):
        assert split_key(spelling, known) == expected, spelling
