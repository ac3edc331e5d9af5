"""Outputs appear whole or not at all, and shadowtape never destroys what it did not make.

Every file and directory a command writes goes through here: it is built under a hidden
temporary name beside its destination (dataset readers skip names starting with "." or "_"),
fsynced, and renamed into place only when complete. On failure or interruption the temporary
is removed; what a hard kill leaves behind is named after its owner (host and process id), so
the next run of the same kind can tell a dead run's leftovers from a live run's work and
remove only those.

A directory that already exists is replaced only when the caller's check says it holds what
that command writes (a dataset of the expected kind); anything else is refused, because a
mistyped `--out ~/src --overwrite` must not delete a source tree. The old and the new
directory are swapped in one step where Linux allows it (`renameat2(RENAME_EXCHANGE)`), so
there is no moment when neither exists; elsewhere the old one is moved aside first, and for
that instant the destination is missing (never half-written).

A leaf: it imports nothing from shadowtape but `errors`, so the schema layer can use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from shadowtape.errors import InputError

# Inside a temporary directory: who made it, so a later run can tell whether it is stale.
STAGING_MARKER = "_shadowtape_staging.json"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _host_tag() -> str:
    # The host name is hashed, not spelt out: temp names stay short and free of odd characters.
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """`HOST-PID` of this process, as written into temporary names."""
    return f"{_host_tag()}-{os.getpid()}"


def temp_name(dest: str | os.PathLike[str], role: str) -> Path:
    """A hidden name beside `dest`, unique to this process and call:
    `.NAME.ROLE-HOST-PID-RANDOM`."""
    d = Path(dest)
    return d.with_name(f".{d.name}.{role}-{owner_tag()}-{secrets.token_hex(4)}")


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale(name: str, role: str, dest_name: str | None = None) -> bool:
    """Whether `name` is a temporary of `role` (for `dest_name`, or any destination) made on
    this host by a process that is gone. Another host's temporaries never count as stale:
    their owner may be alive on a shared file system."""
    stem = re.escape(dest_name) if dest_name is not None else r".+"
    m = re.fullmatch(rf"\.{stem}\.{re.escape(role)}-([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}", name)
    if m is None or m.group(1) != _host_tag():
        return False
    return not _owner_alive(int(m.group(2)))


def remove_stale(directory: str | os.PathLike[str], role: str, dest_name: str | None = None) -> int:
    """Remove the temporaries of `role` that dead runs left in `directory`; a directory is
    removed only when it carries the staging marker this module writes. Returns how many."""
    d = Path(directory)
    removed = 0
    try:
        entries = list(d.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not is_stale(entry.name, role, dest_name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if not (entry / STAGING_MARKER).is_file():
                continue
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed += 1
    return removed


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename durable; some file systems refuse to open a directory, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_file_dest(p: Path) -> None:
    if p.is_dir():
        raise InputError(f"{p}: is a directory; give a file name for this output")


@contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Write a file through a temporary beside it; it replaces `path` only when the block
    ends without an error. The parent directory is created when missing."""
    p = Path(path)
    _check_file_dest(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(p.parent, "tmp", p.name)
    tmp = temp_name(p, "tmp")
    try:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(p.parent)


def write_file_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    p = Path(path)
    if isinstance(data, str):
        with atomic_file(p, "w", encoding="utf-8") as fh:
            fh.write(data)
    else:
        with atomic_file(p, "wb") as fh:
            fh.write(data)
    return p


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """Manifests and summaries: sorted keys and a final newline, so equal payloads are equal
    bytes."""
    data = json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n"
    return write_file_atomic(path, data)


# --- directories ------------------------------------------------------------------------


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically; False where the OS or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_into_place(new: Path, dest: Path) -> None:
    """Put directory `new` at `dest`; an old `dest` is removed only after `new` is there."""
    if not dest.exists():
        os.rename(new, dest)
    elif _renameat2_exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old output
    else:
        # No atomic exchange here: for the instant between the two renames `dest` is missing.
        old = temp_name(dest, "old")
        os.rename(dest, old)
        try:
            os.rename(new, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dest.parent)


# A check of an existing destination: None when it may be replaced, else why not (a phrase
# such as "holds README.md, which shadowtape did not write").
ExistingCheck = Callable[[Path], str | None]


def check_replaceable(dest: Path, check: ExistingCheck, overwrite: bool, flag: str) -> None:
    """Refuse, with one line, to replace `dest` unless told to and unless it is ours."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if dest.is_symlink() or not dest.is_dir():
        raise InputError(f"{dest}: exists and is not a directory; choose another output")
    if not overwrite:
        raise InputError(f"{dest}: already exists; choose a new output directory or pass {flag}")
    reason = check(dest)
    if reason is not None:
        raise InputError(
            f"{dest}: {reason}; shadowtape replaces only what it wrote there, so choose "
            "another output (or remove it yourself)"
        )


def _relocate(exc: OSError, tmp: Path, dest: Path) -> None:
    """Errors name the destination the user gave, not our hidden temporary."""
    for attr in ("filename", "filename2"):
        value = getattr(exc, attr, None)
        if value is None:
            continue
        text = os.fsdecode(value)
        if text == str(tmp) or text.startswith(str(tmp) + os.sep):
            setattr(exc, attr, str(dest) + text[len(str(tmp)) :])
    if exc.filename is None:
        exc.filename = str(dest)


def _marked_temp_dir(dest: Path, role: str) -> Path:
    """A new temporary directory beside `dest`, carrying the marker by which a later run
    recognises it as stale once its owner is gone (dead runs' ones are removed first)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest.parent, role, dest.name)
    tmp = temp_name(dest, role)
    tmp.mkdir()
    try:
        (tmp / STAGING_MARKER).write_text(
            json.dumps({"owner": owner_tag(), "destination": dest.name}) + "\n",
            encoding="utf-8",
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


@contextmanager
def staged_directory(
    dest: str | os.PathLike[str],
    *,
    check: ExistingCheck,
    overwrite: bool = False,
    flag: str = "--overwrite",
    role: str = "partial",
) -> Iterator[Path]:
    """Build a directory under a temporary name and publish it at `dest` when the block ends
    without an error; on any error or interruption the temporary is removed and `dest` is
    left as it was. `check` vets an existing `dest` (before the work and again just before
    the swap, in case it changed meanwhile)."""
    d = Path(dest)
    check_replaceable(d, check, overwrite, flag)
    tmp = _marked_temp_dir(d, role)
    try:
        yield tmp
        check_replaceable(d, check, overwrite, flag)
        (tmp / STAGING_MARKER).unlink()
        swap_into_place(tmp, d)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _relocate(exc, tmp, d)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def scratch_directory(beside: str | os.PathLike[str], role: str = "work") -> Iterator[Path]:
    """A marked temporary directory beside `beside`, removed when the block ends."""
    b = Path(beside)
    tmp = _marked_temp_dir(b, role)
    try:
        yield tmp
    except OSError as exc:
        _relocate(exc, tmp, b)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
