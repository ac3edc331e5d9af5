"""Case 11, the smaller ones: each bad input is one line with exit 2 (no traceback), each
interrupted or killed run leaves nothing that looks whole and nothing that lingers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import faultkit
import pytest
import yaml

from shadowtape import schema
from shadowtape.diff.pipeline import SUMMARY_VERSION


def _bad(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    return faultkit.assert_one_line(result.stderr, "shadowtape: error:", *needles)


def test_unclosed_ipv6_target(tmp_path):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=2)
    result = faultkit.run_inprocess(
        "replay", clean, "--target", "http://[::1", "--out", tmp_path / "r", "--dry-run"
    )
    _bad(result, "--target", "http://[::1]:8000")


@pytest.mark.parametrize(
    "text", ["a: &a [*a]\n", "headers: &h {x: *h}\n", "x: " + "[" * 5000 + "]" * 5000 + "\n"]
)
def test_self_referencing_or_endless_yaml_policy(text, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    _bad(faultkit.run_inprocess("policy", "check", policy), str(policy))


def test_non_utf8_config_file(tmp_path):
    config = tmp_path / "shadowtape.toml"
    config.write_bytes(b'[replay]\ntarget = "http://staging"\nheader = ["X: \xff\xfe"]\n')
    result = faultkit.run_inprocess(
        "--config", config, "config", "show", env={"SHADOWTAPE_NO_CONFIG": ""}
    )
    _bad(result, f"{config}:3", "not UTF-8")


def test_deeply_nested_har(tmp_path):
    har = tmp_path / "deep.har"
    nested = "[" * 100_000 + "]" * 100_000
    har.write_text('{"log": {"version": "1.2", "entries": [' + nested + "]}}")
    _bad(faultkit.run_inprocess("import", har, "--out", tmp_path / "o"), "nested too deeply")
    assert faultkit.visible_entries(tmp_path / "o") == []


def test_empty_har_is_not_an_empty_import(tmp_path):
    har = tmp_path / "empty.har"
    har.write_bytes(b"")
    _bad(faultkit.run_inprocess("import", har, "--out", tmp_path / "o"), "empty")
    assert faultkit.visible_entries(tmp_path / "o") == []


def test_non_json_har_is_called_what_it_is(tmp_path):
    har = tmp_path / "export.har"
    har.write_text("<html>not a har</html>")
    line = _bad(faultkit.run_inprocess("import", har, "--out", tmp_path / "o"), "not a HAR file")
    assert "flow file" not in line


def test_correlate_on_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    rules = tmp_path / "rules.yaml"
    _bad(faultkit.run_inprocess("correlate", tmp_path / "empty", "--out", rules), "no Parquet")
    assert not rules.exists()


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"step": "GET /x", "source": "json:$.t", "targets": ["header:a"], "suport": 2},
         "unknown key 'suport'"),
        ({"step": "GET /x", "source": "json:$.t", "targets": ["header:a"], "support": "abc"},
         "support 'abc'"),
        ({"step": "GET /x", "source": "json:$.t", "targets": ["header:a"], "support": -1},
         "support -1"),
    ],
)  # fmt: skip
def test_correlation_rules_file_is_checked(rule, needle, tmp_path):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=2)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"version": 1, "rules": [rule]}))
    result = faultkit.run_inprocess(
        "replay", clean, "--target", "http://127.0.0.1:9", "--out", tmp_path / "r",
        "--dry-run", "--correlate", rules,
    )  # fmt: skip
    _bad(result, needle)


def test_unknown_top_level_key_in_rules(tmp_path):
    clean = faultkit.sanitized_dataset(tmp_path / "clean", rows=2)
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrule: []\nrules: []\n")
    result = faultkit.run_inprocess(
        "replay", clean, "--target", "http://127.0.0.1:9", "--out", tmp_path / "r",
        "--dry-run", "--correlate", rules,
    )  # fmt: skip
    _bad(result, "unknown key 'rule'")


def test_a_corrupt_page_is_one_line(tmp_path):
    data = faultkit.raw_dataset(tmp_path / "raw", rows=400)
    (f,) = schema.dataset_files(data)
    raw = bytearray(f.read_bytes())
    for i in range(200, min(len(raw) - 2000, 4000)):  # the data pages; the footer is intact
        raw[i] ^= 0x5A
    f.write_bytes(bytes(raw))
    for args in (("inspect", data), ("sanitize", data, tmp_path / "clean")):
        result = faultkit.run_inprocess(*args)
        assert result.exit_code == 2, result.output
        faultkit.assert_one_line(result.stderr, str(f))
    assert not (tmp_path / "clean").exists()


def test_config_errors_spell_option_names_one_way(tmp_path, env):
    config = tmp_path / "shadowtape.toml"
    config.write_text('[replay]\ntarget = "http://127.0.0.1:1"\nbogus = 1\n')
    env.pop("SHADOWTAPE_NO_CONFIG")
    seen = set()
    for seed in ("0", "1", "2", "3"):
        proc = subprocess.run(
            [sys.executable, "-m", "shadowtape", "--config", str(config), "replay", "x",
             "--out", "y"],
            env={**env, "PYTHONHASHSEED": seed}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2
        seen.add(faultkit.assert_one_line(proc.stderr, "has no option --bogus"))
    assert len(seen) == 1, seen
    (line,) = seen
    options = line.split("options it takes: ")[1].split(", ")
    assert all(o.startswith("--") for o in options) and "--max-body" in options


def test_diff_keeps_the_old_diff_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    results = faultkit.results_dataset(tmp_path / "results")
    out = results / "_diff"
    assert faultkit.run_inprocess("diff", results).exit_code == 0
    old_summary = (out / "summary.json").read_bytes()
    checks = []

    def watched(real):
        def call(src, dst, *a, **kw):
            if os.fspath(dst) == os.fspath(out) or os.fspath(src) == os.fspath(out):
                checks.append((out / "summary.json").exists())
            return real(src, dst, *a, **kw)

        return call

    import shutil

    real_rmtree = shutil.rmtree

    def rmtree(path, *a, **kw):
        if os.fspath(path) == os.fspath(out):
            checks.append(False)  # the old diff deleted while no new one is there
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(os, "replace", watched(os.replace))
    monkeypatch.setattr(os, "rename", watched(os.rename))
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    ignore = tmp_path / "ignore.yaml"
    ignore.write_text('ignore: ["$.name"]\n')
    assert faultkit.run_inprocess("diff", results, "--ignore-file", ignore).exit_code == 0
    assert all(checks), "the diff directory went missing while the new one was published"
    assert (out / "summary.json").read_bytes() != old_summary


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(version=SUMMARY_VERSION + 1),
        lambda s: [r.pop("status_mismatch") for r in s["routes"]],
        lambda s: [r.update(status_mismatches=r.pop("status_mismatch")) for r in s["routes"]],
    ],
    ids=["version", "field-missing", "field-renamed"],
)
def test_report_refuses_a_summary_it_cannot_read_exactly(edit, tmp_path):
    results = faultkit.results_dataset(tmp_path / "results")
    assert faultkit.run_inprocess("diff", results).exit_code == 0
    path = results / "_diff" / "summary.json"
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))
    result = faultkit.run_inprocess("report", results)
    if summary.get("version") != SUMMARY_VERSION:
        # An other-version summary is not reused: the report makes its own diff.
        assert result.exit_code == 0 and "running diff" in result.stderr
    else:
        _bad(result, "rerun `shadowtape diff`")


def test_killed_sanitize_leaves_no_lingering_partial_output(tmp_path, env):
    raw = faultkit.raw_dataset(tmp_path / "raw", rows=3000, row_group_rows=100)
    out = tmp_path / "clean"
    proc = faultkit.start(["sanitize", raw, out], env)
    faultkit.wait_for(
        lambda: any(p.name.startswith(".clean.partial-") for p in tmp_path.iterdir()),
        60,
        "sanitize to start writing",
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not out.exists()
    assert any(p.name.startswith(".clean.partial-") for p in tmp_path.iterdir())
    again = faultkit.run_inprocess("sanitize", raw, out)
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "home", "raw"]
