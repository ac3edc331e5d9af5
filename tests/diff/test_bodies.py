import gzip
import zlib

import brotli
import pytest

from shadowtape.diff import bodies
from shadowtape.http import headers


@pytest.mark.parametrize(
    "encoding,encode",
    [
        ("gzip", lambda b: gzip.compress(b, mtime=0)),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("identity", lambda b: b),
    ],
)
def test_content_encodings_decode(encoding, encode):
    assert bodies.decode_content(encode(b'{"a": 1}'), encoding) == b'{"a": 1}'


def test_raw_deflate_and_stacked_encodings_decode():
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = raw.compress(b"hello") + raw.flush()
    assert bodies.decode_content(data, "deflate") == b"hello"
    stacked = brotli.compress(gzip.compress(b"x" * 50, mtime=0))
    assert bodies.decode_content(stacked, "gzip, br") == b"x" * 50


def test_a_body_that_does_not_decode_says_so():
    with pytest.raises(bodies.BodyDecodeError, match="gzip"):
        bodies.decode_content(b"not gzip", "gzip")
    with pytest.raises(bodies.BodyDecodeError, match="unsupported"):
        bodies.decode_content(b"x", "compress")


def test_body_class_by_type_then_by_bytes():
    assert bodies.body_class("application/problem+json", b"{}") == bodies.JSON
    assert bodies.body_class("text/html; charset=utf-8", b"<p>") == bodies.TEXT
    assert bodies.body_class("image/png", b"\x89PNG") == bodies.BINARY
    assert bodies.body_class(None, b" [1]") == bodies.JSON
    assert bodies.body_class(None, b"plain words") == bodies.TEXT
    assert bodies.body_class(None, b"\xff\xfe\x00") == bodies.BINARY
    assert bodies.body_class("application/json", b"") == bodies.EMPTY
    assert headers.charset('text/plain; charset="ISO-8859-1"') == "iso-8859-1"
    assert headers.joined([("A", "1"), ("a", "2")], "a") == "1, 2"
