"""`shadowtape diff` and `shadowtape report`: parse, call the stage, print."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shadowtape.cli.audit_hook import run_facts
from shadowtape.cli.progress import LiveLine
from shadowtape.cli.scenario_opts import current_registry
from shadowtape.diff.pipeline import DiffOptions, DiffSummary, default_out, run_diff
from shadowtape.diff.settings import build_options, diff_is_current
from shadowtape.errors import InputError
from shadowtape.latency import DEFAULT_THRESHOLD
from shadowtape.publish import write_file_atomic
from shadowtape.report import html, junit, slo, terminal
from shadowtape.report.aggregate import load_report
from shadowtape.report.gates import METRICS, evaluate, parse_gates
from shadowtape.report.output import report_json

_DIFF_OPTIONS = [
    click.option(
        "--ignore-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="YAML of pinned rules: `ignore:`, `noise:` or `drift:` lists of JSON paths "
        "($.meta.generated_at), `header: NAME` or `{path: ..., route: 'GET /x'}`.",
    ),
    click.option(
        "--routes",
        "routes_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Endpoint templates to group by: an OpenAPI/Swagger file, or a list such as "
        "'GET /users/{id}' (one a line). Unmatched paths get inferred templates.",
    ),
    click.option(
        "--headers",
        metavar="A,B,...",
        help="Headers to compare, replacing the default set "
        "(content-type, cache-control, location, etag, vary, ...).",
    ),
    click.option(
        "--header",
        "extra_headers",
        multiple=True,
        metavar="NAME",
        help="Compare this header as well as the set (repeatable).",
    ),
    click.option(
        "--key-field",
        "key_fields",
        multiple=True,
        metavar="FIELD",
        help="Match array elements by this field (e.g. id) instead of by position (repeatable).",
    ),
    click.option(
        "--min-request-rate",
        type=float,
        help="Drift needs (R-S)/N at least this (default 0.01): R requests differing, "
        "S differing between two staging replays, N requests of the route.",
    ),
    click.option(
        "--min-contrast",
        type=float,
        help="Drift needs (R-S)/(R+S) at least this (default 0.5).",
    ),
    click.option(
        "--max-diffs",
        type=int,
        help="Differences listed per response before the rest is counted in one row (default 200).",
    ),
]


def _diff_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_DIFF_OPTIONS):
        func = option(func)
    return func


def _run_diff(results: Path, out: Path | None, options: DiffOptions) -> DiffSummary:
    line = LiveLine()
    try:
        return run_diff(
            results, out, options, progress=lambda n: line.update(f"diff: {n:,} rows read")
        )
    finally:
        line.clear()


def _diff_line(summary: DiffSummary) -> str:
    t = summary.payload["totals"]
    baseline = summary.comparison["reference"] == "baseline"
    reference = "a baseline answer" if baseline else "recorded response"
    return (
        f"diff ({summary.comparison['label']}): {t['rows']} rows, {t['compared']} requests "
        f"compared on {len(summary.routes)} "
        f"routes; {t['diff_rows']} differences ({t['drift_diffs']} drift, {t['noise_diffs']} "
        f"noise, {t['ignored_diffs']} ignored) on {len(summary.decisions)} paths "
        f"({t['drift_paths']} drift); {t['skipped']} skipped, {t['failed']} failed, "
        f"{t['not_compared']} without {reference}, {t['noise_pairs']} noise pairs "
        f"-> {summary.out}"
    )


@click.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the diff dataset (default RESULTS/_diff, where `report` looks).",
)
@_diff_options
def diff(results: Path, out: Path | None, **opts: Any) -> None:
    """Compare every staging response with the baseline's or the recording; write the
    differences.

    Reads a results dataset (from `shadowtape replay`) and compares each candidate (staging)
    answer with the baseline's answer to the same request when the replay had --baseline,
    else with the recorded response: status, chosen headers and bodies (JSON path by path,
    text line by line, binary by digest). Writes one row per difference to a Parquet
    dataset, each marked drift, noise or ignored. Noise is decided per route and JSON path
    over all requests: a field that also differs between two answers of the reference system
    to one request (two baselines, or replay --noise-sample), or is a timestamp, UUID,
    request id or ETag, is noise.

    \b
    Example:
      shadowtape diff results/ --key-field id --ignore-file noise.yaml
    """
    facts = run_facts()
    facts.read_dataset(results)
    facts.wrote_dataset(out or default_out(results))
    summary = _run_diff(results, out, build_options(**opts))
    t = summary.payload["totals"]
    facts.count(rows=t["rows"], compared=t["compared"], diff_rows=t["diff_rows"])
    click.echo(_diff_line(summary))


@click.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option(
    "--diff",
    "diff_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Diff dataset to report on (default RESULTS/_diff; computed there if missing, older "
    "than the results, or made with other diff options).",
)
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML report here.")  # fmt: skip
@click.option("--junit", "junit_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write JUnit XML here: one test case per route, failing on drift.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON on stdout instead of the table.")  # fmt: skip
@click.option(
    "--fail-on",
    "fail_on",
    multiple=True,
    metavar="RULE",
    help="Exit 1 when a rule trips, for CI gates (repeatable), e.g. 'status_mismatch>0', "
    "'drift_rate>1%', 'latency_regressions>0', 'slo_budget>100%'. Checked for the whole "
    f"run and for each route. Metrics: {', '.join(METRICS)}.",
)
@click.option(
    "--latency-threshold",
    type=float,
    default=DEFAULT_THRESHOLD * 100,
    show_default=True,
    metavar="PERCENT",
    help="With a baseline: a route is a latency regression when its p50 or p95 is, with 95% "
    "confidence over the whole report, slower than the baseline's by more than this.",
)
@click.option(
    "--slo",
    "slo_rules",
    multiple=True,
    metavar="RULE",
    help="An objective for the candidate, reported as error budget consumed (repeatable): "
    "'availability>=99.9%', 'p95<=300ms', 'GET /api/search: p99<=1s'.",
)
@click.option(
    "--slo-file",
    "slo_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML or TOML file with an `slo:` list of such rules (text or {route, availability, "
    "p95, p99} mappings).",
)
@click.option(
    "--notebook",
    "notebook_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Execute the drift-analysis notebook against RESULTS and save it here (.ipynb).",
)
@_diff_options
def report(
    results: Path,
    diff_dir: Path | None,
    html_out: Path | None,
    junit_out: Path | None,
    as_json: bool,
    fail_on: tuple[str, ...],
    latency_threshold: float,
    slo_rules: tuple[str, ...],
    slo_files: tuple[Path, ...],
    notebook_out: Path | None,
    **opts: Any,
) -> None:
    """Summarise a replay: drift per route and path, noise, errors, latency and budgets.

    Says first what was compared: baseline vs candidate (replay --baseline) or recorded vs
    target. Prints a table per route (requests, status mismatches, body and header drift,
    noise, error rate, latency p50/p95/p99 of both sides), every drifting path with an
    example, the routes whose latency regressed against the baseline (recorded latency is
    context only), and the error budget each --slo consumed. Runs `shadowtape diff` first
    when RESULTS has no diff of its current files made with the diff options below, so the
    verdict never depends on a leftover diff. Exit 0 when no --fail-on rule trips, 1 when
    one does, 2 on bad input.

    \b
    Example:
      shadowtape report results/ --html report.html --junit junit.xml \\
          --fail-on 'status_mismatch>0' --fail-on 'latency_regressions>0' \\
          --slo 'availability>=99.9%' --fail-on 'slo_budget>100%'
    """
    from shadowtape.report.scenarios import group_by_scenario

    gates = parse_gates(fail_on)
    if not 0 <= latency_threshold < 1000:
        raise InputError(f"--latency-threshold {latency_threshold:g}: give a percentage such as 20")
    objectives = slo.gather_rules(slo_rules, slo_files)
    options = build_options(**opts)  # a bad --ignore-file fails here, whatever the diff
    if notebook_out is not None:
        from shadowtape.report.notebook import check_notebook_ready

        check_notebook_ready(notebook_out)  # before anything is written
    registry = current_registry()
    facts = run_facts()
    facts.read_dataset(results)
    target = diff_dir or default_out(results)
    if not diff_is_current(results, target, options):
        click.echo(
            f"report: no diff of these results with these options in {target}; running diff",
            err=True,
        )
        facts.wrote_dataset(target)
        click.echo(_diff_line(_run_diff(results, target, options)), err=True)
    facts.read_dataset(target)
    data = load_report(target, latency_threshold=latency_threshold / 100)
    slo.evaluate(objectives, data)
    verdicts = evaluate(gates, data)
    groups = group_by_scenario(data, registry.scenarios.values())
    facts.scenarios = [g.name for g in groups]
    if as_json:
        payload = report_json(data, verdicts, groups)
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        click.echo(terminal.render(data, verdicts, groups), nl=False)
    written = []
    if html_out is not None:
        written.append(str(write_file_atomic(html_out, html.render(data, verdicts, groups))))
    if junit_out is not None:
        written.append(str(write_file_atomic(junit_out, junit.render(data, verdicts, groups))))
    if notebook_out is not None:
        from shadowtape.report.notebook import execute_notebook  # Jupyter loads only if asked

        written.append(str(execute_notebook(results, notebook_out)))
    for path in written:
        facts.wrote_file(path)
    if written:
        click.echo(f"report: wrote {', '.join(written)}", err=True)
    tripped = [v for v in verdicts if v.tripped]
    for v in tripped:
        click.echo(f"shadowtape: gate tripped: {v.describe()}", err=True)
    for g in groups:
        for v in g.tripped:
            click.echo(f"shadowtape: gate tripped in scenario {g.name}: {v.describe()}", err=True)
            tripped.append(v)
    facts.count(routes=len(data.routes), gates_tripped=len(tripped))
    if tripped:
        sys.exit(1)
