"""`shadowtape serve`: parse, run the double, print what it did."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from shadowtape.cli.audit_hook import run_facts
from shadowtape.cli.progress import LiveLine
from shadowtape.keyed import DEFAULT_KEY_ENV
from shadowtape.serve.config import ON_MISS, ServeConfig
from shadowtape.serve.faults import LATENCY_MODES
from shadowtape.serve.selection import EXHAUSTED_POLICIES
from shadowtape.serve.stats import counts_text
from shadowtape.telemetry import summary_line

_CFG = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
# Misses printed one by one before the rest are only counted (all are in --served).
MISS_LINES = 20


def _rate(name: str) -> click.Option:
    return click.option(
        f"--{name}-rate",
        f"{name}_rate",
        type=click.FloatRange(0.0, 1.0),
        default=_CFG[f"{name}_rate"],
        show_default=True,
        metavar="SHARE",
        help={
            "error": "Share of requests answered with --error-status instead (seeded).",
            "timeout": "Share of requests held unanswered until the client gives up (seeded).",
            "reset": "Share of requests whose connection is reset (seeded).",
        }[name],
    )


@click.command(
    epilog="""\b
Examples:
  shadowtape serve clean-payments/ --listen 127.0.0.1:8900 --session-key header:X-Session-Id
  shadowtape serve clean/ --listen :0 --latency distribution --error-rate 0.05 --seed 7
  shadowtape serve clean/ --on-miss fallback --fallback http://payments.staging:8000 \\
      --record grown/ --served served/ --matchers matchers.yaml"""
)
@click.argument("source", metavar="DATASET", type=click.Path(exists=True))
@click.option(
    "--listen",
    default=f"127.0.0.1:{_CFG['port']}",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the double listens; port 0 picks a free one.",
)
@click.option(
    "--allow-unsanitized",
    is_flag=True,
    help="Serve a dataset that `shadowtape sanitize` has not scrubbed.",
)
@click.option(
    "--matchers",
    type=click.Path(dir_okay=False),
    help="Matcher file (YAML/JSON): chosen headers, exact/regex/json_subset/ignore rules and "
    "fault rates per route. Without one: method and route select, path, query and body rank.",
)
@click.option(
    "--routes",
    type=click.Path(dir_okay=False),
    help="Route templates or an OpenAPI file, as for `shadowtape diff`.",
)
@click.option(
    "--session-key",
    default=_CFG["session_key"],
    show_default=True,
    metavar="KEY",
    help="What names a session, as for capture (auto, cookie:NAME, header:NAME): a request "
    "carrying a recorded session's key is answered from that session, in order.",
)
@click.option(
    "--exhausted",
    type=click.Choice(EXHAUSTED_POLICIES),
    default=_CFG["exhausted"],
    show_default=True,
    help="When the recorded answers for a request are used up: give the last again, start "
    "over, or miss.",
)
@click.option(
    "--latency",
    type=click.Choice(LATENCY_MODES),
    default=_CFG["latency"],
    show_default=True,
    help="recorded: each answer after its own recorded latency; distribution: a seeded "
    "sample of the route's latencies; none: at once.",
)
@click.option(
    "--latency-scale",
    type=click.FloatRange(min=0.0),
    default=_CFG["latency_scale"],
    show_default=True,
    metavar="X",
    help="Multiply every latency by X.",
)
@_rate("error")
@_rate("timeout")
@_rate("reset")
@click.option(
    "--error-status",
    type=click.IntRange(400, 599),
    default=_CFG["error_status"],
    show_default=True,
    help="Status of an injected error.",
)
@click.option(
    "--hold",
    "hold_s",
    type=click.FloatRange(min=0.001),
    default=_CFG["hold_s"],
    show_default=True,
    metavar="SECONDS",
    help="Longest a timeout holds a connection before the double closes it.",
)
@click.option(
    "--seed",
    type=int,
    default=_CFG["seed"],
    show_default=True,
    help="Seed of injected faults and sampled latencies: the Nth request to a route gets "
    "the same in every run.",
)
@click.option(
    "--on-miss",
    type=click.Choice(ON_MISS),
    help="A request no recording answers: 404, 502, or forwarded to --fallback "
    "[default: fallback with --fallback, else 404].",
)
@click.option("--fallback", metavar="URL", help="The real service, for --on-miss fallback.")
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="PATTERN",
    help="Hosts --fallback may name (glob; repeatable). Replaces the default: loopback and "
    "names containing staging, test or dev.",
)
@click.option(
    "--record",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Record what --fallback answers as an exchanges dataset (credentials tokenized, "
    "unsanitized: run `shadowtape sanitize` before serving it).",
)
@click.option(
    "--served",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Write a served-requests dataset: each request, the exchange that answered it, "
    "its score, fault and latency.",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=0),
    default=_CFG["max_body"],
    show_default=True,
    metavar="BYTES",
    help="Bytes of each request body kept in --served.",
)
@click.option("--certfile", type=click.Path(dir_okay=False), help="TLS certificate (PEM).")
@click.option("--keyfile", type=click.Path(dir_okay=False), help="TLS private key (PEM).")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    help="HMAC key for credential tokens in --record and --served (default: --key-env; "
    "without either, --served uses a key that lives for this run only).",
)
@click.option("--key-env", default=DEFAULT_KEY_ENV, show_default=True, metavar="NAME")
@click.option(
    "--redact-header",
    "redact_headers",
    multiple=True,
    metavar="NAME",
    help="Another header whose value is a credential (repeatable).",
)
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=0.0),
    default=_CFG["grace_s"],
    show_default=True,
    metavar="SECONDS",
    help="On Ctrl-C or SIGTERM, how long requests in flight get to be answered.",
)
@click.option(
    "--otlp-endpoint",
    metavar="URL",
    help="Export one server span per answered request (a child of the caller's traceparent) "
    "and latency and error metrics over OTLP/HTTP to this base URL [default: "
    "$OTEL_EXPORTER_OTLP_ENDPOINT; off when unset]. Needs shadowtape[otel].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the exit summary as JSON.")
def serve(
    source: str,
    listen: str,
    allow_hosts: tuple[str, ...],
    as_json: bool,
    **options: object,
) -> None:
    """Stand in for a dependency: answer requests from its recorded exchanges.

    Each request is matched to a recorded exchange (method and route template, then the
    closest by path, query, chosen headers and JSON body) and answered with its recorded
    status, headers and body after its recorded latency; recorded resets and timeouts are
    reproduced, and seeded faults can be injected on top. A request carrying a recorded
    session's key gets that session's answers in order, so create-then-read flows behave.
    Misses get 404 (or 502), or go to the real service and can be recorded. GET
    /__shadowtape/health and /__shadowtape/stats answer JSON. Ctrl-C or SIGTERM stops it
    and prints what it did.
    """
    from shadowtape.serve.server import run_serve
    from shadowtape.targets import is_loopback, parse_listen

    host, port = parse_listen(listen)
    facts = run_facts()
    facts.read_dataset(source)
    config = ServeConfig(
        source=source,
        host=host,
        port=port,
        allow_hosts=tuple(p.strip() for v in allow_hosts for p in v.split(",") if p.strip())
        or _CFG["allow_hosts"],
        **options,  # type: ignore[arg-type]
    )
    if config.matchers:
        facts.read_file(config.matchers)
    for written in (config.served, config.record):
        if written:
            facts.wrote_dataset(written)
    live = LiveLine()
    misses = [0]

    def on_ready(double) -> None:  # noqa: ANN001 (the Double; imported lazily)
        facts.target = double.url
        if config.record or config.served:
            facts.use_key(double.keyed.key.fingerprint, double.keyed.key.source)
        s = double.recording.stats
        click.echo(
            f"listening on {double.url} ({s.exchanges} exchanges on {s.routes} routes from "
            f"{source}; {s.sessions_with_key} sessions by --session-key {config.session_key})"
        )
        extras = {
            "recorded failures (reproduced)": s.recorded_failures,
            "truncated bodies (served as stored)": s.truncated_bodies,
            "headers that cannot be sent (left out)": s.dropped_headers,
            "exchanges without timings (served after their route's median)": s.without_timings,
        }
        for label, n in extras.items():
            if n:
                click.echo(f"  {label}: {n}")
        for warning in double.warnings:
            click.echo(f"  warning: {warning}", err=True)
        if not is_loopback(host):
            click.echo(
                f"  warning: {host} is not a loopback address: anyone who can reach it can read "
                "the recording through the double",
                err=True,
            )
        sys.stdout.flush()

    def on_miss(line: str) -> None:
        misses[0] += 1
        if misses[0] <= MISS_LINES:
            live.clear()
            click.echo(line, err=True)
        elif misses[0] == MISS_LINES + 1:
            click.echo(
                "  (further misses are counted, not printed; --served has them all)", err=True
            )

    summary = run_serve(
        config,
        on_ready,
        on_tick=lambda c: live.update(c.line()),
        on_miss=on_miss,
        on_stopping=live.clear,
    )
    c = summary.counters
    facts.count(
        requests=c.requests,
        matched=c.matched,
        missed=c.missed_total,
        faults=c.faults_total,
        forwarded=c.fallback_forwarded,
        recorded=summary.recorded_written,
        served_rows=c.served_rows_written,
    )
    if as_json:
        click.echo(json.dumps(summary.as_json(), sort_keys=True))
        return
    click.echo(f"serve stopped after {summary.elapsed_s:.1f} s: {c.line()}")
    if c.missed:
        click.echo(f"  misses by reason: {counts_text(c.missed)}")
    if c.exhausted:
        click.echo(f"  answers reused after the recording ran out: {counts_text(c.exhausted)}")
    extras = {
        "sessions not in the recording (answered by route)": c.unknown_sessions,
        "clients gone before their answer": c.client_gone,
        "bad requests (400)": c.bad_requests,
        "fallback failures (502)": c.fallback_failed,
    }
    for label, n in extras.items():
        if n:
            click.echo(f"  {label}: {n}")
    if config.served:
        click.echo(
            f"  served log: {c.served_rows_written} rows -> {config.served} "
            f"({len(summary.served_files)} files), {c.served_rows_dropped} dropped, "
            f"{summary.served_write_errors} not written"
        )
    if config.record:
        click.echo(
            f"  recorded from the fallback: {summary.recorded_written} exchanges -> "
            f"{config.record}, {c.recorded_rows_dropped} dropped, "
            f"{summary.recorded_write_errors} not written (unsanitized: sanitize before serving)"
        )
    if summary.telemetry:
        click.echo(f"  {summary_line(summary.telemetry)}")
    for warning in summary.warnings:
        click.echo(f"  warning: {warning}", err=True)
    if summary.served_write_errors or summary.recorded_write_errors:
        raise SystemExit(1)
