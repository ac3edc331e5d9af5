"""The shared Content-Encoding decoder: stacked codings, raw deflate, narrowing, clear errors."""

import gzip
import zlib

import brotli
import pytest

from shadowtape.content_coding import ContentCodingError, decode, split_codings


def test_stacked_codings_are_undone_last_first() -> None:
    data = brotli.compress(gzip.compress(b"hello"))
    assert decode(data, split_codings("gzip, identity, BR")) == b"hello"


def test_raw_deflate_is_accepted() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = raw.compress(b"hello") + raw.flush()
    assert decode(data, ["deflate"]) == b"hello"


def test_unknown_unsupported_and_bad_data_are_errors() -> None:
    with pytest.raises(ContentCodingError, match="unsupported content-encoding 'compress'"):
        decode(b"x", ["compress"])
    with pytest.raises(ContentCodingError, match="unsupported"):
        decode(gzip.compress(b"x"), ["gzip"], supported={"br"})
    with pytest.raises(ContentCodingError, match="bad gzip data"):
        decode(b"not gzip", ["gzip"])
