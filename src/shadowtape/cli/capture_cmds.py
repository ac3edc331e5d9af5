"""`shadowtape capture`, `import` and `inspect`: parse, call the capture stage, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from shadowtape.bodies import DEFAULT_MAX_BODY
from shadowtape.capture.dumpcap_ring import (
    DEFAULT_BACKLOG_BYTES,
    DEFAULT_BUFFER_MIB,
    DEFAULT_FILE_BYTES,
    DEFAULT_FILE_SECONDS,
    DEFAULT_NICE,
)
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


packet_options = [
    click.option(
        "--port",
        "ports",
        type=click.IntRange(1, 65535),
        multiple=True,
        metavar="N",
        help="TCP port of the HTTP service in the packets (repeatable). Off path: what to "
        "capture. Import: where HTTP/1.1 is on a port tshark does not guess, and for h2c.",
    ),
    click.option(
        "--tls-keylog",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="TLS key log (the SSLKEYLOGFILE format browsers, curl and most TLS libraries "
        "write) to decrypt HTTPS in the packets.",
    ),
]


@click.command()
@click.option(
    "--upstream",
    metavar="URL",
    help="In path: the service to put the proxy in front of.",
)
@click.option(
    "--interface",
    metavar="IFACE",
    help="Off path: record from packets on this interface (dumpcap + tshark), no proxy; "
    "needs --port.",
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
    help="In path: serve --listen from N proxy processes (auto: one per core), one capture "
    "id and one dataset; sessions keep one seq order across them [default: 1]. Off path: "
    "packet files dissected at once, one tshark each [default: one per core].",
)
@with_options(packet_options)
@click.option(
    "--ring-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Off path: where dumpcap's ring of packet files goes (a private directory is made "
    "in it and removed at the end) [default: the system temp directory].",
)
@click.option(
    "--ring-file-size",
    type=click.IntRange(min=1_000_000),
    default=DEFAULT_FILE_BYTES,
    show_default=True,
    metavar="BYTES",
    help="Off path: start a new packet file after this many bytes.",
)
@click.option(
    "--ring-file-seconds",
    type=click.IntRange(min=1),
    default=DEFAULT_FILE_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="Off path: start a new packet file after this long; exchanges land in the dataset "
    "about this much later.",
)
@click.option(
    "--buffer-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BUFFER_MIB,
    show_default=True,
    metavar="MIB",
    help="Off path: kernel capture buffer; what absorbs a burst before packets are dropped.",
)
@click.option(
    "--backlog-size",
    type=click.IntRange(min=1_000_000),
    default=DEFAULT_BACKLOG_BYTES,
    show_default=True,
    metavar="BYTES",
    help="Off path: packet files waiting to be dissected may take this much disk; beyond it "
    "the oldest is given up and counted.",
)
@click.option(
    "--nice",
    type=click.IntRange(0, 19),
    default=DEFAULT_NICE,
    show_default=True,
    help="Off path: dissection runs at this nice level, so the service keeps the CPU.",
)
@with_options(session_options)
@click.pass_context
def capture(
    ctx: click.Context,
    upstream: str | None,
    interface: str | None,
    listen: str,
    out_dir: Path,
    filter_host: str,
    filter_path: str,
    sample: float,
    seed: int,
    roll_size: int,
    roll_interval: float,
    queue_size: int,
    ports: tuple[int, ...],
    tls_keylog: Path | None,
    ring_dir: Path | None,
    ring_file_size: int,
    ring_file_seconds: int,
    buffer_size: int,
    backlog_size: int,
    nice: int,
    session_key: str,
    session_gap: float,
    redact_headers: tuple[str, ...],
    max_body: int,
    key_file: Path | None,
    key_env: str,
    group: str | None,
    workers_text: str | None,
) -> None:
    """Record the traffic to a service: in path through a reverse proxy (mitmproxy,
    in-process), or off path from the packets on an interface.

    In path (--upstream): clients talk to the proxy as if it were the service. Off path
    (--interface, --port): dumpcap captures the service's packets and tshark dissects them,
    so nothing stands between clients and the service; HTTPS needs --tls-keylog. Either way
    every exchange is written to Parquet files in --out, with credentials (Authorization,
    cookies, API keys) replaced by keyed tokens before they touch the disk. Stop with Ctrl-C
    or SIGTERM: what was captured is written out, the open file finalized, a summary printed.

    \b
    Example:
      export SHADOWTAPE_KEY=$(openssl rand -hex 32)
      shadowtape capture --upstream http://127.0.0.1:8000 --listen 127.0.0.1:8080 --out raw/
      # one proxy process per core, on the same address:
      shadowtape capture --upstream http://127.0.0.1:8000 --out raw/ --workers auto
      # off path, from the packets on an interface (dumpcap needs the right to capture):
      sudo -E shadowtape capture --interface eth0 --port 8000 --out raw/
      # the same recorder inside your own mitmproxy:
      mitmdump -s <shadowtape>/capture/addon.py --set shadowtape_out=raw/
    """
    if (upstream is None) == (interface is None):
        raise click.UsageError(
            "give --upstream URL (in path, through a proxy) or --interface IFACE --port N "
            "(off path, from packets)"
        )
    if interface is not None:
        _refuse_options(ctx, ("listen", "queue_size"), "--interface")
        from shadowtape.capture.config import build_config
        from shadowtape.capture.offpath import OffPathSettings

        key = _audited_capture(f"interface {interface}", out_dir, key_file, key_env)
        config = build_config(
            out_dir=out_dir,
            key_file=key_file,
            filter_host=filter_host,
            filter_path=filter_path,
            sample=sample,
            seed=seed,
            max_body=max_body,
            roll_bytes=roll_size,
            roll_seconds=roll_interval,
            session_key=session_key,
            session_gap=session_gap,
            redact_headers=redact_headers,
            group=group,
        )
        offpath = OffPathSettings(
            interface=interface,
            ports=ports,
            config=config,
            ring_dir=ring_dir,
            ring_file_bytes=ring_file_size,
            ring_file_seconds=ring_file_seconds,
            buffer_mib=buffer_size,
            workers=parse_workers(workers_text) if workers_text is not None else 0,
            nice=nice,
            backlog_bytes=backlog_size,
            tls_keylog=tls_keylog,
        )
        _capture_offpath(offpath, key)
        return
    _refuse_options(ctx, _OFF_PATH_OPTIONS, "--upstream")
    assert upstream is not None
    from shadowtape.capture.proxy import ProxySettings, parse_upstream
    from shadowtape.capture.workers import run_capture_workers
    from shadowtape.targets import parse_listen

    workers = parse_workers(workers_text)
    host, port = parse_listen(listen)
    upstream_url = parse_upstream(upstream)
    _audited_capture(upstream_url, out_dir, key_file, key_env)
    facts = run_facts()
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
    click.echo(_accounting_line(c))
    click.echo(f"  skipped: {c.skipped_filter} (filter), {c.skipped_sample} (sampling)")
    click.echo(
        f"  error exchanges: {c.errors}; truncated bodies: {c.truncated_bodies}; "
        f"streamed bodies not kept: {c.streamed_bodies}"
    )
    for failure, times in summary.failures.items():
        click.echo(f"  write failure: {failure} ({times}x)", err=True)
    problems = _lost_to_writing(c, out_dir)
    if summary.lost_workers:
        problems.append(
            f"{len(summary.lost_workers)} of {summary.workers} capture workers died: "
            + "; ".join(summary.lost_workers)
        )
    if problems:
        raise ShadowtapeError("; ".join(problems))


def _lost_to_writing(c, out_dir: Path) -> list[str]:  # noqa: ANN001 (CaptureCounters)
    """The line for exchanges a capture saw and could not write (empty: none lost)."""
    lost = c.lost_to_writing() + c.pending
    if not lost:
        return []
    return [
        f"capture lost {lost} of {c.seen} exchanges writing to {out_dir} "
        f"({c.dropped_disk_full} disk full, {c.dropped_write_error} write errors, "
        f"{c.dropped_encode_error} unencodable, {c.pending} never flushed); the files "
        "there are whole: free space or fix the output directory, then capture again"
    ]


# Options only off-path capture reads: given with --upstream, they are a mistake to point out.
_OFF_PATH_OPTIONS = (
    "ports",
    "tls_keylog",
    "ring_dir",
    "ring_file_size",
    "ring_file_seconds",
    "buffer_size",
    "backlog_size",
    "nice",
)


def _audited_capture(target: str, out_dir: Path, key_file: Path | None, key_env: str):  # noqa: ANN202 (Key, imported lazily)
    """Load the key and tell the audit record what this capture records, and where."""
    from shadowtape.keyed import Key

    facts = run_facts()
    facts.target = target
    facts.wrote_dataset(out_dir)
    key = Key.load(key_file, env=key_env)
    facts.use_key(key.fingerprint, key.source)
    return key


def _accounting_line(c) -> str:  # noqa: ANN001 (CaptureCounters)
    """written + dropped (by cause) + pending = seen, as every capture summary says it."""
    causes = ", ".join(f"{n} ({cause})" for cause, n in c.drop_causes().items())
    return (
        f"  seen {c.seen} = written {c.written} + dropped {c.dropped()} + pending {c.pending}; "
        f"dropped: {causes}"
    )


def _refuse_options(ctx: click.Context, names: tuple[str, ...], mode: str) -> None:
    """A usage error for any of `names` given explicitly (not by default or config)."""
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name in names else None
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            raise click.UsageError(f"{param.opts[0]} does not apply with {mode}")


def _capture_offpath(settings, key) -> None:  # noqa: ANN001 (imported lazily)
    from shadowtape.capture.offpath import run_offpath

    interface, out_dir = settings.interface, settings.config.out_dir
    live = LiveLine()
    filter_text = " or ".join(f"tcp port {p}" for p in settings.ports)

    def on_started(ring: Path) -> None:
        click.echo(f"capturing on {interface} ({filter_text}) -> {out_dir}; packets in {ring}")
        sys.stdout.flush()

    def on_tick(s: dict[str, int]) -> None:
        live.update(
            f"written {s['written']} of {s['seen']}  backlog {s['backlog']} files  "
            f"dropped {s['dropped']}  "
            f"bytes {_human_bytes(s['bytes'])}  files {s['files']}"
        )

    summary = run_offpath(settings, key, on_started=on_started, on_tick=on_tick)
    live.clear()
    c, p = summary.counters, summary.packets
    run_facts().count(seen=c.seen, written=c.written, dropped=c.dropped(), files=len(summary.files))
    click.echo(
        f"captured {c.written} exchanges into {len(summary.files)} files in {out_dir} "
        f"({_human_bytes(summary.bytes_written)}) from {p.inputs} packet files"
    )
    _packet_lines(c, p)
    problems = _lost_to_writing(c, out_dir)
    if summary.failure:
        problems.insert(0, summary.failure)
    if problems:
        raise ShadowtapeError("; ".join(problems))


def _packet_lines(c, p) -> None:  # noqa: ANN001 (capture and packet counters)
    click.echo(
        f"  packets: {p.packets}; dropped by the kernel {p.packets_dropped_kernel}, "
        f"by the interface {p.packets_dropped_interface}, by dumpcap {p.packets_dropped_capture}"
    )
    click.echo(
        f"  requests: {p.requests}; without a response {p.requests_without_response}; "
        f"responses without a request {p.responses_without_request}; "
        f"rejoined across packet files {p.exchanges_rejoined}"
    )
    click.echo(
        f"  unreadable: {p.streams_unreassembled} TCP streams, {p.messages_cut} cut messages, "
        f"{p.h2_headers_undecodable} HTTP/2 header blocks; packet files given up "
        f"{p.ring_files_dropped}"
    )
    click.echo(_accounting_line(c))
    click.echo(
        f"  skipped: {c.skipped_filter} (filter), {c.skipped_sample} (sampling); "
        f"error exchanges: {c.errors}; truncated bodies: {c.truncated_bodies}"
    )


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
    "A file that is not valid HAR/flows/pcap always fails; a pcap cut short is read up to "
    "the cut with skip.",
)
@with_options(packet_options)
@click.option(
    "--workers",
    "workers_text",
    metavar="N|auto",
    help="Packet captures: files dissected at once, one tshark each [default: one per core].",
)
@with_options(session_options)
def import_files(
    files: tuple[Path, ...],
    out_dir: Path,
    on_error: str,
    ports: tuple[int, ...],
    tls_keylog: Path | None,
    workers_text: str | None,
    session_key: str,
    session_gap: float,
    redact_headers: tuple[str, ...],
    max_body: int,
    key_file: Path | None,
    key_env: str,
    group: str | None,
) -> None:
    """Turn HAR files, mitmproxy flow files or packet captures into an exchanges dataset.

    Reads HAR 1.2 (from browsers' dev tools or mitmproxy's save.har, `.zhar` too),
    mitmproxy flow files (`mitmdump -w`), and pcap/pcapng files (`tcpdump -w`, dumpcap,
    Wireshark; dissected by tshark: HTTP/1.1, h2c, and HTTPS with --tls-keylog), streaming
    large ones. Packet files given together are one capture in time order (a `tcpdump -C`
    series): exchanges cut between two files are put back together. Credentials are
    replaced by keyed tokens as in `shadowtape capture`; the same files and key always give
    the same output.

    \b
    Example:
      shadowtape import session.har traffic.mitm --out raw/
      shadowtape import gateway.pcapng --port 8080 --tls-keylog keys.log --out raw/
    """
    from shadowtape.capture.packets import packet_files
    from shadowtape.governance.access import FileAccess
    from shadowtape.keyed import Key
    from shadowtape.sessions import SessionKey

    facts = run_facts()
    for f in files:
        facts.read_file(f)
    facts.wrote_dataset(out_dir)
    key = Key.load(key_file, env=key_env)
    facts.use_key(key.fingerprint, key.source)
    if packet_files(files):
        from shadowtape.capture.packets import PacketImportSettings
        from shadowtape.capture.tshark import DissectOptions

        packet_settings = PacketImportSettings(
            out_dir=out_dir,
            options=DissectOptions(ports=ports, tls_keylog=tls_keylog),
            on_error=on_error,
            max_body=max_body,
            session_key=SessionKey.parse(session_key),
            session_gap=session_gap,
            redact_headers=redact_headers,
            workers=parse_workers(workers_text) if workers_text is not None else 0,
            access=FileAccess.private(group),
        )
        _import_packets(files, packet_settings, key)
        return
    if ports or tls_keylog is not None or workers_text is not None:
        raise click.UsageError("--port, --tls-keylog and --workers apply to packet captures only")
    from shadowtape.capture.importer import ImportSettings
    from shadowtape.capture.importer import import_files as run_import

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


def _import_packets(files: tuple[Path, ...], settings, key) -> None:  # noqa: ANN001
    from shadowtape.capture.packets import import_packets

    out_dir = settings.out_dir
    live = LiveLine()
    summary = import_packets(
        files,
        settings,
        key,
        on_progress=lambda s: live.update(
            f"read {s.packets.inputs}/{s.inputs} files, {s.counters.seen} exchanges"
        ),
    )
    live.clear()
    c, p = summary.counters, summary.packets
    run_facts().count(written=c.written, files=len(summary.files))
    click.echo(
        f"imported {c.written} exchanges from {summary.inputs} packet files "
        f"into {len(summary.files)} files in {out_dir}"
    )
    _packet_lines(c, p)
    for path in summary.truncated:
        click.echo(f"  {path}: cut short in the middle of a packet; read up to the cut", err=True)


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
