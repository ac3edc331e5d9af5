"""Errors that reach the user as one line: what went wrong, where, and what to do.

The CLI (`shadowtape.cli.failures`) turns a `ShadowtapeError` into that line and its exit code,
and OS errors (a full disk, a read-only file system) into a line of their own; anything else is
reported as a bug, with the traceback behind `--debug`.
"""

from __future__ import annotations

import errno
import re


class ShadowtapeError(Exception):
    """An expected failure, caused by input or environment rather than a bug."""

    exit_code = 1


class InputError(ShadowtapeError):
    """Bad input from the user: a file, an option, a policy. Exit code 2, like click's."""

    exit_code = 2


class DatasetError(InputError):
    """A dataset (or one of its files) that cannot be read as what it claims to be."""


class KeyMissingError(InputError):
    """No key was given where a keyed function needs one."""


# Errors that mean "no room": the data was fine, the disk (or a quota) was not.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


def os_errno(exc: BaseException) -> int | None:
    """The errno of an OS-level failure, also when a library (Arrow) carries it only in the
    message text."""
    if isinstance(exc, OSError):
        if exc.errno is not None:
            return exc.errno
        m = _ERRNO_IN_TEXT.search(str(exc))
        if m:
            return int(m.group(1))
    return None


def is_disk_full(exc: BaseException) -> bool:
    return os_errno(exc) in DISK_FULL_ERRNOS
