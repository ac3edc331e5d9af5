"""The audit trail: one hash-chained JSON line per command that touches data or traffic.

Each record carries `prev`, the previous record's `hash` (the first one carries GENESIS), and
its own `hash`: sha256 over its canonical JSON (sorted keys, no spaces, UTF-8) without the
`hash` field. Changing any byte of a record breaks its hash; removing or reordering records
breaks the next record's `prev`; `verify` names the first record (1-based line) that fails.
Removing records from the end leaves a valid shorter chain: compare the head hash that
`verify` prints against one kept elsewhere (a CI log), with `audit verify --head HASH`.

Appends take an exclusive lock on the log (flock), read the last record's hash, write the
new line with one write on an O_APPEND descriptor and fsync before unlocking, so concurrent
commands neither interleave nor fork the chain.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shadowtape import __version__
from shadowtape.errors import DatasetError, ShadowtapeError
from shadowtape.governance.access import exposed_to_others
from shadowtape.governance.fingerprint import (
    DatasetFingerprint,
    dataset_fingerprint,
    file_fingerprint,
)

GENESIS = "0" * 64
FORMAT = 1
LOG_NAME = "shadowtape-audit.jsonl"
LOG_MODE = 0o640
REDACTED = "<redacted>"


class AuditError(ShadowtapeError):
    """The audit log cannot be written or read: the environment, so exit 1."""


# --- secrets out of command lines -----------------------------------------------------

_SECRET_WORD = (
    r"(?:key|token|secret|password|passwd|pass|pwd|auth|authorization|credentials?|apikey"
    r"|api[-_]key|session|cookie|signature|sig)"
)
_SECRET_OPTION = re.compile(rf"^--(?:[a-z0-9]+-)*{_SECRET_WORD}$", re.IGNORECASE)
_SECRET_NAME = re.compile(rf"(?:^|[-_.]){_SECRET_WORD}(?:$|[-_.])", re.IGNORECASE)
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
# Options whose value names something (a file, a variable, a header) rather than holding it.
_NAMING_OPTIONS = frozenset({"--session-key", "--key-file", "--key-env", "--redact-header"})
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)


def _secret_name(name: str) -> bool:
    return name.lower() in _SECRET_HEADERS or bool(_SECRET_NAME.search(name))


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _secret_name(k) else v) for k, v in pairs], safe="<>")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_value(value: str) -> str:
    """A free-standing value: URLs lose credentials, `NAME: VALUE` and `NAME=VALUE` lose the
    value when NAME looks like a secret's name."""
    value = _URL.sub(lambda m: _redact_url(m.group(0)), value)
    if ":" in value and not _URL.match(value):
        name, _, rest = value.partition(":")
        if name.strip() and " " not in name.strip() and _secret_name(name.strip()):
            return f"{name}: {REDACTED}" if rest.strip() else value
    if "=" in value and not value.startswith("-"):
        name, _, rest = value.partition("=")
        if name and _secret_name(name) and not _URL.match(value):
            return f"{name}={REDACTED}"
    return value


def redact_argv(argv: Sequence[str]) -> list[str]:
    """The command line as it may be stored: option values that are secrets, credentials in
    URLs and secret header or NAME=VALUE values are replaced with <redacted>."""
    out: list[str] = []
    next_is: str | None = None  # "secret" | "name" | None: what the previous option takes
    for arg in argv:
        if next_is is not None:
            out.append(REDACTED if next_is == "secret" else arg)
            next_is = None
            continue
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            kind = (
                "name"
                if name in _NAMING_OPTIONS
                else ("secret" if _SECRET_OPTION.match(name) else None)
            )
            if eq:
                shown = {"secret": REDACTED, "name": value}.get(kind or "")
                out.append(f"{name}={shown if shown is not None else _redact_value(value)}")
            else:
                out.append(arg)
                next_is = kind
            continue
        out.append(_redact_value(arg))
    return out


# --- what a command reports ------------------------------------------------------------


def _entry_for(path: str | os.PathLike[str]) -> tuple[dict[str, Any], DatasetFingerprint | None]:
    try:
        fp = dataset_fingerprint(path)
    except DatasetError as exc:
        return {"path": str(path), "fingerprint": None, "error": str(exc)}, None
    return fp.to_json(), fp


@dataclass
class RunFacts:
    """What one command tells the audit trail: filled by the command, read once at its end.

    Commands call `read_dataset` before they work (so the fingerprint is the input as read)
    and `wrote_dataset` for outputs, which are fingerprinted when the record is written.
    """

    warn: Callable[[str], None] = lambda _line: None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    policy: str | None = None
    key: str | None = None
    key_source: str | None = None
    target: str | None = None
    scenarios: list[str] = field(default_factory=list)
    risk: str | None = None
    risk_confirmed: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    # The failure line the user saw, when the CLI's error mapping knows it best; else the
    # hook derives it from the exception.
    error: str | None = None
    _pending_outputs: list[tuple[str, str]] = field(default_factory=list)

    def read_dataset(self, path: str | os.PathLike[str]) -> DatasetFingerprint | None:
        entry, fp = _entry_for(path)
        self.inputs.append(entry)
        # Raw = a capture or import not yet sanitized (results and diffs have their own kinds).
        exposed = fp is not None and fp.sanitized is False and fp.kind == "exchanges"
        if exposed and exposed_to_others(fp.modes, Path(path).is_dir()):  # type: ignore[union-attr]
            self.warn(
                f"shadowtape: warning: {path} is raw (unsanitized) data that other users "
                f"can read; run `chmod -R o-rwx {path}`"
            )
        return fp

    def read_file(self, path: str | os.PathLike[str]) -> None:
        self.inputs.append(_file_entry(path))

    def wrote_dataset(self, path: str | os.PathLike[str]) -> None:
        self._pending_outputs.append(("dataset", str(path)))

    def wrote_file(self, path: str | os.PathLike[str]) -> None:
        self._pending_outputs.append(("file", str(path)))

    def use_key(self, fingerprint: str, source: str) -> None:
        self.key, self.key_source = fingerprint, source

    def count(self, **values: Any) -> None:
        self.counts.update(values)

    def settle_outputs(self) -> None:
        for kind, path in self._pending_outputs:
            if not Path(path).exists():
                self.outputs.append({"path": path, "fingerprint": None, "error": "not written"})
            elif kind == "dataset":
                self.outputs.append(_entry_for(path)[0])
            else:
                self.outputs.append(_file_entry(path))
        self._pending_outputs.clear()

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _RECORDED}
        out["target"] = _redact_url(self.target) if self.target else None
        return out


_RECORDED = (
    "inputs", "outputs", "policy", "key", "key_source", "target", "scenarios", "risk",
    "risk_confirmed", "counts",
)  # fmt: skip


def _file_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return {"path": str(path), "fingerprint": file_fingerprint(path)}
    except DatasetError as exc:
        return {"path": str(path), "fingerprint": None, "error": str(exc)}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def build_record(
    command: str,
    argv: Sequence[str],
    facts: RunFacts,
    exit_code: int,
    *,
    actor: str | None,
    error: str | None = None,
    started: str | None = None,
    duration_s: float | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """The record body; `AuditLog.append` adds seq, prev and hash."""
    return {
        "format": FORMAT,
        "time": utc_now(),
        "started": started,
        "duration_s": duration_s,
        "user": _user(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "actor": actor,
        "command": command,
        "argv": redact_argv(argv),
        "cwd": os.getcwd(),
        "config": config,
        "version": __version__,
        **facts.to_json(),
        "exit_code": exit_code,
        "error": _URL.sub(lambda m: _redact_url(m.group(0)), error) if error else None,
    }


# --- the log ---------------------------------------------------------------------------


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _last_line(fd: int) -> bytes | None:
    """The last line of the file behind fd, read backwards in blocks; None if empty."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise AuditError(
            "the audit log ends in a partial record (a crash while writing?); "
            "run `shadowtape audit verify` and repair the log before running more commands"
        )
    pos = size - 1  # the final newline; buf holds [pos, size - 1)
    buf = b""
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        cut = buf.rfind(b"\n")
        if cut >= 0:
            return buf[cut + 1 :]
    return buf


@dataclass(frozen=True, slots=True)
class VerifyResult:
    records: int
    head: str
    bad_record: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.bad_record is None


class AuditLog:
    """An append-only, hash-chained JSON-lines file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(
                f"cannot create {self.path.parent} for the audit log ({exc.strerror}); "
                "point --audit-log elsewhere"
            ) from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, LOG_MODE)
        except OSError as exc:
            raise AuditError(
                f"cannot open the audit log {self.path} ({exc.strerror}); fix its permissions "
                "or point --audit-log elsewhere"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                last = _last_line(fd)
                if last is None:
                    seq, prev = 1, GENESIS
                else:
                    try:
                        previous = json.loads(last)
                        seq, prev = int(previous["seq"]) + 1, str(previous["hash"])
                    except (ValueError, KeyError, TypeError):
                        raise AuditError(
                            f"the last record of the audit log {self.path} is unreadable; run "
                            "`shadowtape audit verify` and repair the log"
                        ) from None
                record = {**body, "seq": seq, "prev": prev}
                record["hash"] = record_hash(record)
                data = canonical(record) + b"\n"
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
                return record
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except AuditError:
            raise
        except OSError as exc:
            raise AuditError(
                f"cannot write the audit log {self.path} ({exc.strerror}); the command's own "
                "output is complete, but it is not recorded"
            ) from None
        finally:
            os.close(fd)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (closed below; open errors read apart)
        except FileNotFoundError:
            raise AuditError(f"{self.path}: no audit log there (give --audit-log)") from None
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read the audit log ({exc.strerror})") from None
        with fh:
            yield from enumerate(fh, start=1)

    def records(self) -> Iterator[dict[str, Any]]:
        for number, line in self.lines():
            try:
                record = json.loads(line)
            except ValueError:
                raise AuditError(
                    f"{self.path}: record {number} is not JSON; run `shadowtape audit verify`"
                ) from None
            yield record

    def verify(self) -> VerifyResult:
        prev = GENESIS
        count = 0
        for number, line in self.lines():
            count = number
            bad = _check_line(line, number, prev)
            if bad is not None:
                return VerifyResult(number - 1, prev, number, bad)
            prev = json.loads(line)["hash"]
        return VerifyResult(count, prev)


def _check_line(line: bytes, number: int, prev: str) -> str | None:
    if not line.endswith(b"\n"):
        return "partial record (no line end)"
    try:
        record = json.loads(line)
    except ValueError:
        return "not valid JSON (edited or corrupted)"
    if not isinstance(record, dict) or "hash" not in record:
        return "not an audit record"
    if record.get("seq") != number:
        return (
            f"sequence number {record.get('seq')!r} where {number} belongs "
            "(a record removed, added or moved before it)"
        )
    if record.get("prev") != prev:
        return "does not chain to the record before it (a record removed or reordered)"
    if record_hash(record) != record["hash"]:
        return "its hash does not match its content (edited)"
    return None


def default_log_path(config_path: Path | None, cwd: Path | None = None) -> Path:
    """Beside the config file, else in the working directory."""
    base = config_path.parent if config_path is not None else (cwd or Path.cwd())
    return base / LOG_NAME
