"""`shadowtape demo`: the whole flow on the sample shop, one real command at a time.

Every stage runs as a subprocess of `python -m shadowtape`, exactly as a user would run it, and
the exact command is printed before it runs, so the transcript doubles as a tutorial (the
README's walkthrough is generated from `walkthrough()` below, the same step list). Running the
stages as separate processes is also the point: they must fit together through their datasets
and command lines alone.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from shadowtape.demo.defaults import DEFAULT_REQUESTS, DEFAULT_SEED, DEFAULT_WORKDIR
from shadowtape.demo.processes import Echo, Service, Timeouts, run_step
from shadowtape.demo.traffic import SESSION_HEADER, plan_sessions, send_traffic
from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.extras import notebook_install_hint, notebook_missing

MARKER = ".shadowtape-demo"
REPLAY_SPEED = 5
# The baselines are fresh v1 instances (production's state holds the recorded users already),
# each minting its own ids and tokens: what the two disagree on is noise.
BASELINE_SEEDS = (1, 2)
_SERVING = re.compile(r"serving (?:v\d|payments) on (http://\S+)")
_LISTENING = re.compile(r"listening on (http://\S+)")
# The services a multi-command step starts, in command order: (name shown, Urls field).
DOUBLES = (
    ("payments double (candidate)", "double"),
    ("payments double (baseline)", "double_baseline"),
    ("payments double (baseline 2)", "double_baseline_2"),
)
BASELINES = (("baseline", "baseline"), ("baseline 2", "baseline_2"))


@dataclass(frozen=True, slots=True)
class DemoOptions:
    workdir: Path = DEFAULT_WORKDIR
    requests: int = DEFAULT_REQUESTS
    seed: int = DEFAULT_SEED
    concurrency: int = 8
    keep: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    audit_log: Path | None = None  # default: WORKDIR/audit.jsonl
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class DemoPaths:
    """Where each artifact goes; the outputs are what a re-run replaces."""

    workdir: Path

    @property
    def key(self) -> Path:
        return self.workdir / "demo.key"

    @property
    def audit_log(self) -> Path:
        """Kept across re-runs (it is append-only): every step of every run is in it."""
        return self.workdir / "audit.jsonl"

    @property
    def raw(self) -> Path:
        return self.workdir / "raw"

    @property
    def clean(self) -> Path:
        return self.workdir / "clean"

    @property
    def results(self) -> Path:
        return self.workdir / "results"

    @property
    def raw_payments(self) -> Path:
        return self.workdir / "raw-payments"

    @property
    def clean_payments(self) -> Path:
        return self.workdir / "clean-payments"

    @property
    def served_payments(self) -> Path:
        return self.workdir / "served-payments"

    @property
    def served_payments_baseline(self) -> Path:
        return self.workdir / "served-payments-baseline"

    @property
    def served_payments_baseline_2(self) -> Path:
        return self.workdir / "served-payments-baseline-2"

    @property
    def html(self) -> Path:
        return self.workdir / "report.html"

    @property
    def junit(self) -> Path:
        return self.workdir / "junit.xml"

    @property
    def notebook(self) -> Path:
        return self.workdir / "drift_analysis.ipynb"

    def outputs(self) -> list[Path]:
        return [
            self.raw,
            self.clean,
            self.results,
            self.raw_payments,
            self.clean_payments,
            self.served_payments,
            self.served_payments_baseline,
            self.served_payments_baseline_2,
            self.html,
            self.junit,
            self.notebook,
        ]


@dataclass(frozen=True, slots=True)
class Urls:
    """Service addresses; known only once each is bound, so placeholders until then."""

    v1: str = "http://127.0.0.1:PORT_V1"
    v2: str = "http://127.0.0.1:PORT_V2"
    proxy: str = "http://127.0.0.1:PORT_PROXY"
    baseline: str = "http://127.0.0.1:PORT_BASELINE"
    baseline_2: str = "http://127.0.0.1:PORT_BASELINE_2"
    payments: str = "http://127.0.0.1:PORT_PAYMENTS"
    payments_proxy: str = "http://127.0.0.1:PORT_PAYMENTS_PROXY"
    double: str = "http://127.0.0.1:PORT_DOUBLE"
    double_baseline: str = "http://127.0.0.1:PORT_DOUBLE_BASELINE"
    double_baseline_2: str = "http://127.0.0.1:PORT_DOUBLE_BASELINE_2"


@dataclass(frozen=True, slots=True)
class Step:
    key: str
    title: str
    commands: tuple[tuple[str, ...], ...]  # as a user types them: "shadowtape ..." or "python -m"
    note: str = ""


def steps(
    paths: DemoPaths, urls: Urls, requests: int, seed: int, notebook: bool = True
) -> list[Step]:
    """The demo, step by step; the runner and the README both read this list. Without
    Jupyter installed (`notebook=False`) the report step runs without --notebook and says
    why, so a plain `pip install shadowtape` runs the whole demo."""

    def shop(version: str, payments: str, *extra: str) -> tuple[str, ...]:
        return (
            "python", "-m", "shadowtape.demo.services", "--version", version, "--port", "0",
            "--payments-url", payments, *extra,
        )  # fmt: skip

    def capture(upstream: str, out: Path) -> tuple[str, ...]:
        return (
            "shadowtape", "capture", "--upstream", upstream, "--listen", "127.0.0.1:0",
            "--out", str(out), *key, "--session-key", f"header:{SESSION_HEADER}",
        )  # fmt: skip

    def serve(served: Path) -> tuple[str, ...]:
        return (
            "shadowtape", "serve", str(paths.clean_payments), "--listen", "127.0.0.1:0",
            "--session-key", f"header:{SESSION_HEADER}", "--served", str(served),
        )  # fmt: skip

    key = ("--key-file", str(paths.key))
    return [
        Step(
            "payments",
            "Start the payment provider: a dependency the shop calls over HTTP",
            (("python", "-m", "shadowtape.demo.services", "--app", "payments", "--port", "0"),),
        ),
        Step(
            "capture-payments",
            "Put a capture proxy in front of payments too: it records the shop's outbound calls",
            (capture(urls.payments, paths.raw_payments),),
            "the shop passes its shopper's session header on, so these recordings group into "
            "the same sessions as the shop's",
        ),
        Step(
            "services",
            "Start the sample shop v1 (production), calling payments through that proxy",
            (shop("v1", urls.payments_proxy),),
        ),
        Step(
            "capture",
            "Put the capture proxy in front of production; it records every exchange",
            (capture(urls.v1, paths.raw),),
            "credentials (Authorization, cookies) become keyed tokens before anything is written",
        ),
        Step(
            "traffic",
            "Send seeded shopper sessions through the proxy (login, browse, order, update)",
            (
                (
                    "python",
                    "-m",
                    "shadowtape.demo.traffic",
                    "--base-url",
                    urls.proxy,
                    "--requests",
                    str(requests),
                    "--seed",
                    str(seed),
                ),
            ),  # fmt: skip
        ),
        Step("stop", "Stop both captures (Ctrl-C): they flush and finalize their files", ()),
        Step(
            "sanitize",
            "Scrub personal data with the default policy: keyed, format-preserving pseudonyms",
            (
                ("shadowtape", "sanitize", str(paths.raw), str(paths.clean), *key),
                (
                    "shadowtape",
                    "sanitize",
                    str(paths.raw_payments),
                    str(paths.clean_payments),
                    *key,
                ),
            ),
            "one key for both datasets: a card number gets the same pseudonym in the shop's "
            "recording and the provider's",
        ),
        Step(
            "verify",
            "Re-scan the scrubbed datasets for anything that still looks sensitive",
            (
                ("shadowtape", "verify", str(paths.clean)),
                ("shadowtape", "verify", str(paths.clean_payments)),
            ),
        ),
        Step(
            "doubles",
            "Stand doubles in for payments: `shadowtape serve` answers from the provider's "
            "scrubbed recordings, one double for each system the replay talks to",
            (
                serve(paths.served_payments),
                serve(paths.served_payments_baseline),
                serve(paths.served_payments_baseline_2),
            ),
            "each call is answered from its own session's recording, in order, after the "
            "recorded latency; each system gets its own double, so one system's calls never use "
            "up another's recorded sequence; staging mints its own order ids, so a charge "
            "matches its recording closely rather than exactly, and the score says how closely",
        ),
        Step(
            "staging",
            "Start the shop v2 (staging, with planted drift), calling the double for payments",
            (shop("v2", urls.double),),
        ),
        Step(
            "baselines",
            "Start two fresh v1 instances to compare v2 with: the baseline and a second baseline",
            tuple(
                shop("v1", double, "--seed", str(seed))
                for double, seed in zip(
                    (urls.double_baseline, urls.double_baseline_2), BASELINE_SEEDS, strict=True
                )
            ),
            "production's v1 already holds the recorded users; fresh instances start empty, "
            "like staging",
        ),
        Step(
            "replay",
            f"Replay the sessions at {REPLAY_SPEED}x, writes allowed, to v2 (the candidate) "
            "and to both baselines at once",
            (
                (
                    "shadowtape",
                    "replay",
                    str(paths.clean),
                    "--target",
                    urls.v2,
                    "--baseline",
                    urls.baseline,
                    "--baseline-2",
                    urls.baseline_2,
                    "--out",
                    str(paths.results),
                    "--speed",
                    str(REPLAY_SPEED),
                    "--allow-writes",
                ),
            ),  # fmt: skip
            "each system gets its own session tokens and ids swapped into later requests "
            "(stateful correlation, one state per system)",
        ),
        Step(
            "diff",
            "Compare every candidate answer with the baseline's answer to the same request",
            (("shadowtape", "diff", str(paths.results)),),  # fmt: skip
            "what the two baselines disagree on (timestamps, request ids, nonces, the tokens "
            "and ids each instance mints) is noise, kept apart from drift",
        ),
        Step(
            "report",
            "Report: terminal summary, HTML page, JUnit XML and the executed drift notebook"
            if notebook
            else "Report: terminal summary, HTML page and JUnit XML",
            (
                (
                    "shadowtape",
                    "report",
                    str(paths.results),
                    "--html",
                    str(paths.html),
                    "--junit",
                    str(paths.junit),
                    *(("--notebook", str(paths.notebook)) if notebook else ()),
                ),
            ),  # fmt: skip
            "" if notebook else f"notebook skipped: {notebook_install_hint(notebook_missing())}",
        ),
    ]


def walkthrough(workdir: Path = DEFAULT_WORKDIR) -> list[Step]:
    """The steps with placeholder ports, for documentation."""
    return steps(DemoPaths(workdir), Urls(), DEFAULT_REQUESTS, DEFAULT_SEED)


def display(command: tuple[str, ...]) -> str:
    return shlex.join(command)


# --- running --------------------------------------------------------------------------------


def prepare_workdir(paths: DemoPaths) -> str:
    """Claim the workdir, clear the previous run's outputs, and make or reuse the key.

    A directory is only ever cleared when it carries the demo's marker, so `--workdir ~` cannot
    delete anybody's files. Returns a sentence saying where the key came from.
    """
    workdir = paths.workdir
    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"{workdir}: exists and is not a directory; choose another --workdir")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise InputError(
            f"{workdir}: not empty and not a demo workdir (no {MARKER} in it); "
            "choose a new or empty --workdir"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("files here are replaced by each `shadowtape demo` run\n")
    for out in paths.outputs():
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
    if paths.key.exists():
        return (
            f"key: {paths.key} (made by an earlier run and reused, so pseudonyms match across runs)"
        )
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return (
        f"key: {paths.key} (random, made for this workdir and reused by later runs, so the same "
        "value always gets the same pseudonym; for real data keep the key in a secret store "
        "and pass it as $SHADOWTAPE_KEY)"
    )


@dataclass
class DemoRun:
    options: DemoOptions
    echo: Echo
    paths: DemoPaths = field(init=False)
    urls: Urls = field(default_factory=Urls)
    services: list[Service] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    env: dict[str, str] = field(init=False)
    notebook: bool = field(init=False)

    def __post_init__(self) -> None:
        self.paths = DemoPaths(self.options.workdir)
        self.notebook = not notebook_missing()
        # The demo must not pick up a team's shadowtape.toml (a real staging target, say).
        self.env = {**os.environ, "SHADOWTAPE_NO_CONFIG": "1", "PYTHONUNBUFFERED": "1"}
        # Every stage appends its audit record to one log, so the run reads as one trail.
        self.env["SHADOWTAPE_AUDIT_LOG"] = str(self.options.audit_log or self.paths.audit_log)
        if self.options.actor:
            self.env["SHADOWTAPE_ACTOR"] = self.options.actor

    def step(self, key: str) -> Step:
        all_steps = steps(
            self.paths, self.urls, self.options.requests, self.options.seed, self.notebook
        )
        index = next(i for i, s in enumerate(all_steps) if s.key == key)
        step = all_steps[index]
        self.echo("")
        self.echo(f"[{index + 1}/{len(all_steps)}] {step.title}")
        for command in step.commands:
            self.echo(f"  $ {display(command)}")
        if step.note:
            self.echo(f"  # {step.note}")
        return step

    def child(self, line: str) -> None:
        self.echo(f"    | {line}")

    @staticmethod
    def executable(command: tuple[str, ...]) -> list[str]:
        if command[0] == "shadowtape":
            return [sys.executable, "-m", "shadowtape", *command[1:]]
        if command[0] == "python":
            return [sys.executable, *command[1:]]
        return list(command)

    def run_stage(self, key: str) -> list[str]:
        output: list[str] = []
        for command in self.step(key).commands:
            code, lines = run_step(
                display(command),
                self.executable(command),
                self.env,
                self.child,
                self.options.timeouts.step_s,
            )
            if code != 0:
                raise ShadowtapeError(
                    f"step `{display(command)}` failed with exit {code} (its output is above); "
                    f"the files so far are in {self.paths.workdir}"
                )
            output += lines
        return output

    def start(self, name: str, command: tuple[str, ...], ready: re.Pattern[str]) -> Service:
        service = Service.start(
            name,
            self.executable(command),
            ready,
            self.env,
            self.child,
            self.options.timeouts.ready_s,
        )
        self.services.append(service)
        return service

    def start_step(self, key: str, name: str, ready: re.Pattern[str], url_field: str) -> Service:
        """A step that starts one service, whose URL the later steps' commands then show."""
        (command,) = self.step(key).commands
        service = self.start(name, command, ready)
        self.urls = replace(self.urls, **{url_field: service.url})
        return service

    def start_steps(
        self, key: str, services: tuple[tuple[str, str], ...], ready: re.Pattern[str]
    ) -> list[Service]:
        """A step that starts one service per command; `services` names each and its URL."""
        commands = self.step(key).commands
        started = []
        for command, (name, url_field) in zip(commands, services, strict=True):
            service = self.start(name, command, ready)
            self.urls = replace(self.urls, **{url_field: service.url})
            started.append(service)
        return started

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop(self.options.timeouts.stop_s)
        self.services.clear()


def double_counters(name: str, url: str) -> str:
    """A payments double's counters, from its stats endpoint, as one transcript line."""
    try:
        stats = httpx.get(f"{url}/__shadowtape/stats", trust_env=False, timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ShadowtapeError(f"the {name} at {url} did not answer its stats ({exc})") from None
    routes = ", ".join(
        f"{route} {r['matched']}/{r['requests']} matched, mean score {r['mean_score']}"
        for route, r in stats["routes"].items()
    )
    return (
        f"{name}: {stats['requests']} requests, {stats['matched']} matched "
        f"({stats['matched_by_session']} from their session, {stats['exact_matches']} exact), "
        f"{stats['missed']} missed, {sum(stats['injected_faults'].values())} faults injected"
        + (f"; {routes}" if routes else "")
    )


def run_demo(
    options: DemoOptions,
    echo: Echo,
    wait_forever: Callable[[], None],
    live: Callable[[str | None], None] = lambda _text: None,
) -> DemoRun:
    """Run every step; raises ShadowtapeError naming the step that failed.

    `live` shows a transient status line (None clears it); `wait_forever` blocks until the
    user is done with the services that `--keep` leaves running.
    """
    run = DemoRun(options, echo)
    echo(
        f"shadowtape demo: record, scrub, replay and diff a sample shop on loopback "
        f"({options.requests} requests, seed {options.seed}, files in {run.paths.workdir})"
    )
    echo(prepare_workdir(run.paths))
    try:
        payments = run.start_step("payments", "payments service", _SERVING, "payments")
        payments_proxy = run.start_step(
            "capture-payments", "payments capture proxy", _LISTENING, "payments_proxy"
        )
        v1 = run.start_step("services", "v1 service", _SERVING, "v1")
        capture = run.start_step("capture", "capture proxy", _LISTENING, "proxy")

        # In-process rather than the printed `python -m` (same code): one interpreter fewer
        # to start, and its live count shows on this terminal.
        run.step("traffic")
        plans = plan_sessions(options.seed, options.requests)
        summary = asyncio.run(
            send_traffic(
                capture.url,
                plans,
                options.concurrency,
                progress=lambda s: live(f"    | {s.requests}/{options.requests} sent"),
            )
        )
        live(None)
        run.child(summary.line())
        if summary.failed:
            raise ShadowtapeError(
                f"{summary.failed} of {summary.requests} requests through the capture proxy "
                "failed; production should answer them all (see the counts above)"
            )

        run.step("stop")
        for proxy in (capture, payments_proxy):
            code = proxy.stop(options.timeouts.stop_s)
            run.services.remove(proxy)
            if code != 0:
                raise ShadowtapeError(f"the {proxy.name} exited with {code} when stopped")

        for key in ("sanitize", "verify"):
            run.run_stage(key)
        doubles = run.start_steps("doubles", DOUBLES, _LISTENING)
        v2 = run.start_step("staging", "v2 service", _SERVING, "v2")
        run.start_steps("baselines", BASELINES, _SERVING)
        run.run_stage("replay")
        for double in doubles:
            run.child(double_counters(double.name, double.url))
        for key in ("diff", "report"):
            run.run_stage(key)
        if not options.keep:
            run.stop_all()

        echo("")
        echo(f"Done in {time.monotonic() - run.started:.0f} s. Files in {run.paths.workdir}:")
        for label, path in (
            ("recorded (raw, credentials tokenized)", run.paths.raw),
            ("sanitized", run.paths.clean),
            ("replay results + diff", run.paths.results),
            ("payments recorded (raw / sanitized)", run.paths.raw_payments),
            ("", run.paths.clean_payments),
            ("what the payments doubles answered", run.paths.served_payments),
            ("", run.paths.served_payments_baseline),
            ("", run.paths.served_payments_baseline_2),
            ("HTML report", run.paths.html),
            ("JUnit XML", run.paths.junit),
            ("executed notebook", run.paths.notebook),
            ("audit log (`shadowtape audit verify`)", Path(run.env["SHADOWTAPE_AUDIT_LOG"])),
        ):
            if path.exists():
                echo(f"  {label:<40} {path}")
        echo(
            "In CI, gate on the report: `shadowtape report "
            f"{run.paths.results} --fail-on 'status_mismatch>0' --fail-on "
            "'latency_regressions>0'` exits 1 when a rule trips (here both would: v2 has "
            "planted drift and a slower search)."
        )
        if options.keep:
            echo("")
            echo(
                f"Services still running: v1 {v1.url}, v2 {v2.url}, baselines "
                f"{run.urls.baseline} and {run.urls.baseline_2}, payments {payments.url}, "
                f"payments doubles {', '.join(d.url for d in doubles)}. Ctrl-C stops them."
            )
            wait_forever()
    finally:
        run.stop_all()
    return run
