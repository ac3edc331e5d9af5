"""Cookie / Set-Cookie: one parser; round trips; bare words are nameless cookies."""

from hypothesis import given
from hypothesis import strategies as st

from shadowtape.http import cookies
from shadowtape.http.cookies import Cookie


@given(st.text())
def test_any_cookie_header_round_trips(header):
    assert cookies.format_cookie_header(cookies.parse_cookie_header(header)) == header


@given(st.text(), st.integers(min_value=0, max_value=20), st.text(alphabet="abc123"))
def test_replacing_one_value_rewrites_only_that_item(header, index, new):
    items = cookies.parse_cookie_header(header)
    i = index % len(items)
    changed = [c.with_value(new) if k == i else c for k, c in enumerate(items)]
    out = cookies.format_cookie_header(changed).split(";")
    original = header.split(";")
    # "new" holds no ";" so the items still line up one to one.
    assert len(out) == len(original)
    assert [p for k, p in enumerate(out) if k != i] == [p for k, p in enumerate(original) if k != i]
    assert cookies.parse_cookie_header(out[i])[0].value == new


def test_items_keep_order_duplicates_bare_words_and_spacing():
    header = "a=1; flag;b = 2 ;a=3;; =x"
    items = cookies.parse_cookie_header(header)
    assert [(c.name, c.value, c.has_eq) for c in items] == [
        ("a", "1", True),
        ("", "flag", False),
        ("b", "2", True),
        ("a", "3", True),
        ("", "", False),
        ("", "x", True),
    ]
    assert items[2].before == "b = " and items[2].after == " "
    assert items[1].before == " "
    assert cookies.format_cookie_header(items) == header
    swapped = [items[0], items[1], items[2].with_value("9"), *items[3:]]
    assert cookies.format_cookie_header(swapped) == "a=1; flag;b = 9 ;a=3;; =x"


def test_named_cookies_skip_words_without_a_name():
    headers = [("Cookie", "sid=abc; flag; =x"), ("X", "sid=no"), ("cookie", 'theme="dark"')]
    assert list(cookies.named_cookies(headers)) == [("sid", "abc"), ("theme", '"dark"')]


def test_quoted_values():
    assert cookies.unquote('"dark"') == ("dark", True)
    assert cookies.unquote("dark") == ("dark", False)
    assert cookies.unquote('"') == ('"', False)
    assert cookies.requote("x", True) == '"x"'


def test_set_cookie_keeps_attributes_verbatim():
    header = "sid=abc; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly"
    sc = cookies.parse_set_cookie(header)
    assert (sc.name, sc.value) == ("sid", "abc")
    assert sc.attributes == "; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly"
    assert sc.with_value("T").format() == (
        "sid=T; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly"
    )
    assert sc.attribute_pairs() == [
        ("path", "/"),
        ("expires", "Wed, 21 Oct 2026 07:28:00 GMT"),
        ("httponly", ""),
    ]
    bare = cookies.parse_set_cookie("justavalue")
    assert bare.cookie == Cookie("", "justavalue", False, "", "")
    assert bare.format() == "justavalue"
    found = list(cookies.set_cookies([("Set-Cookie", "a=1"), ("X", "b=2"), ("set-cookie", "c=3")]))
    assert [(s.name, s.value) for s in found] == [("a", "1"), ("c", "3")]


@given(st.text())
def test_any_set_cookie_round_trips(value):
    assert cookies.parse_set_cookie(value).format() == value
