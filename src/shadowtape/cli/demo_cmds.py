"""`shadowtape demo` and `shadowtape config show`."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import click

from shadowtape.cli.progress import LiveLine
from shadowtape.config import Config, effective_values
from shadowtape.demo.defaults import DEFAULT_REQUESTS, DEFAULT_SEED, DEFAULT_WORKDIR


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_WORKDIR,
    show_default=True,
    help="Where the datasets and reports go; a re-run replaces the previous run's files.",
)
@click.option(
    "--requests",
    type=click.IntRange(min=20),
    default=DEFAULT_REQUESTS,
    show_default=True,
    help="How many requests the sample shoppers send.",
)
@click.option(
    "--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed for the shoppers."
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the sample services running at the end (until Ctrl-C), to try the commands.",
)
def demo(workdir: Path, requests: int, seed: int, keep: bool) -> None:
    """Run the whole flow on built-in sample services, on loopback, in under a minute.

    Starts a sample shop API twice (v1 as production, v2 as staging with planted drift),
    records seeded shopper traffic through `shadowtape capture`, then runs sanitize, verify,
    replay, diff and report, printing each command before it runs so you can run them yourself.

    Example: shadowtape demo --workdir /tmp/demo --requests 200
    """
    from shadowtape.demo.pipeline import DemoOptions, run_demo

    def wait_forever() -> None:
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            click.echo("stopping the services")

    line = LiveLine()

    def live(text: str | None) -> None:
        if text is None:
            line.clear()
        else:
            line.update(text)

    from shadowtape.cli.audit_hook import actor_of, audit_log_path

    ctx = click.get_current_context()
    root = ctx.find_root()
    # An audit log the user named is used; else the demo keeps its own in the workdir.
    named = root.params.get("audit_log") is not None
    options = DemoOptions(
        workdir=workdir,
        requests=requests,
        seed=seed,
        keep=keep,
        audit_log=audit_log_path(ctx).absolute() if named else None,
        actor=actor_of(ctx),
    )
    run_demo(options, click.echo, wait_forever, live)


@click.group()
def config() -> None:
    """Show the defaults that shadowtape.toml sets for each command.

    A `shadowtape.toml` in the working directory (or the file given with `shadowtape --config
    FILE`) holds defaults for every command, one table per command; flags override it.
    """


@config.command()
@click.argument("commands", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
@click.pass_context
def show(ctx: click.Context, commands: tuple[str, ...], as_json: bool) -> None:
    """Print every option's effective value and where it came from.

    Sources: an environment variable, the config file (with line and table), or the
    built-in default. Checks the whole file: an unknown table or option is an error.

    Example: shadowtape config show replay report
    """
    root = ctx.find_root()
    cfg: Config = root.obj.get("config", Config()) if root.obj else Config()
    assert isinstance(root.command, click.Group)
    unknown = [c for c in commands if root.command.get_command(root, c.split()[0]) is None]
    if unknown:
        raise click.BadParameter(
            f"no command {', '.join(unknown)}; see `shadowtape --help`", param_hint="COMMANDS"
        )
    broken: dict[str, str] = {}
    rows = effective_values(cfg, root.command, root, commands, broken=broken)
    from shadowtape.cli.scenario_opts import current_registry

    current_registry()  # [scenarios.*] and [governance] are checked too, FILE:LINE on error
    if as_json:
        payload = {
            "config_file": str(cfg.path) if cfg.path else None,
            "unavailable_commands": broken,
            "values": [
                {"command": r.command, "option": r.option, "value": r.value, "source": r.source}
                for r in rows
            ],
        }
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    click.echo(f"config file: {cfg.path or 'none (no shadowtape.toml here; see --config)'}")
    current = None
    for row in rows:
        if row.command != current:
            current = row.command
            click.echo(f"\n{current}")
        click.echo(f"  {row.option:<22} {_show(row.value):<36} {row.source}")
    wanted = {c.split()[0] for c in commands}
    for name, why in broken.items():
        if not wanted or name in wanted:
            click.echo(f"{name}: not shown, its module does not load ({why})", err=True)


def _show(value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]" if value else "[]"
    return "-" if value is None else str(value)
