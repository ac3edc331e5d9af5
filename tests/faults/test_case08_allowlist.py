"""Case 8: the default allowlist's `127.*` and `::1` mean loopback ADDRESSES; a DNS name that
merely starts like one (127.0.0.1.example.com) is never allowed by them."""

from __future__ import annotations

import faultkit
import pytest

from shadowtape.targets import DEFAULT_ALLOWED_HOSTS, host_allowed


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("api.localhost", True),
        ("staging.internal", True),
        ("127.0.0.1.example.com", False),
        ("127.0.0.1.nip.io", False),
        ("127.evil.com", False),
        ("128.0.0.1", False),
        ("10.0.0.1", False),
        ("2130706433", False),  # 127.0.0.1 as one number: a name to the allowlist
        ("example.com", False),
    ],
)
def test_default_allowlist(host, allowed):
    assert host_allowed(host, DEFAULT_ALLOWED_HOSTS) is allowed


def test_address_patterns_and_networks():
    assert host_allowed("10.1.2.3", ["10.0.0.0/8"])
    assert not host_allowed("10.example.com", ["10.0.0.0/8", "10.*"])
    assert host_allowed("fd00::5", ["fd00::/8"])
    assert host_allowed("anything.example", ["*"]) and host_allowed("192.0.2.1", ["*"])


def test_replay_refuses_a_name_that_looks_like_loopback(tmp_path):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=2)
    result = faultkit.run_inprocess(
        "replay", clean, "--target", "http://127.0.0.1.example.com:8000",
        "--out", tmp_path / "r", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 2
    faultkit.assert_one_line(result.stderr, "127.0.0.1.example.com", "not in the allowlist")
    ok = faultkit.run_inprocess(
        "replay", clean, "--target", "http://[::1]:8000", "--out", tmp_path / "r", "--dry-run"
    )
    assert ok.exit_code == 0, ok.output
