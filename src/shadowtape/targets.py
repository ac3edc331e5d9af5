"""Addresses: where replay and serve may send traffic, and where capture and serve listen.

Replay sends recorded traffic to a target and serve forwards misses to a fallback; both refuse
a host that is not loopback or named like a test system unless the user allows it by name, so a
typo cannot send recorded traffic to production. Capture and serve read `--listen` alike.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from shadowtape.errors import InputError

# Loopback and names that say what they are; anything else must be allowed by name, so a typo in
# --target cannot send production traffic back to production. `127.*` and `::1` are address
# patterns: they match IP addresses only, never a DNS name such as 127.0.0.1.example.com.
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
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket: http://[::1
        raise InputError(
            f"{option} {url!r}: not a URL ({exc}); give a base URL such as "
            "http://127.0.0.1:8000 (IPv6: http://[::1]:8000)"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{option} {url!r}: give a base URL such as http://127.0.0.1:8000")
    if parts.query or parts.fragment:
        raise InputError(f"{option} {url!r}: a base URL takes no query or fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InputError(f"{option} {url!r}: bad port") from None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _is_address_pattern(pattern: str) -> bool:
    """`127.*`, `10.0.0.0/8`, `::1`: patterns over IP addresses, never over names."""
    return ":" in pattern or re.fullmatch(r"[0-9.*?\[\]/]+", pattern) is not None


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether `host` (a name or an IP address, as in a URL) matches one of `patterns`.

    An address is matched only by address patterns (a glob over its canonical text, or a
    CIDR network); a DNS name only by name patterns, so `127.*` never lets through
    127.0.0.1.example.com. `*` alone matches everything.
    """
    host = host.lower().rstrip(".") if _address(host) is None else host.lower()
    address = _address(host)
    for raw in patterns:
        pattern = raw.strip().lower()
        if pattern == "*":
            return True
        if address is None:
            if not _is_address_pattern(pattern) and fnmatch.fnmatchcase(host, pattern):
                return True
            continue
        if not _is_address_pattern(pattern):
            continue
        if "/" in pattern:
            try:
                if address in ipaddress.ip_network(pattern, strict=False):
                    return True
            except ValueError:
                continue
        else:
            literal = _address(pattern)
            if literal is not None:
                if literal == address:
                    return True
            elif fnmatch.fnmatchcase(str(address), pattern):
                return True
    return False


def check_target_allowed(url: str, patterns: Iterable[str], option: str = "--target") -> None:
    host = urlsplit(url).hostname or ""
    pats = list(patterns)
    if host_allowed(host, pats):
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
