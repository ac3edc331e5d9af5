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
from dataclasses import dataclass, field
from pathlib import Path

from shadowtape.demo.defaults import DEFAULT_REQUESTS, DEFAULT_SEED, DEFAULT_WORKDIR
from shadowtape.demo.processes import Echo, Service, Timeouts, run_step
from shadowtape.demo.traffic import SESSION_HEADER, plan_sessions, send_traffic
from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.extras import notebook_install_hint, notebook_missing

MARKER = ".shadowtape-demo"
REPLAY_SPEED = 5
NOISE_SAMPLE = 50
_SERVING = re.compile(r"serving v\d on (http://\S+)")
_LISTENING = re.compile(r"listening on (http://\S+)")


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

    def shop(version: str) -> tuple[str, ...]:
        return ("python", "-m", "shadowtape.demo.services", "--version", version, "--port", "0")

    key = ("--key-file", str(paths.key))
    return [
        Step(
            "services",
            "Start the sample shop: v1 plays production, v2 plays staging (with planted drift)",
            (shop("v1"), shop("v2")),
        ),
        Step(
            "capture",
            "Put the capture proxy in front of production; it records every exchange",
            (
                (
                    "shadowtape",
                    "capture",
                    "--upstream",
                    urls.v1,
                    "--listen",
                    "127.0.0.1:0",
                    "--out",
                    str(paths.raw),
                    *key,
                    "--session-key",
                    f"header:{SESSION_HEADER}",
                ),
            ),  # fmt: skip
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
        Step("stop", "Stop the capture (Ctrl-C): it flushes and finalizes its files", ()),
        Step(
            "sanitize",
            "Scrub personal data with the default policy: keyed, format-preserving pseudonyms",
            (("shadowtape", "sanitize", str(paths.raw), str(paths.clean), *key),),
        ),
        Step(
            "verify",
            "Re-scan the scrubbed dataset for anything that still looks sensitive",
            (("shadowtape", "verify", str(paths.clean)),),
        ),
        Step(
            "replay",
            f"Replay the sessions against staging at {REPLAY_SPEED}x, writes allowed, "
            f"{NOISE_SAMPLE} requests sent twice to learn what is noise",
            (
                (
                    "shadowtape",
                    "replay",
                    str(paths.clean),
                    "--target",
                    urls.v2,
                    "--out",
                    str(paths.results),
                    "--speed",
                    str(REPLAY_SPEED),
                    "--allow-writes",
                    "--noise-sample",
                    str(NOISE_SAMPLE),
                ),
            ),  # fmt: skip
            "tokens and ids minted by staging replace the recorded ones (stateful correlation)",
        ),
        Step(
            "diff",
            "Compare every staging response with the recorded one",
            (("shadowtape", "diff", str(paths.results)),),  # fmt: skip
            "the login token, minted afresh by staging and a keyed token in the recording, "
            "is recognised as a credential token and kept apart from drift as noise",
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
        step = self.step(key)
        (command,) = step.commands
        code, output = run_step(
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

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop(self.options.timeouts.stop_s)
        self.services.clear()


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
        services = run.step("services")
        v1 = run.start("v1 service", services.commands[0], _SERVING)
        v2 = run.start("v2 service", services.commands[1], _SERVING)
        run.urls = Urls(v1=v1.url, v2=v2.url)

        capture_step = run.step("capture")
        capture = run.start("capture proxy", capture_step.commands[0], _LISTENING)
        run.urls = Urls(v1=v1.url, v2=v2.url, proxy=capture.url)

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
        code = capture.stop(options.timeouts.stop_s)
        run.services.remove(capture)
        if code != 0:
            raise ShadowtapeError(f"the capture proxy exited with {code} when stopped")

        for key in ("sanitize", "verify", "replay", "diff", "report"):
            run.run_stage(key)
        if not options.keep:
            run.stop_all()

        echo("")
        echo(f"Done in {time.monotonic() - run.started:.0f} s. Files in {run.paths.workdir}:")
        for label, path in (
            ("recorded (raw, credentials tokenized)", run.paths.raw),
            ("sanitized", run.paths.clean),
            ("replay results + diff", run.paths.results),
            ("HTML report", run.paths.html),
            ("JUnit XML", run.paths.junit),
            ("executed notebook", run.paths.notebook),
            ("audit log (`shadowtape audit verify`)", Path(run.env["SHADOWTAPE_AUDIT_LOG"])),
        ):
            if path.exists():
                echo(f"  {label:<40} {path}")
        echo(
            "In CI, gate on the report: `shadowtape report "
            f"{run.paths.results} --fail-on 'status_mismatch>0'` exits 1 when a rule trips "
            "(here it would: v2 has planted drift)."
        )
        if options.keep:
            echo("")
            echo(f"Services still running: v1 {v1.url}, v2 {v2.url}. Ctrl-C stops them.")
            wait_forever()
    finally:
        run.stop_all()
    return run
