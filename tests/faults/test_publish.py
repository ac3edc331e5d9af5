"""The one atomic-publish helper (shadowtape.publish): outputs appear whole or not at all, an
existing directory is replaced only when the caller's check says it is ours, the old and the
new are swapped with no moment where neither exists, and temporaries (also a killed run's)
are cleaned up without touching anybody else's."""

from __future__ import annotations

import os
import subprocess
import sys

import faultkit
import pytest

from shadowtape import publish, schema
from shadowtape.errors import InputError


def _ours(_path):
    return None


def _never(_path):
    return "holds things"


def test_a_failed_block_leaves_the_destination_as_it_was(tmp_path):
    dest = tmp_path / "out"
    with publish.staged_directory(dest, check=_ours) as tmp:
        (tmp / "a").write_text("first")
    with (
        pytest.raises(RuntimeError),
        publish.staged_directory(dest, check=_ours, overwrite=True) as tmp,
    ):
        (tmp / "a").write_text("second, half done")
        raise RuntimeError("boom")
    assert (dest / "a").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replacing_swaps_in_one_step(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    with publish.staged_directory(dest, check=_ours) as tmp:
        (tmp / "a").write_text("old")
    seen = []
    real = publish._renameat2_exchange

    def exchange(a, b):
        seen.append((dest / "a").exists())
        ok = real(a, b)
        seen.append((dest / "a").exists())
        return ok

    monkeypatch.setattr(publish, "_renameat2_exchange", exchange)
    with publish.staged_directory(dest, check=_ours, overwrite=True) as tmp:
        (tmp / "a").write_text("new")
    assert (dest / "a").read_text() == "new"
    assert seen == [True, True]  # never a moment without an output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not (dest / publish.STAGING_MARKER).exists()


def test_without_an_atomic_exchange_the_old_one_goes_only_after_the_new_one_is_in(
    tmp_path, monkeypatch
):
    dest = tmp_path / "out"
    with publish.staged_directory(dest, check=_ours) as tmp:
        (tmp / "a").write_text("old")
    monkeypatch.setattr(publish, "_renameat2_exchange", lambda a, b: False)
    with publish.staged_directory(dest, check=_ours, overwrite=True) as tmp:
        (tmp / "a").write_text("new")
    assert (dest / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refusals_are_input_errors_and_touch_nothing(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with (
        pytest.raises(InputError, match="pass --overwrite"),
        publish.staged_directory(dest, check=_ours),
    ):
        pass
    with (
        pytest.raises(InputError, match="holds things; shadowtape replaces only"),
        publish.staged_directory(dest, check=_never, overwrite=True),
    ):
        pass
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with (
        pytest.raises(InputError, match="not a directory"),
        publish.staged_directory(a_file, check=_ours, overwrite=True),
    ):
        pass
    assert (dest / "keep").read_text() == "mine" and a_file.read_text() == "x"


def test_a_destination_that_changes_during_the_work_is_checked_again(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    with (
        pytest.raises(InputError, match="holds intruder"),
        publish.staged_directory(
            dest,
            check=lambda d: "holds intruder" if (d / "intruder").exists() else None,
            overwrite=True,
        ) as tmp,
    ):
        (tmp / "a").write_text("new")
        (dest / "intruder").write_text("appeared meanwhile")
    assert (dest / "intruder").exists() and not (dest / "a").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_runs_are_removed_and_nothing_else(tmp_path):
    host = publish.owner_tag().split("-")[0]
    dead = _dead_pid()
    stale_dir = tmp_path / f".out.partial-{host}-{dead}-0badc0de"
    stale_dir.mkdir()
    (stale_dir / publish.STAGING_MARKER).write_text("{}")
    unmarked = tmp_path / f".out.partial-{host}-{dead}-00000001"  # not made by publish
    unmarked.mkdir()
    live = tmp_path / f".out.partial-{host}-{os.getpid()}-00000002"
    live.mkdir()
    (live / publish.STAGING_MARKER).write_text("{}")
    other_host = tmp_path / f".out.partial-0000abcd-{dead}-00000003"
    other_host.mkdir()
    (other_host / publish.STAGING_MARKER).write_text("{}")
    stale_file = tmp_path / f".report.html.tmp-{host}-{dead}-0badc0de"
    stale_file.write_text("half")
    with publish.staged_directory(tmp_path / "out", check=_ours) as tmp:
        (tmp / "a").write_text("x")
    publish.write_file_atomic(tmp_path / "report.html", "<html></html>")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert stale_dir.name not in names and stale_file.name not in names
    assert {unmarked.name, live.name, other_host.name} <= set(names)


def test_atomic_file_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old report")
    with pytest.raises(RuntimeError), publish.atomic_file(target, "w", encoding="utf-8") as fh:
        fh.write("new, half")
        raise RuntimeError("boom")
    assert target.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with pytest.raises(InputError, match="is a directory"):
        publish.write_file_atomic(tmp_path, "x")


def test_dataset_writer_removes_a_killed_writers_temporary(tmp_path):
    host = publish.owner_tag().split("-")[0]
    stale = tmp_path / f".part-000001.parquet.tmp-{host}-{_dead_pid()}-0badc0de"
    stale.write_bytes(b"PAR1 half a file")
    with schema.DatasetWriter(tmp_path, prefix="part") as w:
        w.write_exchanges([faultkit.exchange(1)])
    assert not stale.exists()
    assert [f.name for f in schema.dataset_files(tmp_path)] == ["part-000001.parquet"]


def test_dataset_writer_counts_every_row_through_a_failure(tmp_path, monkeypatch):
    w = schema.DatasetWriter(tmp_path, roll=schema.RollPolicy(row_group_rows=2))
    w.write_exchanges([faultkit.exchange(i) for i in range(3)])
    w.finalize_file()
    real = os.replace

    def full(*_a, **_kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    w.write_exchanges([faultkit.exchange(i) for i in range(3, 8)])
    with pytest.raises(OSError):
        w.finalize_file()
    monkeypatch.setattr(os, "replace", real)
    w.write_exchanges([faultkit.exchange(i) for i in range(8, 10)])
    w.close()
    assert (w.rows_written, w.rows_lost, w.unfinalized_rows) == (5, 5, 0)
    assert sum(i.num_rows for i in schema.read_files(tmp_path)) == 5
    assert [p.name for p in tmp_path.iterdir() if schema.is_hidden(p.name)] == []
