"""serve: test doubles from recordings. A dataset stands in for the dependency it recorded.

Engine. uvloop (the event loop) and httptools (llhttp, the HTTP/1.1 parser) with the response
side written by the double itself, not an ASGI server. Measured on this project's 2-core
machine with wrk (-t1 -c16, loopback, one process, a trivial answer): this engine ~200,000
req/s, uvicorn with httptools and uvloop ~51,000 req/s, `mitmdump --server-replay` ~340 req/s
(see bench/serve.py for the figures with matching on). Speed did not decide it, both ASGI and
this clear the 2,000 req/s a core target by far; fidelity did. ASGI servers (uvicorn checked
line by line) lowercase every response header name, write their own reason phrase, refuse a
body whose length disagrees with a recorded Content-Length, and give the application no way
to reset a connection (an exception becomes a 500), while a double must send the recorded
header bytes as recorded and reproduce a recorded reset as a reset. Owning the response side
gives all of that in a few lines; the parser, the hard part, stays a well-kept library.
mitmproxy's own engine shares capture's code but serves ~340 req/s here.

Supported: HTTP/1.1 (keep-alive, pipelining, Expect: 100-continue, HEAD), TLS with
--certfile/--keyfile (ALPN http/1.1). Not supported: HTTP/2 (an Upgrade: h2c is ignored and
answered over HTTP/1.1, as RFC 9110 allows), WebSockets.

The flow: `recording` loads and indexes the dataset, `decide` picks the answer (`compare`
scores candidates, `selection` keeps recorded order, `faults` seeds faults and latency),
`protocol` puts bytes on the wire, `server` runs it all and writes what it did (`served`).
"""

from __future__ import annotations

from typing import Any

# Imported on first use: the pytest plugin lives in this package, and a suite that never asks
# for a double must not pay for uvloop, httptools and httpx at start-up.
_PUBLIC = {
    "ServeConfig": "shadowtape.serve.config",
    "Double": "shadowtape.serve.server",
    "RunningDouble": "shadowtape.serve.server",
    "ServeSummary": "shadowtape.serve.server",
    "run_serve": "shadowtape.serve.server",
    "start_double": "shadowtape.serve.server",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'shadowtape.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
