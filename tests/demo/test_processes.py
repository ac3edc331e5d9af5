"""Child processes of the demo: output is echoed, readiness is awaited, failures are named."""

import re
import sys

import pytest

from shadowtape.demo.processes import Service, run_step
from shadowtape.errors import ShadowtapeError

PY = sys.executable
READY = re.compile(r"ready at (\S+)")


def test_run_step_echoes_output_and_returns_the_exit_code() -> None:
    seen: list[str] = []
    code, output = run_step(
        "t", [PY, "-c", "import sys; print('a'); print('b', file=sys.stderr); sys.exit(3)"],
        {}, seen.append, 60,
    )  # fmt: skip
    assert code == 3
    assert sorted(output) == sorted(seen) == ["a", "b"]


def test_run_step_stops_a_child_that_hangs() -> None:
    with pytest.raises(ShadowtapeError, match=r"`sleepy` did not finish in 1 s"):
        run_step("sleepy", [PY, "-c", "import time; time.sleep(60)"], {}, lambda _l: None, 1)


def test_a_service_is_ready_when_it_prints_its_url_and_stops_on_sigint() -> None:
    script = (
        "import signal, time\n"
        "stop = []\n"
        "signal.signal(signal.SIGINT, lambda *_: stop.append(1))\n"
        "print('ready at http://x:1', flush=True)\n"
        "while not stop: time.sleep(0.02)\n"
        "print('bye', flush=True)\n"
    )
    service = Service.start("toy", [PY, "-c", script], READY, {}, lambda _l: None, 60)
    assert service.url == "http://x:1"
    assert service.stop(30) == 0
    assert service.output[-1] == "bye"


def test_a_service_that_dies_before_ready_is_reported_with_its_last_words() -> None:
    with pytest.raises(ShadowtapeError, match=r"toy did not start \(exit 4; last output: boom\)"):
        Service.start(
            "toy", [PY, "-c", "print('boom'); raise SystemExit(4)"], READY, {}, lambda _l: None, 60
        )
