"""The CLI's side of the audit trail: which commands are audited, where the log is, and the
scope that writes one record when the command's context closes, whatever its outcome.

Commands report what they read and wrote through `run_facts()` (a typed object on the root
context); the record itself is built and chained by `shadowtape.governance.audit`. A new
command (serve, say) needs its name in AUDITED and a few lines:

    facts = run_facts()
    facts.read_dataset(dataset)        # fingerprinted now, before the command works
    facts.target = listen_url          # what it sends to or serves on
    facts.wrote_dataset(out)           # fingerprinted when the record is written
    facts.count(answered=n, missed=m)  # what the one-line summary says
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

import click
from click.core import ParameterSource

from shadowtape.cli.failures import PREFIX
from shadowtape.cli.failures import describe as describe_failure
from shadowtape.errors import ShadowtapeError

if TYPE_CHECKING:  # the governance modules load pyarrow: only once a command needs them
    from shadowtape.governance.audit import RunFacts

# Every command that reads or writes a dataset or sends traffic; `serve` once it exists.
AUDITED = frozenset(
    {
        "capture",
        "import",
        "inspect",
        "sanitize",
        "verify",
        "correlate",
        "replay",
        "serve",
        "diff",
        "report",
    }
)
AUDIT_LOG_ENV = "SHADOWTAPE_AUDIT_LOG"
ACTOR_ENV = "SHADOWTAPE_ACTOR"
_FACTS = "audit_facts"
_FROM_USER = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _warn(line: str) -> None:
    click.echo(line, err=True)


def run_facts() -> RunFacts:
    """This command's facts for its audit record; a detached one outside the CLI."""
    from shadowtape.governance.audit import RunFacts

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return RunFacts()
    root = ctx.find_root()
    if not isinstance(root.obj, dict):
        root.obj = {}
    facts = root.obj.get(_FACTS)
    if facts is None:
        facts = root.obj[_FACTS] = RunFacts(warn=_warn)
    return facts


def _root_value(ctx: click.Context, name: str) -> tuple[str | None, Path | None]:
    """(value, directory a relative value is taken from) for a root option: the flag or its
    variable, else [defaults] in shadowtape.toml."""
    root = ctx.find_root()
    value = root.params.get(name)
    if value and root.get_parameter_source(name) in _FROM_USER:
        return str(value), None
    config = (root.obj or {}).get("config") if isinstance(root.obj, dict) else None
    if config is not None:
        setting = config.section("defaults").get(name.replace("_", "-"))
        if setting is not None:
            return str(setting.value), setting.path.parent
    return None, None


def audit_log_path(ctx: click.Context) -> Path:
    value, base = _root_value(ctx, "audit_log")
    if value is not None:
        path = Path(value).expanduser()
        return base / path if base is not None and not path.is_absolute() else path
    from shadowtape.governance.audit import default_log_path

    root = ctx.find_root()
    config = (root.obj or {}).get("config") if isinstance(root.obj, dict) else None
    return default_log_path(config.path if config is not None else None)


def actor_of(ctx: click.Context) -> str | None:
    return _root_value(ctx, "actor")[0]


def _exit_code(exc: BaseException | None) -> int:
    if exc is None:
        return 0
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, click.ClickException):
        return exc.exit_code
    # A bug, Ctrl-C (click's Abort), or an error let through by --debug: a traceback, exit 1.
    return 1


def _error_text(exc: BaseException | None) -> str | None:
    """The one line the user saw: the ShadowtapeError behind ctx.exit(), a usage error, or
    the name of an unexpected exception."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ShadowtapeError):
            return str(seen)
        if isinstance(seen, click.ClickException):
            return seen.format_message()
        if isinstance(seen, click.Abort):
            return "interrupted"
        if not isinstance(seen, click.exceptions.Exit | SystemExit):
            # The line cli/failures.py printed (a full disk says where and what), without
            # the program name; the exception's name for anything it leaves to click.
            failure = describe_failure(seen)
            if failure is None:
                return type(seen).__name__
            return failure.line.removeprefix(f"{PREFIX}: ").removeprefix("error: ")
        seen = seen.__context__
    return None


def _argv(ctx: click.Context) -> list[str]:
    words = ["shadowtape"]
    for param in ctx.command.params:
        if param.name and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE:
            flag = param.opts[-1] if param.opts else param.name
            value = ctx.params.get(param.name)
            words += [flag] if isinstance(value, bool) else [flag, str(value)]
    rest = getattr(ctx, "_protected_args", None)
    if rest is None:
        rest = getattr(ctx, "protected_args", [])
    return [*words, *rest, *ctx.args]


class StageContext(click.Context):
    """The root context: remembers the code `exit()` was asked for, because `exit()` closes
    the context (which writes the audit record) before it raises the exit."""

    requested_exit: int | None = None

    def exit(self, code: int = 0) -> NoReturn:
        self.requested_exit = code
        super().exit(code)


class AuditScope:
    """Entered by `StageGroup.invoke` through `ctx.with_resource`, left when the root context
    closes: click hands over the exception in flight (Exit with the code, a usage error, a
    bug), or, when the close comes from `ctx.exit()` inside an except block, that block's
    exception is the one being handled."""

    def __init__(self, ctx: click.Context) -> None:
        self.ctx = ctx
        self.argv = _argv(ctx)
        self.started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.t0 = time.monotonic()

    def __enter__(self) -> AuditScope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        command = self.ctx.invoked_subcommand
        if command not in AUDITED or any(a in ("--help", "-h") for a in self.argv):
            return
        if exc is None:
            # Closed by `ctx.exit(code)`: the code is the one asked for; the error, if the
            # exit was called while handling one, is the exception being handled.
            exc = sys.exc_info()[1]
        from shadowtape.governance.audit import AuditError, AuditLog, build_record

        requested = getattr(self.ctx, "requested_exit", None)
        code = requested if requested is not None else _exit_code(exc)
        facts = run_facts()
        root = self.ctx.find_root()
        config = (root.obj or {}).get("config") if isinstance(root.obj, dict) else None
        path = audit_log_path(self.ctx)
        try:
            facts.settle_outputs()
            record = build_record(
                command,
                self.argv,
                facts,
                code,
                actor=actor_of(self.ctx),
                error=facts.error or _error_text(exc),
                started=self.started,
                duration_s=round(time.monotonic() - self.t0, 3),
                config=str(config.path) if config is not None and config.path else None,
            )
            AuditLog(path).append(record)
        except AuditError as err:
            click.echo(f"shadowtape: error: audit: {err}", err=True)
            if code != 0:
                return  # the command's own failure stands; its exit code is kept
            if isinstance(exc, click.exceptions.Exit):
                exc.exit_code = err.exit_code  # the exception in flight carries the exit
                return
            if isinstance(exc, SystemExit):
                exc.code = err.exit_code
                return
            raise click.exceptions.Exit(err.exit_code) from None
