"""Which session a request belongs to, its order inside it, and whether the session is sampled.

Shared by capture (which assigns sessions as traffic is recorded) and serve (which finds the
recorded session a live request belongs to by the same session key), so `--session-key` means
one thing everywhere.

A session is named by a cookie, a header, or (when neither is there) the client address plus a
time gap: a client silent for longer than the gap starts a new session. Session ids are keyed
digests, so neither a raw cookie nor a client address ever reaches disk, and the same key gives
the same ids when the same traffic is imported twice.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shadowtape.errors import InputError
from shadowtape.http.cookies import named_cookies
from shadowtape.keyed import Keyed
from shadowtape.schema import Pairs

# Cookie names that frameworks use for their session: the `auto` session key looks for these.
SESSION_COOKIE_NAMES = frozenset(
    {
        "session",
        "sessionid",
        "session_id",
        "sid",
        "jsessionid",
        "phpsessid",
        "connect.sid",
        "asp.net_sessionid",
        "laravel_session",
        "_session_id",
    }
)
SESSION_KINDS = ("auto", "cookie", "header", "client")
DEFAULT_GAP_SECONDS = 1800.0
# Sequence counters are kept for this many recent sessions; an older session seen again
# restarts its count, which costs ordering only for sessions idle far longer than any gap.
MAX_TRACKED_SESSIONS = 200_000


@dataclass(frozen=True, slots=True)
class SessionKey:
    """What identifies a session: `auto`, `client`, `cookie:NAME` or `header:NAME`."""

    kind: str = "auto"
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> SessionKey:
        kind, _, name = text.strip().partition(":")
        kind = kind.lower()
        if kind not in SESSION_KINDS:
            raise InputError(
                f"session key {text!r}: expected auto, client, cookie:NAME or header:NAME"
            )
        if kind in ("cookie", "header") and not name.strip():
            raise InputError(f"session key {text!r}: name the {kind}, e.g. {kind}:session")
        if kind in ("auto", "client") and name:
            raise InputError(f"session key {text!r}: {kind} takes no name")
        return cls(kind, name.strip())

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


def session_identity(key: SessionKey, headers: Pairs) -> str | None:
    """The raw value that names the session, or None to fall back to client + gap."""
    if key.kind == "header":
        wanted = key.name.lower()
        for name, value in headers:
            if name.lower() == wanted and value:
                return f"header:{wanted}={value}"
        return None
    if key.kind == "cookie":
        for name, value in named_cookies(headers):
            if name == key.name and value:
                return f"cookie:{name}={value}"
        return None
    if key.kind == "auto":
        for name, value in named_cookies(headers):
            if name.lower() in SESSION_COOKIE_NAMES and value:
                return f"cookie:{name}={value}"
    return None


def sample_keeps(session_id: str, fraction: float, seed: int) -> bool:
    """A pure function of the session id, so every request of a session gets the same answer."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    h = hashlib.sha256(f"{seed}\x00{session_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") < fraction * 2**64


@dataclass(slots=True)
class _ClientState:
    session_id: str
    last_seen_us: int


class SharedSessions(Protocol):
    """Where several processes keep one set of session counters (capture --workers keeps
    them in shadowtape.capture.shared_sessions); this layer needs only the one call."""

    def assign(
        self,
        session_id: str | None,
        client: str,
        at_us: int,
        gap_us: int,
        name_client_session: Callable[[str, int], str],
    ) -> tuple[str, int]: ...


@dataclass(slots=True)
class SessionTracker:
    """Assigns (session_id, seq) to requests in the order they start.

    Not thread-safe: the proxy calls it from its event loop, importers from one thread.
    With `shared`, the counters and client sessions live in a table that several capture
    processes share (`capture --workers`), so seq does not depend on which one saw a request.
    """

    keyed: Keyed
    key: SessionKey = field(default_factory=SessionKey)
    gap_seconds: float = DEFAULT_GAP_SECONDS
    max_sessions: int = MAX_TRACKED_SESSIONS
    _seq: OrderedDict[str, int] = field(default_factory=OrderedDict)
    _clients: OrderedDict[str, _ClientState] = field(default_factory=OrderedDict)
    shared: SharedSessions | None = None

    def assign(self, headers: Pairs, client: str | None, at_us: int) -> tuple[str, int]:
        identity = None if self.key.kind == "client" else session_identity(self.key, headers)
        if self.shared is not None:
            return self.shared.assign(
                self._digest(identity) if identity is not None else None,
                client or "unknown",
                at_us,
                int(self.gap_seconds * 1_000_000),
                self._client_session_id,
            )
        if identity is not None:
            session_id = self._digest(identity)
        else:
            session_id = self._client_session(client or "unknown", at_us)
        seq = self._seq.pop(session_id, -1) + 1
        self._seq[session_id] = seq
        if len(self._seq) > self.max_sessions:
            self._seq.popitem(last=False)
        return session_id, seq

    def _digest(self, identity: str) -> str:
        return self.keyed.digest("session", identity).hex()[:32]

    def _client_session_id(self, client: str, start_us: int) -> str:
        # The start time is part of the identity: the same client after a gap is a new
        # session, and the id is still reproducible from the same traffic.
        return self._digest(f"client:{client}@{start_us}")

    def _client_session(self, client: str, at_us: int) -> str:
        gap_us = int(self.gap_seconds * 1_000_000)
        state = self._clients.pop(client, None)
        if state is None or at_us - state.last_seen_us > gap_us:
            state = _ClientState(self._client_session_id(client, at_us), at_us)
        else:
            state.last_seen_us = max(state.last_seen_us, at_us)
        self._clients[client] = state
        self._evict_clients(at_us - gap_us)
        return state.session_id

    def _evict_clients(self, older_than_us: int) -> None:
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if oldest.last_seen_us >= older_than_us and len(self._clients) <= self.max_sessions:
                return
            self._clients.popitem(last=False)
