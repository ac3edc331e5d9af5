"""Scenarios from shadowtape.toml: validation with FILE:LINE, replay of exactly the matching
sessions against a real staging server, the risk confirmation, and report grouping."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from replay_testkit import exchange, write_dataset

from shadowtape.config import load_config
from shadowtape.errors import InputError
from shadowtape.governance.audit import AuditLog
from shadowtape.governance.scenarios import load_registry, parse_risk_filter, select
from shadowtape.report.gates import parse_gate

CONFIG = """\
[governance]
confirm-risk = "high"

[scenarios.login]
routes = ["POST /login"]
risk = "low"

[scenarios.checkout]
description = "cart to order"
routes = ["POST /cart/{id}/checkout", "GET /orders/{id}"]
risk = "high"
depends-on = ["login"]
requires = { writes = true, min-sessions = 2 }
fail-on = ["status_mismatch>0"]

[scenarios.browse]
routes = ["/products/{id}"]
methods = ["GET"]
sessions = "^browse-"
risk = "medium"
"""


def _write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "shadowtape.toml"
    path.write_text(text)
    return path


def _registry(path: Path):
    config = load_config(path, ["replay", "report"])
    return load_registry(config.tables, config.path, config.lines, check_gate=parse_gate)


def _dataset(tmp_path: Path) -> Path:
    records = [
        # two checkout sessions: login, then the checkout, then reading the order
        *(
            e
            for s in ("buy-1", "buy-2")
            for e in (
                exchange(s, 0, 0, "POST", "/login", body=b"{}"),
                exchange(s, 1, 10, "POST", f"/cart/{s[-1]}/checkout", body=b"{}"),
                exchange(s, 2, 20, "GET", f"/orders/{s[-1]}7"),
            )
        ),
        exchange("login-only", 0, 5, "POST", "/login", body=b"{}"),
        exchange("browse-1", 0, 1, "GET", "/products/12"),
        exchange("browse-1", 1, 2, "GET", "/about"),
        exchange("other-1", 0, 3, "GET", "/products/13"),  # not a browse- session
        exchange("idle-1", 0, 4, "GET", "/health"),
    ]
    return write_dataset(tmp_path / "clean", records)


def test_the_registry_is_checked_with_file_and_line(tmp_path: Path) -> None:
    reg = _registry(_write_config(tmp_path))
    assert reg.names() == ["browse", "checkout", "login"] and reg.confirm_risk == "high"
    checkout = reg.scenarios["checkout"]
    assert checkout.needs_writes and checkout.min_sessions == 2 and checkout.risk == "high"
    assert [s.name for s in select(reg, ["checkout"])] == ["checkout", "login"]
    assert [s.name for s in select(reg, risk=">=medium")] == ["browse", "checkout", "login"]
    assert parse_risk_filter("critical") == ("==", "critical")
    bad = {
        'risk = "huge"': "risk 'huge': use one of low, medium, high, critical",
        'routes = ["users/{id}"]': "the path must start with '/'",
        'fail-on = ["drift_rate>>1"]': "not a rule",
        'depends-on = ["nope"]': "depends on 'nope', which is not defined",
        'colour = "red"': "unknown scenario setting 'colour'",
        'sessions = "(["': "bad regex",
    }
    for line, message in bad.items():
        path = _write_config(tmp_path, f"# team scenarios\n[scenarios.x]\n{line}\n")
        with pytest.raises(InputError) as err:
            _registry(path)
        assert str(err.value).startswith(f"{path}:3 [scenarios.x]: "), str(err.value)
        assert message in str(err.value)
    cycle = _write_config(
        tmp_path, '[scenarios.a]\ndepends-on = ["b"]\n[scenarios.b]\ndepends-on = ["a"]\n'
    )
    with pytest.raises(InputError, match="dependency cycle a -> b -> a"):
        _registry(cycle)
    with pytest.raises(InputError, match=r":2 \[governance\]: risk 'max'"):
        _registry(_write_config(tmp_path, '[governance]\nconfirm-risk = "max"\n'))


def test_replay_sends_exactly_the_sessions_of_the_scenario(tmp_path: Path, cli, staging) -> None:
    config = _write_config(tmp_path)
    src = _dataset(tmp_path)
    out = tmp_path / "results"
    common = ("--target", staging.url, "--out", out, "--speed", "max", "--correlate", "off")
    result = cli("--config", config, "replay", src, *common, "--scenario", "browse")
    assert result.exit_code == 0, result.output
    assert set(staging.by_session()) == {"browse-1"}  # other-1 fails the session filter
    assert [r.path for r in staging.received] == ["/products/12", "/about"]  # whole session
    from shadowtape.schema import batch_to_rows, iter_batches

    rows = [r for b in iter_batches(out) for r in batch_to_rows(b)]
    assert len(rows) == 11  # one row per recorded request, sent or not
    skipped = {r["session_id"] for r in rows if r["skip_reason"] == "not_in_scenario"}
    assert skipped == {"buy-1", "buy-2", "login-only", "other-1", "idle-1"}


def test_high_risk_needs_confirmation_recorded_with_the_actor(
    tmp_path: Path, cli, staging, audit_log
) -> None:
    config = _write_config(tmp_path)
    src = _dataset(tmp_path)
    out = tmp_path / "results"
    common = ("--target", staging.url, "--out", out, "--speed", "max", "--correlate", "off")
    refused = cli("--config", config, "replay", src, *common, "--scenario", "checkout")
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        "shadowtape: error: scenario checkout requires writes "
        f"({config}:13 [scenarios.checkout]: writes = true); add --allow-writes"
    ]
    refused = cli(
        "--config", config, "replay", src, *common, "--scenario", "checkout", "--allow-writes"
    )
    assert refused.exit_code == 2
    (line,) = refused.output.strip().splitlines()
    assert line == (
        "shadowtape: error: scenario checkout is high risk ([governance] confirm-risk = 'high' "
        f"at {config}:2 [governance]); pass --confirm-risk high to run it (recorded in the "
        "audit log with --actor)"
    )
    too_low = cli(
        "--config", config, "replay", src, *common, "--risk", ">=high", "--allow-writes",
        "--confirm-risk", "medium",
    )  # fmt: skip
    assert too_low.exit_code == 2 and "--confirm-risk high" in too_low.output
    # Replaying everything sends the checkout sessions too: the same confirmation applies.
    everything = cli("--config", config, "replay", src, *common, "--allow-writes")
    assert everything.exit_code == 2 and "scenario checkout is high risk" in everything.output
    assert staging.received == []
    ok = cli(
        "--config", config, "--actor", "alice", "replay", src, *common, "--scenario",
        "checkout", "--allow-writes", "--confirm-risk", "high",
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert set(staging.by_session()) == {"buy-1", "buy-2", "login-only"}  # + login's
    records = list(AuditLog(audit_log).records())
    assert [r["exit_code"] for r in records] == [2, 2, 2, 2, 0]
    last = records[-1]
    assert last["actor"] == "alice" and last["risk_confirmed"] == "high"
    assert last["scenarios"] == ["checkout", "login"] and last["risk"] == "high"
    assert last["counts"]["sent"] == 7 and last["target"] == staging.url
    assert "scenario checkout is high risk" in records[1]["error"]


def test_min_sessions_is_a_data_requirement(tmp_path: Path, cli, staging) -> None:
    config = _write_config(tmp_path, CONFIG.replace("min-sessions = 2", "min-sessions = 3"))
    src = _dataset(tmp_path)
    result = cli(
        "--config", config, "replay", src, "--target", staging.url, "--out", tmp_path / "r",
        "--scenario", "checkout", "--allow-writes", "--confirm-risk", "critical",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "scenario checkout needs at least 3 sessions" in result.output
    assert f"{src} has 2" in result.output and staging.received == []


def test_report_groups_routes_and_junit_suites_by_scenario(tmp_path: Path, cli, staging) -> None:
    config = _write_config(tmp_path)
    src = _dataset(tmp_path)
    out = tmp_path / "results"
    result = cli(
        "--config", config, "replay", src, "--target", staging.url, "--out", out, "--speed",
        "max", "--correlate", "off", "--allow-writes", "--confirm-risk", "high",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    junit, page = tmp_path / "junit.xml", tmp_path / "report.html"
    report = cli("--config", config, "report", out, "--junit", junit, "--html", page, "--json")
    # The staging kit answers /login with another body and 404s the orders: checkout drifts.
    payload = json.loads(report.stdout)
    groups = {g["name"]: g for g in payload["scenarios"]}
    assert set(groups) == {"browse", "checkout", "login"}
    assert set(groups["checkout"]["routes"]) == {"POST /cart/{id}/checkout", "GET /orders/{id}"}
    assert groups["login"]["routes"] == ["POST /login"]
    assert groups["checkout"]["gates"][0]["rule"] == "status_mismatch>0"
    assert groups["checkout"]["gates"][0]["tripped"] is True
    assert report.exit_code == 1
    assert "gate tripped in scenario checkout: status_mismatch>0" in report.stderr
    suites = {s.get("name"): s for s in ET.parse(junit).getroot()}
    assert "shadowtape.scenario.checkout" in suites and "shadowtape.scenario.login" in suites
    checkout = suites["shadowtape.scenario.checkout"]
    names = {c.get("name") for c in checkout.iter("testcase")}
    assert names == {"POST /cart/{id}/checkout", "GET /orders/{id}", "status_mismatch>0"}
    loose = {c.get("name") for c in suites["shadowtape.routes"].iter("testcase")}
    assert "GET /health" in loose and "POST /login" not in loose
    assert checkout.find("properties/property").get("value") == "high"
    html = page.read_text()
    assert "<h2>Scenarios</h2>" in html and "<strong>checkout</strong> (high risk)" in html
