"""The sample shop as a real HTTP server: in a thread, and as `python -m` with its URL line."""

import re
import signal
import subprocess
import sys

import httpx

from shadowtape.demo.services import GZIP_MIN_BYTES


def test_large_bodies_are_gzipped_for_clients_that_ask(v1_service) -> None:
    with httpx.Client(base_url=v1_service.url, trust_env=False) as client:
        raw = client.get("/api/products", headers={"Accept-Encoding": "gzip"})
        plain = client.get("/api/products", headers={"Accept-Encoding": "identity"})
    assert raw.headers["content-encoding"] == "gzip"
    assert int(raw.headers["content-length"]) < len(plain.content)
    assert len(plain.content) >= GZIP_MIN_BYTES
    assert raw.json()["items"] == plain.json()["items"]  # httpx decoded the gzip body
    assert "content-encoding" not in plain.headers


def test_one_keep_alive_connection_serves_a_whole_session(v2_service) -> None:
    with httpx.Client(base_url=v2_service.url, trust_env=False) as client:
        created = client.post("/api/users", json={"name": "A", "email": "a@b.c", "password": "p"})
        token = client.post("/api/login", json={"email": "a@b.c", "password": "p"}).json()["token"]
        user = client.get(
            f"/api/users/{created.json()['id']}", headers={"Authorization": f"Bearer {token}"}
        )
    assert created.status_code == 201
    assert user.status_code == 200 and user.json()["loyalty_tier"] == "bronze"
    assert user.headers["server"] == "shadowtape-demo-shop/v2"
    assert v2_service.api.requests_served == 3


def test_module_prints_its_url_and_stops_cleanly_on_sigint() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtape.demo.services", "--version", "v2", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"serving v2 on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        response = httpx.get(f"{match.group(1)}/api/products/1000", trust_env=False)
        assert response.status_code == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped after 1 requests" in out
