"""Fuzzing the CLI's inputs with Hypothesis: options, HAR files, policies, shadowtape.toml,
correlation rules and diff ignore files. Whatever the input: exit 0 or 2 (never a traceback,
never "a bug in shadowtape"), at most one error line, and nothing left behind that looks whole.

The search is derandomized and bounded (faultkit.fuzz_settings), so CI runs the same examples
every time in a few seconds per input kind."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import faultkit
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from shadowtape import schema

# --- values ---------------------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
_NUMBER_TEXT = st.one_of(
    st.sampled_from(["nan", "-nan", "inf", "-inf", "0", "-0", "-1", "1e309", "1e-320", ""]),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    _TEXT,
)
_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        _TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=12,
)


def _check(result: Any, *outputs: Path) -> None:
    """Exit 0 or 2, no traceback, one line at most on failure; on failure nothing visible
    was left at `outputs`."""
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        # Ours: one "shadowtape: error:" line. Click's own usage errors keep click's form,
        # which ends with one "Error: ..." line.
        errors = [ln for ln in lines if ln.startswith(("shadowtape:", "Error:"))]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
        for out in outputs:
            assert faultkit.visible_entries(out) == [] if out.is_dir() else not out.exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fuzz")
    return {
        "base": base,
        "clean": faultkit.sanitized_dataset(base / "clean", rows=6),
        "results": faultkit.results_dataset(base / "results", rows=8),
    }


def _fresh(base: Path, name: str) -> Path:
    path = base / name / faultkit.unique()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- options ---------------------------------------------------------------------------------

_REPLAY_OPTIONS = {
    "--rate": _NUMBER_TEXT,
    "--speed": st.one_of(_NUMBER_TEXT, st.just("max")),
    "--concurrency": _NUMBER_TEXT,
    "--limit": _NUMBER_TEXT,
    "--sessions": _NUMBER_TEXT,
    "--seed": _NUMBER_TEXT,
    "--duration": _NUMBER_TEXT,
    "--max-gap": _NUMBER_TEXT,
    "--http": st.sampled_from(["auto", "1.1", "2", "3", ""]),
    "--header": _TEXT,
    "--rewrite": st.one_of(_TEXT, st.just("a=http://127.0.0.1:1"), st.just("/a/=/b/")),
    "--allow-host": _TEXT,
    "--connect-timeout": _NUMBER_TEXT,
    "--read-timeout": _NUMBER_TEXT,
    "--total-timeout": _NUMBER_TEXT,
    "--retries": _NUMBER_TEXT,
    "--breaker-error-rate": _NUMBER_TEXT,
    "--breaker-failures": _NUMBER_TEXT,
    "--grace": _NUMBER_TEXT,
    "--max-body": _NUMBER_TEXT,
    "--noise-sample": _NUMBER_TEXT,
    "--shard": st.one_of(_TEXT, st.just("0/2"), st.just("3/2")),
    "--start-at": _NUMBER_TEXT,
    "--roll-interval": _NUMBER_TEXT,
    "--on-miss": _TEXT,
    "--target": st.one_of(
        _TEXT,
        st.sampled_from(
            [
                "http://[::1",
                "http://127.0.0.1:99999",
                "ftp://x",
                "http://127.0.0.1.evil.com",
                "http://localhost:8000/base?q=1",
                "http://[::1]:1",
            ]
        ),
    ),  # fmt: skip
}
_REPLAY_ARGS = st.lists(
    st.sampled_from(sorted(_REPLAY_OPTIONS)).flatmap(
        lambda flag: _REPLAY_OPTIONS[flag].map(lambda value: [flag, value])
    ),
    max_size=5,
)


@faultkit.fuzz_settings(60)
@given(args=_REPLAY_ARGS)
def test_replay_options(data, args):
    out = _fresh(data["base"], "replay-out")
    flat = [a for pair in args for a in pair]
    result = faultkit.run_inprocess(
        "replay", data["clean"], "--target", "http://127.0.0.1:9", "--out", out, "--dry-run",
        *flat,
    )  # fmt: skip
    _check(result, out)
    assert not out.exists()  # a dry run writes nothing


# --- HAR files -----------------------------------------------------------------------------

_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "startedDateTime": st.one_of(_JSON, st.just("2024-01-01T00:00:00Z")),
        "time": _JSON,
        "request": st.one_of(
            _JSON,
            st.fixed_dictionaries(
                {},
                optional={
                    "method": st.one_of(_JSON, st.sampled_from(["GET", "POST", ""])),
                    "url": st.one_of(_JSON, st.just("http://a.test/x?y=1"), _TEXT),
                    "httpVersion": _JSON,
                    "headers": st.one_of(
                        _JSON, st.lists(st.fixed_dictionaries({"name": _JSON, "value": _JSON}))
                    ),
                    "queryString": _JSON,
                    "postData": _JSON,
                    "cookies": _JSON,
                },
            ),
        ),
        "response": st.one_of(
            _JSON,
            st.fixed_dictionaries(
                {},
                optional={
                    "status": _JSON,
                    "statusText": _JSON,
                    "headers": _JSON,
                    "content": st.one_of(
                        _JSON,
                        st.fixed_dictionaries(
                            {}, optional={"text": _JSON, "encoding": _JSON, "size": _JSON}
                        ),
                    ),
                },
            ),
        ),
        "timings": _JSON,
    },
)
_HAR = st.one_of(
    st.fixed_dictionaries(
        {"log": st.fixed_dictionaries(
            {"entries": st.lists(_ENTRY, max_size=3)},
            optional={"version": st.sampled_from(["1.2", "1.1", "2.0", 1.2]), "creator": _JSON},
        )}
    ),
    _JSON,
).map(lambda doc: json.dumps(doc).encode())  # fmt: skip
_HAR_BYTES = st.one_of(_HAR, _HAR, st.binary(max_size=64))


@faultkit.fuzz_settings(60)
@given(content=_HAR_BYTES, on_error=st.sampled_from(["fail", "skip"]))
def test_import_har(data, content, on_error):
    har = _fresh(data["base"], "har").with_suffix(".har")
    har.write_bytes(content)
    out = _fresh(data["base"], "import-out")
    result = faultkit.run_inprocess("import", har, "--out", out, "--on-error", on_error)
    _check(result, out)
    if result.exit_code == 0:
        infos = schema.read_files(out)  # whatever was written reads whole
        assert sum(i.num_rows for i in infos) <= content.count(b"request") + 1


# --- policies, config, rules, ignore files -----------------------------------------------------

_POLICY_KEYS = [
    "version", "default", "headers", "cookies", "query", "form", "json", "paths", "detect",
    "keep", "drop", "redact", "pseudonymize", "entities", "action", "bogus",
]  # fmt: skip
_POLICY = st.recursive(
    st.one_of(_JSON, st.sampled_from(["keep", "drop", "redact", "pseudonymize", "token"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(_POLICY_KEYS), _TEXT), inner, max_size=4),
    ),
    max_leaves=10,
)


def _yaml_text(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return str(doc)


@faultkit.fuzz_settings(50)
@given(doc=st.one_of(_POLICY.map(_yaml_text), _TEXT, st.just("a: &a [*a]\n")))
def test_policy_check(data, doc):
    policy = _fresh(data["base"], "policy").with_suffix(".yaml")
    policy.write_text(doc, encoding="utf-8")
    _check(faultkit.run_inprocess("policy", "check", policy))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


_CONFIG_SECTIONS = ["defaults", "replay", "capture", "sanitize", "report", "diff", "policy.init",
                    "demo", "nonsense", "replay.sub"]  # fmt: skip
_CONFIG_KEYS = ["target", "speed", "rate", "allow-host", "concurrency", "key-env", "fail-on",
                "workers", "overwrite", "max-body", "bogus", "allow_host", "out"]  # fmt: skip
_SCALAR = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), _TEXT)
_CONFIG = st.dictionaries(
    st.sampled_from(_CONFIG_SECTIONS),
    st.dictionaries(
        st.sampled_from(_CONFIG_KEYS), st.one_of(_SCALAR, st.lists(_SCALAR, max_size=3)),
        max_size=3,
    ),
    max_size=3,
).map(
    lambda doc: "\n".join(
        f"[{section}]\n" + "\n".join(f'"{k}" = {_toml_value(v)}' for k, v in table.items())
        for section, table in doc.items()
    )
)  # fmt: skip


@faultkit.fuzz_settings(40)
@given(text=st.one_of(_CONFIG, _TEXT))
def test_config_file(data, text):
    config = _fresh(data["base"], "config").with_suffix(".toml")
    config.write_text(text, encoding="utf-8")
    result = faultkit.run_inprocess(
        "--config", config, "config", "show", env={"SHADOWTAPE_NO_CONFIG": ""}
    )
    _check(result)


_RULE = st.fixed_dictionaries(
    {},
    optional={
        "name": _JSON,
        "step": st.one_of(_JSON, st.just("GET /x")),
        "source": st.one_of(_JSON, st.sampled_from(["json:$.token", "header:etag", "path[x]"])),
        "targets": st.one_of(_JSON, st.just(["header:Authorization"])),
        "support": _JSON,
    },
)
_RULES = st.one_of(
    st.fixed_dictionaries({"rules": st.lists(_RULE, max_size=3)}, optional={"version": _JSON}),
    _JSON,
).map(_yaml_text)


@faultkit.fuzz_settings(40)
@given(text=_RULES)
def test_correlation_rules(data, text):
    rules = _fresh(data["base"], "rules").with_suffix(".yaml")
    rules.write_text(text, encoding="utf-8")
    result = faultkit.run_inprocess(
        "replay", data["clean"], "--target", "http://127.0.0.1:9", "--out",
        _fresh(data["base"], "r"), "--dry-run", "--correlate", rules,
    )  # fmt: skip
    _check(result)


_PINNED = st.one_of(
    st.dictionaries(
        st.sampled_from(["ignore", "noise", "drift", "bogus"]),
        st.one_of(
            _JSON,
            st.lists(
                st.one_of(
                    st.sampled_from(["$.name", "$.items[*].price", "$..x", "$[", "header: etag",
                                     "status", ""]),
                    st.fixed_dictionaries(
                        {}, optional={"path": _JSON, "route": _JSON, "header": _JSON}
                    ),
                ),
                max_size=3,
            ),
        ),
        max_size=3,
    ),
    _JSON,
).map(_yaml_text)  # fmt: skip


@faultkit.fuzz_settings(30)
@given(
    ignore=_PINNED,
    contrast=st.one_of(st.none(), _NUMBER_TEXT),
    max_diffs=st.one_of(st.none(), _NUMBER_TEXT),
)
def test_diff_ignore_file_and_thresholds(data, ignore, contrast, max_diffs):
    results = _fresh(data["base"], "results-copy")
    shutil.copytree(data["results"], results)
    ignore_file = _fresh(data["base"], "ignore").with_suffix(".yaml")
    ignore_file.write_text(ignore, encoding="utf-8")
    out = _fresh(data["base"], "diff-out")
    args = ["diff", results, "--out", out, "--ignore-file", ignore_file]
    if contrast is not None:
        args += ["--min-contrast", contrast]
    if max_diffs is not None:
        args += ["--max-diffs", max_diffs]
    result = faultkit.run_inprocess(*args)
    _check(result, out)
    assert (out / "summary.json").exists() == (result.exit_code == 0)
