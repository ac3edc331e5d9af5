"""The scenario registry of the running command's shadowtape.toml, for replay and report."""

from __future__ import annotations

import click

from shadowtape.governance.scenarios import Registry, load_registry


def current_registry() -> Registry:
    """[scenarios.*] and [governance] of the config in use (empty without one), checked
    with FILE:LINE errors; `fail-on` rules are checked with the report stage's grammar."""
    from shadowtape.report.gates import parse_gate

    ctx = click.get_current_context()
    root = ctx.find_root()
    config = root.obj.get("config") if isinstance(root.obj, dict) else None
    if config is None:
        return Registry()
    return load_registry(config.tables, config.path, config.lines, check_gate=parse_gate)
