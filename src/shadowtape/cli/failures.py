"""How every command's failures reach the user: one line (what, where, what to do) and an
exit code. The one place that decides; `StageGroup.invoke` applies it to every command.

Exit codes: 2 bad input (click's own usage errors too), 1 the environment (a full disk, a
read-only file system, a port in use) or an expected refusal, 130/143 interrupted by
SIGINT/SIGTERM (128 + the signal, as shells report it), 70 a bug in shadowtape (EX_SOFTWARE
from sysexits.h), so a CI job can tell a gate that tripped (1) from a crash.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import click

from shadowtape.errors import ShadowtapeError, os_errno

EXIT_ENVIRONMENT = 1
EXIT_INPUT = 2
EXIT_BUG = 70
PREFIX = "shadowtape"

# What to do about each kind of OS failure; the what and where come from the error itself.
_OS_ADVICE = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up; free some space or write somewhere else",
    errno.EROFS: "write somewhere else",
    errno.EACCES: "check the permissions, or write somewhere else",
    errno.EPERM: "check the permissions, or write somewhere else",
    errno.ENOTDIR: "a part of the path is a file, not a directory; fix the path",
    errno.ENOENT: "a directory on the path does not exist; create it or fix the path",
    errno.EISDIR: "it is a directory; give a file name",
    errno.EEXIST: "it exists already; remove it or choose another name",
    errno.ENOTEMPTY: "the directory is not empty; choose another one",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files on this system; close some programs",
    errno.EFBIG: "the file is larger than allowed (ulimit -f, or the file system's limit)",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
    errno.ELOOP: "the path has a loop of symbolic links; fix the path",
    errno.EIO: "the device reported an I/O error; check the disk",
    errno.ENOMEM: "the system is out of memory",
    errno.EADDRINUSE: "the address is in use; choose another port",
}


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that cleanups (temporary outputs) run, as
    they do for Ctrl-C. A BaseException, like KeyboardInterrupt: `except Exception` must
    not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True, slots=True)
class Failure:
    line: str
    exit_code: int


def _os_line(exc: OSError) -> str:
    code = os_errno(exc)
    if (
        code == errno.EEXIST
        and exc.filename
        and os.path.lexists(exc.filename)
        and not os.path.isdir(exc.filename)
    ):
        code = errno.ENOTDIR  # mkdir -p through a file: say what is wrong, not what mkdir saw
    what = os.strerror(code) if code is not None else (exc.strerror or str(exc))
    where = [os.fsdecode(f) for f in (exc.filename, getattr(exc, "filename2", None)) if f]
    advice = _OS_ADVICE.get(code or -1, "check the path and the file system")
    place = f"{' -> '.join(where)}: " if where else ""
    return f"{PREFIX}: error: {place}{what.rstrip('.')}; {advice}"


def describe(exc: BaseException) -> Failure | None:
    """The line and exit code for `exc`; None for what click reports itself (usage errors,
    exits, aborts)."""
    if isinstance(exc, click.exceptions.ClickException | click.exceptions.Exit | SystemExit):
        return None
    if isinstance(exc, click.exceptions.Abort):
        return None
    if isinstance(exc, KeyboardInterrupt):
        return Failure(
            f"{PREFIX}: interrupted (SIGINT); nothing half-written was left behind, rerun to "
            "finish",
            128 + signal.SIGINT,
        )
    if isinstance(exc, Terminated):
        return Failure(
            f"{PREFIX}: interrupted ({exc}); nothing half-written was left behind, rerun to finish",
            128 + exc.signum,
        )
    if isinstance(exc, ShadowtapeError):
        return Failure(f"{PREFIX}: error: {exc}", exc.exit_code)
    if isinstance(exc, OSError):
        return Failure(_os_line(exc), EXIT_ENVIRONMENT)
    if isinstance(exc, MemoryError):
        return Failure(
            f"{PREFIX}: error: out of memory; give the command more memory or a smaller input",
            EXIT_ENVIRONMENT,
        )
    text = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return Failure(
        f"{PREFIX}: internal error ({detail}); this is a bug in shadowtape: rerun with "
        "`shadowtape --debug ...` for the traceback and report it",
        EXIT_BUG,
    )


def one_line(text: str) -> str:
    """A library's multi-line message (Arrow's, for a corrupt page) folded into one line."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def report(exc: BaseException, debug: bool) -> int | None:
    """Print the line for `exc` and return its exit code; None: re-raise it (click's own
    errors, or --debug, which shows the traceback)."""
    failure = None if debug else describe(exc)
    if failure is None:
        return None
    click.echo(one_line(failure.line), err=True)
    return failure.exit_code


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds it like Ctrl-C (commands with their own
    handlers, capture and replay, replace this one while they run)."""
    try:
        previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
