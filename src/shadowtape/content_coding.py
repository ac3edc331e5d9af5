"""HTTP content codings (RFC 9110, 8.4.1): undoing what a body's Content-Encoding says.

Sanitize reads a body to scrub it and diff reads one to compare it; both must undo the same
codings the same way (raw deflate included, which servers send despite the spec), so the
decoder is shared like schema.py and keyed.py instead of living in either stage.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Collection, Sequence

import brotli

try:  # zstd is optional on the wire and optional here; zstandard ships with many stacks.
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None


class ContentCodingError(ValueError):
    """A coding we do not know, or data that does not decode in the coding it claims."""


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:  # "deflate" is meant to be zlib-wrapped; raw deflate is common anyway
        return zlib.decompress(data, -zlib.MAX_WBITS)


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
    "deflate": _inflate,
    "br": brotli.decompress,
}
if zstandard is not None:
    _DECODERS["zstd"] = _unzstd


def split_codings(header: str | None) -> list[str]:
    """The codings of a Content-Encoding value in the order they were applied, less identity."""
    if not header:
        return []
    codings = (c.strip().lower() for c in header.split(","))
    return [c for c in codings if c and c != "identity"]


def decode(data: bytes, codings: Sequence[str], supported: Collection[str] | None = None) -> bytes:
    """Undo `codings`, last applied first. `supported` narrows what is accepted, for a caller
    that must put the same codings back afterwards."""
    for coding in reversed(codings):
        decoder = _DECODERS.get(coding) if supported is None or coding in supported else None
        if decoder is None:
            raise ContentCodingError(f"unsupported content-encoding {coding!r}")
        try:
            data = decoder(data)
        except Exception as exc:  # each library has its own error types for bad input
            raise ContentCodingError(f"bad {coding} data ({exc})") from None
    return data
