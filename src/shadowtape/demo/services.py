"""The demo's sample services as real HTTP servers on loopback.

`python -m shadowtape.demo.services --version v1 --port 0` serves the shop API ("production"
v1 or "staging" v2, see shop.py) and prints `serving v1 on http://127.0.0.1:PORT` once bound;
SIGINT or SIGTERM stop it. Tests import `start_service` to run one in a thread instead.
"""

from __future__ import annotations

import gzip
import signal
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click

from shadowtape.demo.shop import VERSIONS, Request, Response, ShopAPI
from shadowtape.http.target import query_pairs, split_target

# Only bodies this large are worth compressing, as real servers do; it also means the demo's
# recordings hold some gzip bodies that sanitize has to decode before it can scan them.
GZIP_MIN_BYTES = 1024


class _ShopHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the proxy and replay clients expect
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK and every response gains ~40 ms, which would swamp the planted slow route.
    disable_nagle_algorithm = True
    server: _ShopServer

    def _serve(self) -> None:
        path, raw_query = split_target(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=path,
            # Blank values are absent to the shop, as with parse_qsl's default.
            query={n: v for n, v in query_pairs(raw_query) if v},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        self._send(self.server.api.handle(request), request)

    def _send(self, response: Response, request: Request) -> None:
        payload = response.encoded()
        self.send_response(response.status)
        if response.body is not None:
            self.send_header("Content-Type", "application/json")
        accepts_gzip = "gzip" in request.headers.get("accept-encoding", "")
        if accepts_gzip and len(payload) >= GZIP_MIN_BYTES:
            payload = gzip.compress(payload, mtime=0)
            self.send_header("Content-Encoding", "gzip")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def version_string(self) -> str:
        return f"shadowtape-demo-shop/{self.server.api.version}"

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: object) -> None:
        # One line per request would bury the demo's output; the count is printed at exit.
        return


class _ShopServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: ShopAPI) -> None:
        self.api = api
        super().__init__(address, _ShopHandler)


@dataclass
class RunningService:
    """A shop served from a background thread; `stop()` closes the socket."""

    api: ShopAPI
    server: _ShopServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_service(api: ShopAPI, host: str = "127.0.0.1", port: int = 0) -> RunningService:
    server = _ShopServer((host, port), api)
    thread = threading.Thread(target=server.serve_forever, name=f"shop-{api.version}", daemon=True)
    thread.start()
    return RunningService(api, server, thread)


@click.command()
@click.option("--version", "version", type=click.Choice(VERSIONS), default="v1", show_default=True,
              help="v1 plays production; v2 plays staging, with planted drift.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for minted ids.")
def main(version: str, host: str, port: int, seed: int) -> None:
    """Serve the demo shop API until interrupted.

    Example: python -m shadowtape.demo.services --version v2 --port 0
    """
    service = start_service(ShopAPI(version, seed=seed), host, port)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    click.echo(f"serving {version} on {service.url}")
    sys.stdout.flush()
    while not stopped.wait(0.5):
        continue
    service.stop()
    click.echo(f"{version}: stopped after {service.api.requests_served} requests")


if __name__ == "__main__":
    main()
