"""Connecting to Ray for the optional `--engine ray`: one place for the import, the address
rules and turning a remote failure back into the one-line error it started as.

Ray is an extra (`pip install 'shadowtape[ray]'`), so it is imported here, inside functions,
and only when a command asks for it: the rest of shadowtape runs without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from shadowtape.errors import InputError, ShadowtapeError

MISSING_RAY = "--engine ray needs the ray extra: pip install 'shadowtape[ray]'"


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401 - the batch engine needs Ray Data, part of the extra
    except ImportError:
        raise InputError(MISSING_RAY) from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[ModuleType]:
    """Ray, connected: to `address`, else to $RAY_ADDRESS (set inside a Ray Job), else to a
    new local instance that lives as long as the block. A session the caller already opened
    (a test, a notebook) is used as it is and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, object] = {"logging_level": logging.WARNING}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # "local" starts a fresh instance even when a `ray start` cluster runs on this host:
        # without --address the user asked for this machine only.
        options.update(address="local", include_dashboard=False)
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a local instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShadowtapeError(
            f"cannot start Ray at {where} ({first}); check --address (ray://HOST:10001 or "
            "HOST:6379) and that the cluster is up (`ray status`)"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def unwrap_remote_error(exc: BaseException) -> BaseException:
    """The ShadowtapeError a Ray worker raised, if that is what `exc` carries.

    Ray wraps an exception raised in a task or actor (RayTaskError, and Ray Data adds its
    own layer); its message is the remote traceback. The CLI promises one line, so the
    original error is dug out and raised on the driver instead.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        cause = getattr(cur, "cause", None)
        if isinstance(cause, ShadowtapeError):
            return cause
        if isinstance(cur, ShadowtapeError) and cur is not exc:
            return cur
        stack += [cause, cur.__cause__, cur.__context__]
    return exc
