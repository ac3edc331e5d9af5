"""Reading the entries of a huge JSON document one at a time.

A HAR file from a long browser session can be gigabytes; `json.load` would hold all of it (and
several times its size in Python objects). This reader walks the document's outer structure by
hand and decodes one array element at a time with the standard library's decoder, so memory
is bounded by the largest single entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from shadowtape.errors import InputError

CHUNK_CHARS = 1 << 20
_WHITESPACE = " \t\n\r"


class JsonStreamError(InputError):
    """Malformed or truncated JSON; the message names the position."""


class JsonScanner:
    def __init__(self, fh: TextIO, name: str, chunk_chars: int = CHUNK_CHARS) -> None:
        self.fh = fh
        self.name = name
        self.chunk_chars = chunk_chars
        self.buf = ""
        self.pos = 0
        self.base = 0  # characters dropped from the front of buf
        self.lines_before = 0  # newlines in what was dropped
        self.eof = False
        self._decoder = json.JSONDecoder()

    # --- buffer ------------------------------------------------------------------------------

    def _fill(self, at_least: int = 0) -> bool:
        if self.eof:
            return False
        if self.pos > self.chunk_chars:
            self.lines_before += self.buf.count("\n", 0, self.pos)
            self.base += self.pos
            self.buf = self.buf[self.pos :]
            self.pos = 0
        data = self.fh.read(max(self.chunk_chars, at_least))
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def where(self, pos: int | None = None) -> str:
        p = self.pos if pos is None else pos
        line = self.lines_before + self.buf.count("\n", 0, p) + 1
        return f"line {line}, character {self.base + p + 1}"

    def truncated(self) -> JsonStreamError:
        return JsonStreamError(
            f"{self.name}: ends early at {self.where(len(self.buf))}; "
            "the file looks truncated (was it fully written?)"
        )

    def malformed(self, what: str, pos: int | None = None) -> JsonStreamError:
        return JsonStreamError(f"{self.name}: not valid JSON at {self.where(pos)}: {what}")

    # --- tokens ------------------------------------------------------------------------------

    def peek(self) -> str:
        """The next non-whitespace character, without consuming it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                raise self.truncated()

    def expect(self, chars: str) -> str:
        ch = self.peek()
        if ch not in chars:
            wanted = " or ".join(repr(c) for c in chars)
            raise self.malformed(f"expected {wanted}, found {ch!r}")
        self.pos += 1
        return ch

    def value(self) -> Any:
        """Decode one complete JSON value, reading more input until it is whole."""
        self.peek()
        need = self.chunk_chars
        while True:
            try:
                obj, end = self._decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # A value cut by the buffer's end looks like an error: read more (doubling, so
                # a huge entry costs linear time) and try again; at the real end it is real.
                if self._fill(need):
                    need *= 2
                    continue
                if exc.pos >= len(self.buf) - 1 or "Unterminated" in exc.msg:
                    raise self.truncated() from None
                raise self.malformed(exc.msg, exc.pos) from None
            except RecursionError:
                raise self.malformed("arrays or objects nested too deeply to read") from None
            # A number at the buffer's end may continue in the next chunk.
            if end == len(self.buf) and not self.eof and self._fill(need):
                continue
            self.pos = end
            return obj

    def key(self) -> str:
        key = self.value()
        if not isinstance(key, str):
            raise self.malformed("expected an object key (a string)")
        self.expect(":")
        return key

    def at_end(self) -> None:
        """Only whitespace may follow the document."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                raise self.malformed("unexpected data after the end of the document")
            if not self._fill():
                return

    # --- structure ---------------------------------------------------------------------------

    def object_items(self, on_key: Callable[[str], Iterator[Any]]) -> Iterator[Any]:
        """Walk an object; `on_key` consumes each value (decode it, or descend and yield)."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            key = self.key()
            yield from on_key(key)
            if self.expect(",}") == "}":
                return

    def array_items(self) -> Iterator[Any]:
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            if self.expect(",]") == "]":
                return
