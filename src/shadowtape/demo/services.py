"""The demo's sample services as real HTTP servers on loopback.

`python -m shadowtape.demo.services --version v1 --port 0` serves the shop API ("production"
v1 or "staging" v2, see shop.py) and prints `serving v1 on http://127.0.0.1:PORT` once bound;
`--app payments` serves the shop's payment provider instead (payments.py), and a shop given
`--payments-url URL` calls the provider there over HTTP. SIGINT or SIGTERM stop it. Tests
import `start_service` to run one in a thread instead.
"""

from __future__ import annotations

import gzip
import signal
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click
import httpx

from shadowtape.demo.payments import DEMO_API_KEY, PaymentsAPI
from shadowtape.demo.shop import VERSIONS, PaymentsUnavailable, Request, Response, ShopAPI
from shadowtape.http.target import query_pairs, split_target

Api = ShopAPI | PaymentsAPI

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
        name = "payments" if isinstance(self.server.api, PaymentsAPI) else "shop"
        return f"shadowtape-demo-{name}/{self.server.api.version}"

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: object) -> None:
        # One line per request would bury the demo's output; the count is printed at exit.
        return


class _ShopServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        self.api = api
        super().__init__(address, _ShopHandler)


@dataclass
class RunningService:
    """A shop (or the provider) served from a background thread; `stop()` closes the socket."""

    api: Api
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


class HttpPayments:
    """The shop's client for a payment provider at a URL: one keep-alive pool, the API key,
    and the shopper's session id passed along as the provider's recordings are grouped by."""

    def __init__(self, base_url: str, api_key: str = DEMO_API_KEY, timeout_s: float = 10.0) -> None:
        # trust_env=False: a proxy from the environment must not sit between shop and provider.
        self.client = httpx.Client(base_url=base_url, trust_env=False, timeout=timeout_s)
        self.api_key = api_key

    def post(self, path: str, body: dict | None, session: str | None) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if session:
            headers["X-Session-Id"] = session
        try:
            response = self.client.post(path, json=body, headers=headers)
            return response.status_code, response.json() if response.content else None
        except (httpx.HTTPError, ValueError) as exc:
            raise PaymentsUnavailable(type(exc).__name__) from None


def start_service(api: Api, host: str = "127.0.0.1", port: int = 0) -> RunningService:
    server = _ShopServer((host, port), api)
    thread = threading.Thread(target=server.serve_forever, name=f"shop-{api.version}", daemon=True)
    thread.start()
    return RunningService(api, server, thread)


@click.command()
@click.option("--app", type=click.Choice(["shop", "payments"]), default="shop", show_default=True,
              help="The shop, or the payment provider the shop calls.")  # fmt: skip
@click.option("--version", "version", type=click.Choice(VERSIONS), default="v1", show_default=True,
              help="v1 plays production; v2 plays staging, with planted drift.")  # fmt: skip
@click.option("--payments-url", metavar="URL",
              help="Where the shop calls its payment provider [default: in-process].")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for minted ids.")
def main(app: str, version: str, payments_url: str | None, host: str, port: int, seed: int) -> None:
    """Serve the demo shop API (or its payment provider) until interrupted.

    Example: python -m shadowtape.demo.services --version v2 --port 0 --payments-url URL
    """
    api: Api
    if app == "payments":
        api = PaymentsAPI(seed)
    else:
        payments = HttpPayments(payments_url) if payments_url else None
        api = ShopAPI(version, seed=seed, payments=payments)
    service = start_service(api, host, port)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    click.echo(f"serving {api.version} on {service.url}")
    sys.stdout.flush()
    while not stopped.wait(0.5):
        continue
    service.stop()
    click.echo(f"{api.version}: stopped after {service.api.requests_served} requests")


if __name__ == "__main__":
    main()
