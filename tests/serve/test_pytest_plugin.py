"""The `shadowtape_double` fixture, from this suite and from a user's own suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from serve_testkit import rec, write_recording


def test_the_fixture_serves_a_recording_from_a_test(shadowtape_double, tmp_path: Path) -> None:
    dataset = write_recording(
        tmp_path / "payments",
        [
            rec(
                "s",
                0,
                "POST",
                "/v1/charges",
                body={"amount": 5},
                status=201,
                response={"id": "ch_1"},
            ),
            rec("s", 1, "POST", "/v1/charges/ch_1/refund", response={"status": "refunded"}),
        ],
    )
    payments = shadowtape_double(dataset, session_key="header:X-Session", latency="none")
    with httpx.Client(base_url=payments.url, headers={"X-Session": "s"}, trust_env=False) as c:
        charge = c.post("/v1/charges", json={"amount": 5})
        refund = c.post(f"/v1/charges/{charge.json()['id']}/refund")
    assert (charge.status_code, refund.json()) == (201, {"status": "refunded"})
    assert payments.stats()["matched_by_session"] == 2


USER_SUITE = """
import httpx

def test_uses_a_double(shadowtape_double):
    double = shadowtape_double(DATASET, served=SERVED, latency="none")
    assert httpx.get(double.url + "/ping", trust_env=False).json() == {"pong": True}
    open(URL_FILE, "w").write(double.url)
"""


def test_a_users_suite_gets_the_fixture_and_the_double_stops_after_the_test(
    tmp_path: Path,
) -> None:
    dataset = write_recording(
        tmp_path / "rec", [rec("s", 0, "GET", "/ping", response={"pong": True})]
    )
    suite = tmp_path / "suite"
    suite.mkdir()
    url_file, served = tmp_path / "url.txt", tmp_path / "served"
    (suite / "test_user.py").write_text(
        f"DATASET = {str(dataset)!r}\nSERVED = {str(served)!r}\nURL_FILE = {str(url_file)!r}\n"
        + USER_SUITE
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        capture_output=True,
        text=True,
        cwd=suite,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    url = url_file.read_text()
    try:
        httpx.get(url + "/ping", trust_env=False, timeout=2)
    except httpx.ConnectError:
        pass
    else:
        raise AssertionError(f"the double at {url} still answers after the test")
    from shadowtape import schema

    assert sum(1 for b in schema.iter_batches(served) for _ in range(b.num_rows)) == 1
