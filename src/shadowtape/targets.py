"""Addresses: where replay and serve may send traffic, and where capture and serve listen.

Replay sends recorded traffic to a target and serve forwards misses to a fallback; both refuse
a host that is not loopback or named like a test system unless the user allows it by name, so a
typo cannot send recorded traffic to production. Capture and serve read `--listen` alike.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from shadowtape.errors import InputError

# Loopback and names that say what they are; anything else must be allowed by name, so a typo in
# --target cannot send production traffic back to production.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = (
    "localhost",
    "127.*",
    "::1",
    "*.localhost",
    "*staging*",
    "*test*",
    "*dev*",
)

# Connection-level headers describe the recorded hop, not the request: replay and serve's
# fallback drop them when they send a request on (their transports run their own connections,
# and HTTP/2 forbids them).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)


def check_target_url(url: str, option: str = "--target") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{option} {url!r}: give a base URL such as http://127.0.0.1:8000")
    if parts.query or parts.fragment:
        raise InputError(f"{option} {url!r}: a base URL takes no query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InputError(f"{option} {url!r}: bad port") from None


def check_target_allowed(url: str, patterns: Iterable[str], option: str = "--target") -> None:
    host = (urlsplit(url).hostname or "").lower()
    pats = list(patterns)
    if any(fnmatch.fnmatchcase(host, p.lower()) for p in pats):
        return
    raise InputError(
        f"{option} {url}: host {host!r} is not in the allowlist ({', '.join(pats)}); "
        f"if it really is a test system, pass --allow-host {host}"
    )


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InputError(f"listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
