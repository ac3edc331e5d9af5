"""`shadowtape replay` and `shadowtape correlate`: parse, call one replay function, print."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import click

from shadowtape.cli.audit_hook import run_facts
from shadowtape.cli.progress import LiveLine
from shadowtape.cli.scenario_opts import current_registry
from shadowtape.cli.worker_opts import parse_workers
from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.replay import ReplayConfig, ReplayPlan, ReplaySummary, plan_replay
from shadowtape.replay.config import (
    BreakerPolicy,
    RetryPolicy,
    Timeouts,
    parse_header,
    parse_rewrite,
    parse_shard,
    parse_timing,
)
from shadowtape.replay.correlate import correlate_dataset
from shadowtape.replay.engine import ENGINES
from shadowtape.replay.runner import Progress
from shadowtape.replay.workers import STATUS_WORKER_LOST, run_replay_workers
from shadowtape.telemetry import summary_line

# Defaults come from the config dataclasses: one source of truth for the CLI and for callers.
_CFG = {f.name: f.default for f in dataclasses.fields(ReplayConfig)}
_TIMEOUTS, _RETRY, _BREAKER = Timeouts(), RetryPolicy(), BreakerPolicy()


def _ms(us: int) -> str:
    return f"{us / 1000:.1f} ms"


def _counter(values: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) or "none"


def _progress_printer(line: LiveLine) -> Any:
    def show(p: Progress) -> None:
        line.update(
            f"replay {p.done}/{p.total} rows  sent {p.sent}  in flight {p.in_flight}  "
            f"errors {p.errors}  {p.rate:,.0f} req/s  lateness p99 {_ms(p.lateness_p99_us)}"
        )

    return show


def _lateness_label(summary: ReplaySummary) -> str:
    # With no schedule (--speed max) lateness is the wait for a free connection.
    timing = summary.config.get("timing") or {}
    return "wait for a connection" if timing.get("mode") == "max" else "lateness"


def _print_summary(summary: ReplaySummary, out: str) -> None:
    c = summary.counts
    files = len(summary.files)
    click.echo(
        f"replay {summary.status}: {c.rows} results rows -> {out} "
        f"({files} file{'s' if files != 1 else ''})"
        + (f"; {summary.reason}" if summary.reason else "")
    )
    click.echo(
        f"  sent {c.sent} ({_counter(dict(c.status_classes))}), failed {c.failed}, "
        f"skipped {sum(c.skipped.values())} ({_counter(dict(c.skipped))})"
    )
    click.echo(
        f"  retries {c.retries}, sessions {c.sessions}, {_lateness_label(summary)} p50 "
        f"{_ms(summary.lateness_p50_us)} p99 {_ms(summary.lateness_p99_us)} "
        f"max {_ms(summary.lateness_max_us)}, elapsed {summary.elapsed_s:.1f} s"
    )
    if summary.correlation_rules or c.substitutions or c.misses:
        click.echo(
            f"  correlation: {summary.correlation_rules} rules, "
            f"{sum(c.substitutions.values())} substitutions, {sum(c.misses.values())} misses"
            + (f" ({_counter(dict(c.misses))})" if c.misses else "")
            + (
                f", {c.sessions_skipped_on_miss} sessions stopped on a miss"
                if c.sessions_skipped_on_miss
                else ""
            )
        )
    extras = {
        "not sendable (failed rows; staging_error says why)": c.unsendable,
        "out of session order": c.out_of_order,
        "released early from the reorder buffer": c.reorder_forced,
        "staging bodies truncated at --max-body": c.staging_body_truncated,
        "staging bodies undecodable": c.undecodable_bodies,
        "rows not written (second Ctrl-C or a lost worker)": c.rows_not_written,
    }
    for label, n in extras.items():
        if n:
            click.echo(f"  {label}: {n}")
    for side in sorted(c.baseline_sent.keys() | c.baseline_failed.keys()):
        classes = {
            k.partition(" ")[2]: v
            for k, v in c.baseline_status_classes.items()
            if k.partition(" ")[0] == side
        }
        click.echo(
            f"  {side}: sent {c.baseline_sent[side]} ({_counter(classes)}), failed "
            f"{c.baseline_failed[side]}, retries {c.baseline_retries[side]}, "
            f"{c.baseline_substitutions[side]} substitutions, {c.baseline_misses[side]} misses"
        )
    if summary.config.get("baseline_2"):
        click.echo(
            f"  noise: the second baseline answered {c.noise_sent} requests in replay_pass 2 "
            f"rows, failed {c.noise_failed}"
        )
    elif c.noise_sent or c.noise_failed or c.noise_not_sent:
        click.echo(
            f"  noise sample: {c.noise_sent} sent a second time, {c.noise_failed} failed, "
            f"{c.noise_not_sent} not sent (first send skipped or unanswered)"
        )
    if summary.telemetry:
        click.echo(f"  {summary_line(summary.telemetry)}")


def _print_plan(plan: ReplayPlan, scenario: bool = False) -> None:
    click.echo(
        f"plan: {plan.sessions} sessions, {plan.requests} requests, {plan.timing} "
        f"(shard {plan.shard}); nothing sent (--dry-run)"
    )
    click.echo(
        f"  send {plan.to_send}, skip {plan.skipped_writes} writes"
        + (" (pass --allow-writes to send them)" if plan.skipped_writes else "")
        + f", {plan.skipped_limit} over --limit, {plan.not_sampled} not sampled"
        + (" or outside the scenario" if scenario else "")
    )
    if len(plan.sides) > 1:
        click.echo(f"  every request goes to {len(plan.sides)} sides: {', '.join(plan.sides)}")
    duration = "depends on the target" if plan.duration_s is None else f"{plan.duration_s:.1f} s"
    click.echo(f"  dispatch takes {duration}; {plan.correlation_rules} correlation rules")


def _split_hosts(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


@click.command(
    epilog="""\b
Examples:
  shadowtape replay clean/ --target http://127.0.0.1:8000 --out results/ --speed 5
  shadowtape replay clean/ --target http://staging.local --out results/ --speed max \\
      --concurrency 64 --allow-writes --noise-sample 50
  shadowtape replay clean/ --target http://staging.local --out results/ --speed max \\
      --workers auto
  shadowtape replay clean/ --target http://staging.local --out results/ --dry-run
  shadowtape replay clean/ --target http://candidate.local --baseline http://v1-a.local \
      --baseline-2 http://v1-b.local --out results/ --speed 5 --allow-writes
  shadowtape replay clean/ --target http://staging.local --out /shared/results/ \\
      --speed 10 --engine ray --senders 8 --address ray://head:10001"""
)
@click.argument("source", metavar="IN", type=click.Path(exists=True))
@click.option(
    "--target",
    required=True,
    metavar="URL",
    help="Base URL of the staging system (the candidate, with --baseline).",
)
@click.option(
    "--baseline",
    metavar="URL",
    help="Also send every request to this base URL (the current version), under the same "
    "schedule and with its own correlation state; `diff` then compares baseline vs candidate "
    "and tests latency for regressions.",
)
@click.option(
    "--baseline-2",
    "baseline_2",
    metavar="URL",
    help="A second instance of the baseline: what differs between the two baselines is "
    "noise (its answers are replay_pass 2 rows).",
)
@click.option("--out", required=True, metavar="DIR", help="Results dataset directory.")
@click.option(
    "--speed",
    metavar="X|max",
    help="Recorded inter-arrival times divided by X (1 = real time); `max` = no waiting.",
)
@click.option(
    "--rate",
    type=float,
    metavar="N",
    help="N requests/s overall (split across --shard senders) instead of --speed.",
)
@click.option(
    "--concurrency",
    type=int,
    default=_CFG["concurrency"],
    show_default=True,
    help="Requests in flight at most (and connections), over all --workers.",
)
@click.option("--limit", type=int, help="Send at most N requests; the rest are skipped.")
@click.option("--sessions", type=int, help="Replay a seeded sample of N sessions.")
@click.option(
    "--seed",
    type=int,
    default=_CFG["seed"],
    show_default=True,
    help="Seed for session sampling, retry jitter and the noise sample.",
)
@click.option("--duration", type=float, metavar="SECONDS", help="Stop dispatching after T s.")
@click.option(
    "--max-gap",
    type=float,
    metavar="SECONDS",
    help="Cut idle gaps in the recording to at most T recorded seconds.",
)
@click.option(
    "--http",
    "http_version",
    type=click.Choice(["auto", "1.1", "2"]),
    default=_CFG["http"],
    show_default=True,
    help="auto: HTTP/2 where TLS negotiates it; 2: HTTP/2 prior knowledge.",
)
@click.option(
    "--http1-engine",
    type=click.Choice(list(ENGINES)),
    default=_CFG["http1_engine"],
    show_default=True,
    help="HTTP/1.1 client: httptools (C parser, uvloop where available), h11 (pure Python); "
    "auto = httptools when installed.",
)
@click.option("--keep-host", is_flag=True, help="Send the recorded Host header unchanged.")
@click.option("--insecure", is_flag=True, help="Do not verify the target's TLS certificate.")
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Add or override a request header (repeatable).",
)
@click.option(
    "--rewrite",
    "rewrites",
    multiple=True,
    metavar="FROM=TO",
    help="HOST=URL sends a recorded host elsewhere; /old/=/new/ swaps a path prefix.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="PATTERN",
    help="Allowed target hosts (glob; repeatable). Replaces the default: loopback "
    "and names containing staging, test or dev.",
)
@click.option(
    "--allow-unsanitized",
    is_flag=True,
    help="Replay a dataset that `shadowtape sanitize` has not scrubbed.",
)
@click.option("--allow-writes", is_flag=True, help="Send POST/PUT/PATCH/DELETE too.")
@click.option("--connect-timeout", type=float, default=_TIMEOUTS.connect, show_default=True)
@click.option("--read-timeout", type=float, default=_TIMEOUTS.read, show_default=True)
@click.option(
    "--total-timeout",
    type=float,
    default=_TIMEOUTS.total,
    show_default=True,
    help="Seconds for one attempt, from send to the last body byte.",
)
@click.option(
    "--retries",
    type=int,
    default=_RETRY.attempts - 1,
    show_default=True,
    help="Extra tries for a request that never reached staging (connection refused or "
    "timed out), and for an idempotent one (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) answered "
    "502/503/504 or cut off by a dropped connection. Timeouts after sending are not retried: "
    "a hung staging costs one --read-timeout per request.",
)
@click.option(
    "--breaker-error-rate",
    type=float,
    default=_BREAKER.error_rate,
    show_default=True,
    help="Stop when this share (0 to 1) of recent attempts fail or get 5xx.",
)
@click.option(
    "--breaker-failures",
    type=int,
    default=_BREAKER.connection_failures,
    show_default=True,
    help="Stop after this many connection failures in a row (0: never).",
)
@click.option(
    "--grace",
    type=float,
    default=_CFG["grace"],
    show_default=True,
    help="Seconds Ctrl-C waits for requests in flight.",
)
@click.option(
    "--max-body",
    type=int,
    default=_CFG["max_body"],
    show_default=True,
    help="Bytes of each staging body kept (the rest is cut and counted).",
)
@click.option(
    "--correlate",
    default=_CFG["correlate"],
    show_default=True,
    metavar="auto|off|FILE",
    help="Carry server-minted values (tokens, ids) into later requests.",
)
@click.option(
    "--on-miss",
    type=click.Choice(["send-recorded", "skip-session"]),
    default=_CFG["on_miss"],
    show_default=True,
    help="When staging did not return a value a later request needs.",
)
@click.option(
    "--noise-sample",
    type=int,
    default=_CFG["noise_sample"],
    show_default=True,
    help="Send N sampled GETs a second time, each right after its first send inside its "
    "session (replay_pass 2; for the diff stage's noise detection).",
)
@click.option("--shard", metavar="I/N", help="Replay only sessions of shard I of N.")
@click.option(
    "--start-at",
    type=float,
    metavar="EPOCH_SECONDS",
    help="Shared schedule origin (Unix seconds, at most an hour ahead), so several senders "
    "keep one schedule.",
)
@click.option(
    "--workers",
    metavar="N|auto",
    help="Send from N local processes (auto: one per core), sessions split among them as "
    "--shard splits them; one schedule, one results dataset, one summary [default: 1].",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: send from --senders actors on a Ray cluster (needs shadowtape[ray]).",
)
@click.option(
    "--senders",
    type=int,
    metavar="N",
    help="With --engine ray: sender actors, sessions split among them by id [default: 2].",
)
@click.option(
    "--address",
    metavar="ADDR",
    help="With --engine ray: the cluster (ray://HOST:10001 or HOST:6379) [default: "
    "$RAY_ADDRESS, else a local Ray instance].",
)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    metavar="NAME",
    help="Replay only the sessions of this scenario ([scenarios.NAME] in shadowtape.toml; "
    "repeatable): a session belongs when one of its exchanges matches a route of the "
    "scenario. Its depends-on scenarios come along.",
)
@click.option(
    "--risk",
    metavar="[OP]LEVEL",
    help="Replay the scenarios of this risk, e.g. '>=high' (levels low, medium, high, critical).",
)
@click.option(
    "--confirm-risk",
    metavar="LEVEL",
    help="Confirm replaying scenarios up to this risk; needed at or above [governance] "
    "confirm-risk, and recorded in the audit log with --actor.",
)
@click.option(
    "--otlp-endpoint",
    metavar="URL",
    help="Export one span per request (trace id = the traceparent sent) and latency, error, "
    "retry and breaker metrics over OTLP/HTTP to this base URL [default: "
    "$OTEL_EXPORTER_OTLP_ENDPOINT; off when unset]. Needs shadowtape[otel].",
)
@click.option(
    "--roll-interval",
    type=float,
    default=_CFG["roll_interval"],
    show_default=True,
    metavar="SECONDS",
    help="Finalize a results file this often: if the replay is killed (kill -9, power loss), "
    "the files already finalized are whole and at most this much is lost.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace earlier results in --out (only results files that replay wrote).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; send nothing.")
def replay(source: str, **opts: Any) -> None:
    """Replay recorded sessions against a staging target and record its answers.

    Sessions run concurrently; the requests of one session keep their recorded order and
    each waits for the previous answer. Every recorded request gives one row in the results
    dataset: sent, skipped (with the reason) or failed. With --baseline each request is sent
    to the candidate (--target) and the baseline at once, and the row holds both answers.
    """
    facts = run_facts()
    facts.read_dataset(source)
    facts.target = opts["target"]
    config = _build_config(source, opts)
    senders = _check_engine(opts)
    workers = parse_workers(opts["workers"])
    config = _with_scenarios(config, opts, facts)
    if opts["dry_run"]:
        _print_plan(plan_replay(config), scenario=config.session_filter is not None)
        return
    facts.wrote_dataset(config.out)
    line = LiveLine()

    def on_event(text: str) -> None:
        line.clear()
        click.echo(f"shadowtape: {text}", err=True)

    try:
        if opts["engine"] == "ray":
            from shadowtape.replay.ray_engine import run_replay_ray

            summary = run_replay_ray(
                config, senders, address=opts["address"], progress=_progress_printer(line)
            )
        else:
            summary = run_replay_workers(
                config, workers, progress=_progress_printer(line), on_event=on_event
            )
    finally:
        line.clear()
    c = summary.counts
    facts.count(
        status=summary.status, rows=c.rows, sent=c.sent, failed=c.failed, retries=c.retries,
        skipped=sum(c.skipped.values()), sessions=c.sessions,
    )  # fmt: skip
    if config.baseline is not None:
        # The audit's target is the candidate; the baselines were sent to as well.
        facts.count(baseline_sent=dict(c.baseline_sent), baseline_failed=dict(c.baseline_failed))
    _print_summary(summary, config.out)
    if summary.status == STATUS_WORKER_LOST:
        raise ShadowtapeError(
            f"{summary.reason}; the other workers' results are in {config.out}, marked "
            "incomplete; rerun to get every row"
        )
    if summary.status == "circuit_open":
        where = ", ".join(u for u in (config.target, config.baseline, config.baseline_2) if u)
        raise ShadowtapeError(
            f"circuit breaker opened ({summary.reason}); dispatch stopped, results kept in "
            f"{config.out}; check {where} or loosen --breaker-error-rate"
        )
    if summary.status == "interrupted":
        click.echo(
            f"shadowtape: {summary.reason or 'interrupted'}; the results so far are in "
            f"{config.out}, whole (rows not sent are marked skipped)",
            err=True,
        )
        raise click.exceptions.Exit(summary.exit_code)


def _with_scenarios(config: ReplayConfig, o: dict[str, Any], facts: Any) -> ReplayConfig:
    """Scenario selection and the risk confirmation, before anything is read or sent."""
    from shadowtape.governance import scenarios as sc
    from shadowtape.replay.scan import scenario_sessions

    registry = current_registry()
    selected = sc.select(registry, o["scenarios"], o["risk"])
    sc.check_requirements(selected, o["allow_writes"])
    at_risk = selected
    if not selected and registry.confirm_risk is not None and not o["dry_run"]:
        # A replay of everything sends the risky scenarios' sessions too, if it holds any.
        risky = tuple(
            s
            for s in registry.scenarios.values()
            if sc.risk_rank(s.risk) >= sc.risk_rank(registry.confirm_risk)
        )
        if risky:
            members = scenario_sessions(config.source, sc.SessionFilter(risky))
            at_risk = [s for s in risky if members[s.name]]
    confirmed = (
        sc.check_confirmed(registry, at_risk, o["confirm_risk"])
        if not o["dry_run"]
        else o["confirm_risk"]
    )
    facts.scenarios = [s.name for s in selected]
    facts.risk = max((s.risk for s in at_risk), key=sc.risk_rank, default=None)
    facts.risk_confirmed = confirmed
    return dataclasses.replace(
        config,
        session_filter=sc.SessionFilter(tuple(selected)) if selected else None,
        # Ray senders do not see this process's environment: the base endpoint travels.
        otlp_endpoint=o["otlp_endpoint"]
        or (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") if o["engine"] == "ray" else None),
    )


def _check_engine(o: dict[str, Any]) -> int:
    """The number of Ray senders; --senders and --address mean nothing to the local engine."""
    if o["engine"] != "ray":
        for name in ("senders", "address"):
            if o[name] is not None:
                raise InputError(f"--{name} applies to --engine ray only; add --engine ray")
        return 1
    if o["workers"] is not None:
        raise InputError("--workers applies to --engine local; with Ray, use --senders")
    senders = 2 if o["senders"] is None else o["senders"]
    if senders < 1:
        raise InputError(f"--senders {senders}: use 1 or more")
    return senders


def _build_config(source: str, o: dict[str, Any]) -> ReplayConfig:
    # The numbers are checked by the replay stage itself (config.check_numbers), for every
    # caller, before anything is read or sent.
    shard_index, shard_count = parse_shard(o["shard"])
    return ReplayConfig(
        source=source,
        target=o["target"],
        out=o["out"],
        baseline=o["baseline"],
        baseline_2=o["baseline_2"],
        timing=parse_timing(o["speed"], o["rate"]),
        concurrency=o["concurrency"],
        limit=o["limit"],
        sessions=o["sessions"],
        seed=o["seed"],
        duration=o["duration"],
        max_gap=o["max_gap"],
        http=o["http_version"],
        http1_engine=o["http1_engine"],
        keep_host=o["keep_host"],
        tls_verify=not o["insecure"],
        headers=tuple(parse_header(h) for h in o["headers"]),
        rewrites=tuple(parse_rewrite(r) for r in o["rewrites"]),
        allow_hosts=_split_hosts(o["allow_hosts"]) or _CFG["allow_hosts"],
        allow_unsanitized=o["allow_unsanitized"],
        allow_writes=o["allow_writes"],
        timeouts=Timeouts(o["connect_timeout"], o["read_timeout"], o["total_timeout"]),
        retry=dataclasses.replace(_RETRY, attempts=o["retries"] + 1),
        breaker=dataclasses.replace(
            _BREAKER,
            error_rate=o["breaker_error_rate"],
            connection_failures=o["breaker_failures"],
        ),
        grace=o["grace"],
        max_body=o["max_body"],
        correlate=o["correlate"],
        on_miss=o["on_miss"],
        noise_sample=o["noise_sample"],
        shard_index=shard_index,
        shard_count=shard_count,
        start_at=o["start_at"],
        overwrite=o["overwrite"],
        roll_interval=o["roll_interval"],
    )


@click.command(
    epilog="""\b
Example:
  shadowtape correlate clean/ --out rules.yaml
  shadowtape replay clean/ --target http://127.0.0.1:8000 --out results/ --correlate rules.yaml"""
)
@click.argument("source", metavar="IN", type=click.Path(exists=True))
@click.option("--out", metavar="FILE", help="Write the rules here (YAML); else print only.")
@click.option(
    "--min-support",
    type=int,
    default=2,
    show_default=True,
    help="Sessions that must show a correlation before it becomes a rule.",
)
def correlate(source: str, out: str | None, min_support: int) -> None:
    """Learn which server-minted values (tokens, created ids, ETags) later requests reuse.

    A value first seen in a response and later sent in a request of the same session
    becomes a rule: during replay, staging's value from the same place is sent instead.
    The rules file is plain YAML: read it, edit it, pass it to `replay --correlate FILE`.
    """
    facts = run_facts()
    facts.read_dataset(source)
    if out:
        facts.wrote_file(out)
    rules = correlate_dataset(source, out, min_support=min_support)
    facts.count(rules=len(rules))
    for r in rules:
        click.echo(f"{r.name}: {r.step} {r.source} -> {', '.join(r.targets)} (support {r.support})")
    where = f"; written to {out}" if out else ""
    click.echo(f"{len(rules)} correlation rules from {source}{where}")
