"""The header codec: any bytes round-trip; display is always valid UTF-8."""

from hypothesis import given
from hypothesis import strategies as st

from shadowtape.http import headers


@given(st.binary())
def test_any_bytes_round_trip(data):
    assert headers.encode(headers.decode(data)) == data


@given(st.binary())
def test_display_is_valid_utf8_and_keeps_valid_text(data):
    text = headers.decode(data)
    shown = headers.display(text)
    shown.encode("utf-8")  # never raises
    try:
        assert shown == data.decode("utf-8")
    except UnicodeDecodeError:
        assert not headers.is_utf8(text)


def test_non_utf8_bytes_display_as_latin1():
    assert headers.display(headers.decode(b"Jos\xe9")) == "José"
    assert headers.display(headers.decode("José".encode())) == "José"
    assert headers.display(headers.decode(b"\xff\xfe ok")) == "ÿþ ok"


def test_lone_surrogates_that_are_no_byte_encode_as_replacement():
    # A HAR's JSON may hold "\ud800": not an escaped byte, so no byte to give back.
    assert headers.encode("a\ud800b") == "a\ufffdb".encode()
    assert headers.display("a\ud800b") == "a\ufffdb"


@given(st.lists(st.tuples(st.binary(), st.binary())))
def test_fields_round_trip(fields):
    assert headers.fields_from_pairs(headers.pairs_from_fields(fields)) == fields


PAIRS = [("Host", "a"), ("X-A", "1"), ("x-a", "2"), ("Content-Type", "text/plain")]


def test_lookups_are_case_insensitive_and_keep_order():
    assert headers.get(PAIRS, "x-A") == "1"
    assert headers.get(PAIRS, "nope") is None
    assert headers.get(PAIRS, "nope", "d") == "d"
    assert headers.get_all(PAIRS, "X-A") == ["1", "2"]
    assert headers.joined(PAIRS, "x-a") == "1, 2"
    assert headers.joined(PAIRS, "nope") is None
    assert headers.has(PAIRS, "HOST")
    assert not headers.has([("A", "")], "a", non_empty=True)
    assert headers.remove(PAIRS, "X-A", "host") == [("Content-Type", "text/plain")]


def test_set_headers_keeps_first_position_drops_repeats_appends_new():
    pairs = list(PAIRS)
    headers.set_headers(pairs, (("X-A", "new"), ("traceparent", "t"), ("X-a", "newer")))
    assert pairs == [("Host", "a"), ("X-A", "newer"), ("Content-Type", "text/plain"),
                     ("traceparent", "t")]  # fmt: skip
    headers.set_header(pairs, "host", "h")
    assert pairs[0] == ("Host", "h")
    headers.set_headers(pairs, ())
    assert len(pairs) == 4


def test_content_type():
    ct = headers.parse_content_type('Text/HTML; Charset="UTF-8"; q="a;b"; broken')
    assert ct.type == "text/html"
    assert ct.params == (("charset", "UTF-8"), ("q", "a;b"))
    assert ct.param("CHARSET") == "UTF-8"
    assert headers.media_type(" application/JSON ; x=1") == "application/json"
    assert headers.media_type(None) == headers.media_type("") == ""
    assert headers.charset("text/plain; charset=ISO-8859-1") == "iso-8859-1"
    assert headers.charset("text/plain") == "utf-8"
    assert headers.charset(None, "latin-1") == "latin-1"
    assert headers.parse_content_type(None).type == ""
    assert headers.parse_content_type('a/b; n="x\\"y"').param("n") == 'x"y'
