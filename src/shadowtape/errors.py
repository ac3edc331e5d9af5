"""Errors that reach the user as one line: what went wrong, where, and what to do.

The CLI turns a `ShadowtapeError` into that line and its exit code; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


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
