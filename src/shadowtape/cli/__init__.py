"""The `shadowtape` command line: click commands that parse, call one stage function, print.

Each stage's commands live in their own module and are imported only when used, so
`shadowtape --help` stays fast and a stage's heavy imports (mitmproxy, Presidio) load only for
the command that needs them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from shadowtape import __version__
from shadowtape.cli.audit_hook import ACTOR_ENV, AUDIT_LOG_ENV, AuditScope, StageContext
from shadowtape.cli.failures import report as report_failure
from shadowtape.cli.failures import sigterm_raises
from shadowtape.config import CONFIG_ENV, Config, build_default_map, find_config, load_config

# name -> "module:attribute"; the order is the order of `--help`, which follows the flow.
COMMANDS: dict[str, str] = {
    "demo": "shadowtape.cli.demo_cmds:demo",
    "capture": "shadowtape.cli.capture_cmds:capture",
    "import": "shadowtape.cli.capture_cmds:import_files",
    "inspect": "shadowtape.cli.capture_cmds:inspect",
    "policy": "shadowtape.cli.sanitize_cmds:policy",
    "sanitize": "shadowtape.cli.sanitize_cmds:sanitize",
    "verify": "shadowtape.cli.sanitize_cmds:verify",
    "correlate": "shadowtape.cli.replay_cmds:correlate",
    "replay": "shadowtape.cli.replay_cmds:replay",
    "serve": "shadowtape.cli.serve_cmds:serve",
    "diff": "shadowtape.cli.report_cmds:diff",
    "report": "shadowtape.cli.report_cmds:report",
    "config": "shadowtape.cli.demo_cmds:config",
    "audit": "shadowtape.cli.audit_cmds:audit",
}


class StageGroup(click.Group):
    """Imports a command's module on first use and turns every failure into one line."""

    context_class = StageContext  # the audit hook needs the exit code ctx.exit() was given

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            try:
                cmd = self.get_command(ctx, name)
            except ImportError:
                continue
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=70)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        ctx.with_resource(AuditScope(ctx))  # one audit record when the command ends, any way
        # Every failure of every command becomes one line here (cli/failures.py decides
        # which); `--debug` lets the traceback through instead.
        with sigterm_raises():
            try:
                return super().invoke(ctx)
            except BaseException as exc:
                code = report_failure(exc, debug=bool(ctx.obj and ctx.obj.get("debug")))
                if code is None:
                    raise
                # Inside the except block: the audit record sees the failure being handled.
                ctx.exit(code)


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shadowtape")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors instead of one line.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar=CONFIG_ENV,
    help="Defaults for every command from this TOML file [default: ./shadowtape.toml if present].",
)
@click.option(
    "--no-config",
    is_flag=True,
    envvar="SHADOWTAPE_NO_CONFIG",
    help="Ignore shadowtape.toml; use only flags and built-in defaults.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False),
    envvar=AUDIT_LOG_ENV,
    help="Append-only, hash-chained audit log of every command that touches data or traffic "
    "[default: shadowtape-audit.jsonl beside shadowtape.toml, else here; [defaults] audit-log].",
)
@click.option(
    "--actor",
    envvar=ACTOR_ENV,
    metavar="NAME",
    help="Who runs this (a person or a CI job), recorded in the audit log beside the OS user.",
)
@click.pass_context
def main(
    ctx: click.Context,
    debug: bool,
    config_path: str | None,
    no_config: bool,
    audit_log: str | None,
    actor: str | None,
) -> None:
    """Record production HTTP traffic, scrub it, replay it against staging, diff the answers.

    \b
    The flow, one command per stage:
      shadowtape capture --upstream http://127.0.0.1:8000 --out raw/
      shadowtape sanitize raw/ clean/
      shadowtape replay clean/ --target http://staging.local:8000 --out results/
      shadowtape diff results/ && shadowtape report results/ --html report.html

    Every stage reads and writes Parquet datasets of one schema; open them with polars.
    Run `shadowtape demo` to see the whole flow on built-in sample services.
    Flags override shadowtape.toml; `shadowtape config show` prints what applies.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    config = Config()
    path = None if no_config else find_config(config_path)
    if path is not None:
        config = load_config(path, COMMANDS)
    ctx.obj["config"] = config
    # Only the command about to run is checked and mapped: importing every stage to check the
    # whole file would slow down every call (`config show` checks all of it).
    if config.sections and ctx.invoked_subcommand:
        assert isinstance(ctx.command, click.Group)
        ctx.default_map = build_default_map(config, ctx.command, ctx, only=ctx.invoked_subcommand)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
