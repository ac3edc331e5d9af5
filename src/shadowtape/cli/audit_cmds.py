"""`shadowtape audit verify` and `shadowtape audit show`: read the audit log back."""

from __future__ import annotations

import json
from pathlib import Path

import click

from shadowtape.cli.audit_hook import audit_log_path
from shadowtape.errors import ShadowtapeError

log_argument = click.argument(
    "log", required=False, type=click.Path(dir_okay=False, path_type=Path)
)


def _log(log: Path | None) -> Path:
    return log if log is not None else audit_log_path(click.get_current_context())


@click.group()
def audit() -> None:
    """Check and read the audit log: who ran which command on which data, with what outcome.

    Every command that reads or writes a dataset or sends traffic appends one record to the
    log (`shadowtape --audit-log FILE`, [defaults] audit-log, or shadowtape-audit.jsonl beside
    shadowtape.toml). Records are hash-chained: an edited, removed or reordered record is
    found by `audit verify`.

    \b
    Example:
      shadowtape audit verify
      shadowtape audit show --command replay --since 7d
    """


@audit.command()
@log_argument
@click.option(
    "--head",
    metavar="HASH",
    help="The head hash printed by an earlier verify (kept elsewhere, e.g. a CI log); "
    "records cut from the end of the log show as a mismatch.",
)
def verify(log: Path | None, head: str | None) -> None:
    """Check the hash chain; exit 1 naming the first bad record (1-based line number).

    \b
    Example:
      shadowtape audit verify audit.jsonl
    """
    from shadowtape.governance.audit import AuditLog

    path = _log(log)
    result = AuditLog(path).verify()
    if not result.ok:
        raise ShadowtapeError(
            f"{path}: record {result.bad_record}: {result.problem}; the {result.records} "
            "records before it chain correctly"
        )
    if head is not None and head != result.head:
        raise ShadowtapeError(
            f"{path}: {result.records} records chain correctly but end at head {result.head}, "
            f"not {head}: records were removed from the end or the log was replaced"
        )
    click.echo(f"ok: {path}: {result.records} records, chain intact, head {result.head}")


@audit.command()
@log_argument
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
@click.option("--command", "command_name", metavar="NAME", help="Only records of this command.")
@click.option(
    "--since", metavar="WHEN", help="Only records from then on: 2026-11-30, 2026-11-30T08:00, 7d."
)
@click.option("--actor", metavar="NAME", help="Only records made with --actor NAME.")
@click.option(
    "--dataset",
    metavar="FINGERPRINT|PATH",
    help="Only records that read or wrote this dataset (a fingerprint prefix or its path).",
)
def show(
    log: Path | None,
    as_json: bool,
    command_name: str | None,
    since: str | None,
    actor: str | None,
    dataset: str | None,
) -> None:
    """List audit records, oldest first, one line each (or JSON lines with --json).

    \b
    Example:
      shadowtape audit show --dataset sha256:3f2a9c --json | jq .argv
    """
    from shadowtape.governance.audit import AuditLog
    from shadowtape.governance.audit_query import (
        RecordFilter,
        parse_since,
        record_line,
        select_records,
    )

    flt = RecordFilter(command_name, parse_since(since) if since else None, actor, dataset)
    shown = 0
    for record in select_records(AuditLog(_log(log)).records(), flt):
        shown += 1
        click.echo(json.dumps(record, sort_keys=True) if as_json else record_line(record))
    if not as_json:
        click.echo(f"{shown} records", err=True)
