"""Which HTTP/1.1 engine and event loop a replay runs on.

`httptools` is the fast path (`fast_transport`: asyncio Protocols and the llhttp parser) on
uvloop where uvloop exists (it has no Windows build) and on asyncio's own loop elsewhere.
`h11` is the path replay had before: asyncio streams, h11, asyncio's loop. `auto` is httptools
when it imports and h11 otherwise, so a platform without the C parts still replays; the run's
metadata says which one ran. HTTP/2 (httpcore) runs on whichever loop was chosen.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from shadowtape.errors import ShadowtapeError

ENGINES = ("auto", "httptools", "h11")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Http1Engine:
    name: str  # httptools | h11
    loop: str  # uvloop | asyncio

    def describe(self) -> dict[str, str]:
        return {"engine": self.name, "loop": self.loop}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_engine(requested: str) -> Http1Engine:
    """The engine for `--http1-engine`; asking for httptools where it is missing is an error
    of the environment, not a silent fallback."""
    if requested == "h11":
        return Http1Engine("h11", "asyncio")
    if requested not in ("auto", "httptools"):
        raise ShadowtapeError(f"--http1-engine {requested!r}: use auto, httptools or h11")
    if not _installed("httptools"):
        if requested == "auto":
            return Http1Engine("h11", "asyncio")
        raise ShadowtapeError(
            "--http1-engine httptools: httptools is not installed; `pip install httptools`, "
            "or use --http1-engine h11"
        )
    return Http1Engine("httptools", "uvloop" if _installed("uvloop") else "asyncio")


# A replay holds a row group of rows as dicts and makes a handful of small containers per
# request; with CPython's default threshold (a collection every 700 net allocations) the
# cyclic collector ran so often that it cost ~30-40 µs of the ~100 µs the replay loop spends
# per request (measured: 92 -> 62-65 µs with a threshold of 10k or more). Refcounting frees
# nearly everything anyway; the collector still runs, just less often.
GC_THRESHOLD = (20_000, 20, 20)


def run_loop(main: Coroutine[Any, Any, T], engine: Http1Engine) -> T:
    """asyncio.run on the engine's loop, with the collector tuned for the run."""
    factory = None
    if engine.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    finally:
        gc.set_threshold(*previous)
