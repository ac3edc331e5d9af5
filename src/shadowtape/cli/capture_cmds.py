"""`shadowtape capture`, `import` and `inspect`: parse, call the capture stage, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from shadowtape.bodies import DEFAULT_MAX_BODY
from shadowtape.capture.writer import DEFAULT_QUEUE_SIZE, DEFAULT_ROLL_BYTES, DEFAULT_ROLL_SECONDS
from shadowtape.cli.audit_hook import run_facts
from shadowtape.cli.progress import LiveLine
from shadowtape.cli.worker_opts import parse_workers
from shadowtape.errors import ShadowtapeError
from shadowtape.keyed import DEFAULT_KEY_ENV
from shadowtape.sessions import DEFAULT_GAP_SECONDS


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


session_options = [
    click.option(
        "--session-key",
        default="auto",
        show_default=True,
        metavar="KEY",
        help="What names a session: auto (a session cookie, else client address + gap), "
        "client, cookie:NAME or header:NAME.",
    ),
    click.option(
        "--session-gap",
        type=float,
        default=DEFAULT_GAP_SECONDS,
        show_default=True,
        metavar="SECONDS",
        help="Silence after which the same client starts a new session.",
    ),
    click.option(
        "--redact-header",
        "redact_headers",
        multiple=True,
        metavar="NAME",
        help="Another header whose value is a credential (repeatable). Always redacted: "
        "Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-Api-Key, Api-Key, "
        "X-Auth-Token.",
    ),
    click.option(
        "--max-body",
        type=click.IntRange(min=0),
        default=DEFAULT_MAX_BODY,
        show_default=True,
        metavar="BYTES",
        help="Keep at most this many bytes of each body; longer ones are truncated and flagged.",
    ),
    click.option(
        "--key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="File with the HMAC key for credential tokens (default: the --key-env variable).",
    ),
    click.option(
        "--key-env",
        default=DEFAULT_KEY_ENV,
        show_default=True,
        metavar="NAME",
        help="Environment variable that holds the key; use the one sanitize uses, so a "
        "credential gets the same token in both.",
    ),
    click.option(
        "--group",
        metavar="NAME",
        help="Share the raw dataset with this group (files 0640, directories 0750); "
        "by default only you can read it (0600/0700): it is not yet sanitized.",
    ),
]


def with_options(options):  # noqa: ANN001, ANN201 (click decorators)
    def apply(fn):  # noqa: ANN001, ANN202
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return apply


@click.command()
@click.option(
    "--upstream", required=True, metavar="URL", help="The service to put the proxy in front of."
)
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the proxy listens; port 0 picks a free port.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the exchanges dataset (created if missing; may be shared).",
)
@click.option("--filter-host", default="", metavar="REGEX", help="Record only matching hosts.")
@click.option("--filter-path", default="", metavar="REGEX", help="Record only matching paths.")
@click.option(
    "--sample",
    type=click.FloatRange(0.0, 1.0),
    default=1.0,
    show_default=True,
    metavar="FRACTION",
    help="Fraction of sessions to record; a session is kept or dropped whole.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --sample.")
@click.option(
    "--roll-size",
    type=click.IntRange(min=1024),
    default=DEFAULT_ROLL_BYTES,
    show_default=True,
    metavar="BYTES",
    help="Start a new file after this many bytes.",
)
@click.option(
    "--roll-interval",
    type=click.FloatRange(min=0.05),
    default=DEFAULT_ROLL_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="Start a new file after this long; a crash loses at most this much traffic.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=DEFAULT_QUEUE_SIZE,
    show_default=True,
    metavar="N",
    help="Exchanges waiting for the writer; beyond this, flows are dropped and counted "
    "(the proxy never waits).",
)
@click.option(
    "--workers",
    "workers_text",
    metavar="N|auto",
    help="Serve --listen from N proxy processes (auto: one per core), one capture id and "
    "one dataset; sessions keep one seq order across them [default: 1].",
)
@with_options(session_options)
def capture(
    upstream: str,
    listen: str,
    out_dir: Path,
    filter_host: str,
    filter_path: str,
    sample: float,
    seed: int,
    roll_size: int,
    roll_interval: float,
    queue_size: int,
    session_key: str,
    session_gap: float,
    redact_headers: tuple[str, ...],
    max_body: int,
    key_file: Path | None,
    key_env: str,
    group: str | None,
    workers_text: str | None,
) -> None:
    """Record the traffic to a service through a reverse proxy (mitmproxy, in-process).

    Clients talk to the proxy as if it were the service; every exchange is written to
    Parquet files in --out, with credentials (Authorization, cookies, API keys) replaced by
    keyed tokens before they touch the disk. Stop with Ctrl-C or SIGTERM: the open file is
    finalized and a summary printed.

    \b
    Example:
      export SHADOWTAPE_KEY=$(openssl rand -hex 32)
      shadowtape capture --upstream http://127.0.0.1:8000 --listen 127.0.0.1:8080 --out raw/
      # one proxy process per core, on the same address:
      shadowtape capture --upstream http://127.0.0.1:8000 --out raw/ --workers auto
      # the same recorder inside your own mitmproxy:
      mitmdump -s <shadowtape>/capture/addon.py --set shadowtape_out=raw/
    """
    from shadowtape.capture.proxy import ProxySettings, parse_upstream
    from shadowtape.capture.workers import run_capture_workers
    from shadowtape.keyed import Key
    from shadowtape.targets import parse_listen

    workers = parse_workers(workers_text)
    host, port = parse_listen(listen)
    upstream_url = parse_upstream(upstream)
    facts = run_facts()
    facts.target = upstream_url
    facts.wrote_dataset(out_dir)
    key = Key.load(key_file, env=key_env)
    facts.use_key(key.fingerprint, key.source)
    live = LiveLine()

    def on_listening(url: str) -> None:
        by = f" ({workers} proxy processes)" if workers > 1 else ""
        click.echo(f"listening on {url} -> {upstream_url}{by}")
        sys.stdout.flush()

    def on_event(text: str) -> None:
        live.clear()
        click.echo(f"shadowtape: {text}", err=True)

    def on_tick(s: dict[str, int]) -> None:
        live.update(
            f"written {s['written']} of {s['seen']}  dropped {s['dropped']}  "
            f"bytes {_human_bytes(s['bytes'])}  files {s['files']}"
        )

    summary = run_capture_workers(
        ProxySettings(upstream_url, host, port),
        {
            "shadowtape_out": str(out_dir),
            "shadowtape_key_file": str(key_file) if key_file else "",
            "shadowtape_key_env": key_env,
            "shadowtape_filter_host": filter_host,
            "shadowtape_filter_path": filter_path,
            "shadowtape_sample": repr(sample),
            "shadowtape_seed": seed,
            "shadowtape_max_body": max_body,
            "shadowtape_roll_size": roll_size,
            "shadowtape_roll_interval": repr(roll_interval),
            "shadowtape_session_key": session_key,
            "shadowtape_session_gap": repr(session_gap),
            "shadowtape_redact_headers": list(redact_headers),
            "shadowtape_queue_size": queue_size,
            "shadowtape_group": group or "",
        },
        workers,
        on_listening=on_listening,
        on_tick=on_tick,
        on_event=on_event,
    )
    live.clear()
    c = summary.counters
    facts.count(seen=c.seen, written=c.written, dropped=c.dropped(), files=len(summary.files))
    click.echo(
        f"captured {c.written} exchanges into {len(summary.files)} files in {out_dir} "
        f"({_human_bytes(summary.bytes_written)})"
    )
    causes = ", ".join(f"{n} ({cause})" for cause, n in c.drop_causes().items())
    click.echo(
        f"  seen {c.seen} = written {c.written} + dropped {c.dropped()} + pending {c.pending}; "
        f"dropped: {causes}"
    )
    click.echo(f"  skipped: {c.skipped_filter} (filter), {c.skipped_sample} (sampling)")
    click.echo(
        f"  error exchanges: {c.errors}; truncated bodies: {c.truncated_bodies}; "
        f"streamed bodies not kept: {c.streamed_bodies}"
    )
    for failure, times in summary.failures.items():
        click.echo(f"  write failure: {failure} ({times}x)", err=True)
    problems = []
    lost = c.lost_to_writing() + c.pending
    if lost:
        problems.append(
            f"capture lost {lost} of {c.seen} exchanges writing to {out_dir} "
            f"({c.dropped_disk_full} disk full, {c.dropped_write_error} write errors, "
            f"{c.dropped_encode_error} unencodable, {c.pending} never flushed); the files "
            "there are whole: free space or fix the output directory, then capture again"
        )
    if summary.lost_workers:
        problems.append(
            f"{len(summary.lost_workers)} of {summary.workers} capture workers died: "
            + "; ".join(summary.lost_workers)
        )
    if problems:
        raise ShadowtapeError("; ".join(problems))


@click.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the exchanges dataset.",
)
@click.option(
    "--on-error",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="A bad entry fails the run (nothing is left behind) or is skipped and counted. "
    "A file that is not valid HAR/flows always fails.",
)
@with_options(session_options)
def import_files(
    files: tuple[Path, ...],
    out_dir: Path,
    on_error: str,
    session_key: str,
    session_gap: float,
    redact_headers: tuple[str, ...],
    max_body: int,
    key_file: Path | None,
    key_env: str,
    group: str | None,
) -> None:
    """Turn HAR files and mitmproxy flow files into an exchanges dataset.

    Reads HAR 1.2 (from browsers' dev tools or mitmproxy's save.har, `.zhar` too) and
    mitmproxy flow files (`mitmdump -w`), streaming large ones. Credentials are replaced
    by keyed tokens as in `shadowtape capture`; the same files and key always give the same
    output.

    \b
    Example:
      shadowtape import session.har traffic.mitm --out raw/
    """
    from shadowtape.capture.importer import ImportSettings
    from shadowtape.capture.importer import import_files as run_import
    from shadowtape.governance.access import FileAccess
    from shadowtape.keyed import Key
    from shadowtape.sessions import SessionKey

    facts = run_facts()
    for f in files:
        facts.read_file(f)
    facts.wrote_dataset(out_dir)
    key = Key.load(key_file, env=key_env)
    facts.use_key(key.fingerprint, key.source)
    live = LiveLine()
    settings = ImportSettings(
        out_dir=out_dir,
        on_error=on_error,
        max_body=max_body,
        session_key=SessionKey.parse(session_key),
        session_gap=session_gap,
        redact_headers=redact_headers,
        access=FileAccess.private(group),
    )
    summary = run_import(
        files,
        settings,
        key,
        on_progress=lambda s: live.update(f"read {s.entries} entries, {s.counters.seen} kept"),
    )
    live.clear()
    c = summary.counters
    facts.count(written=c.written, entries=summary.entries, files=len(summary.files))
    click.echo(
        f"imported {c.written} exchanges from {summary.inputs} files ({summary.entries} entries) "
        f"into {len(summary.files)} files in {out_dir}"
    )
    click.echo(
        f"  skipped: {c.skipped_invalid} bad entries, {c.skipped_non_http} non-HTTP flows; "
        f"error exchanges: {c.errors}; truncated bodies: {c.truncated_bodies}"
    )
    for problem in summary.problems:
        click.echo(f"  skipped {problem}", err=True)
    if summary.problem_count > len(summary.problems):
        click.echo(f"  ... and {summary.problem_count - len(summary.problems)} more", err=True)


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for machines.")
def inspect(dataset: Path, as_json: bool) -> None:
    """Summarize an exchanges dataset: counts, time span, sessions, hosts, top routes,
    status mix, truncations, and what the capture dropped or skipped.

    \b
    Example:
      shadowtape inspect raw/
      shadowtape inspect raw/ --json | jq .capture_counters
    """
    from shadowtape.capture.inspection import format_report, inspect_dataset

    run_facts().read_dataset(dataset)
    report = inspect_dataset(dataset)
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        click.echo(format_report(report))
