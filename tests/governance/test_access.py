"""Raw data and keys stay with their owner: modes of what import and capture write, the
refusal of a key file others can read, the warning on a raw dataset others can read."""

import grp
import os
import stat
from pathlib import Path

from gov_har import write_har

from shadowtape.governance.access import FileAccess
from shadowtape.schema import dataset_files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_import_writes_raw_data_owner_only_whatever_the_umask(tmp_path: Path, cli) -> None:
    har = write_har(tmp_path / "s.har")
    old = os.umask(0o022)
    try:
        result = cli("import", har, "--out", tmp_path / "raw" / "day1")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    files = dataset_files(tmp_path / "raw" / "day1")
    assert files and all(_mode(f) == 0o600 for f in files)
    assert _mode(tmp_path / "raw" / "day1") == 0o700
    assert _mode(tmp_path / "raw") == 0o700  # created by the import too


def test_group_shares_with_that_group(tmp_path: Path, cli) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    har = write_har(tmp_path / "s.har")
    result = cli("import", har, "--out", tmp_path / "raw", "--group", group)
    assert result.exit_code == 0, result.output
    (f,) = dataset_files(tmp_path / "raw")
    assert _mode(f) == 0o640 and f.stat().st_gid == os.getgid()
    assert _mode(tmp_path / "raw") == 0o750
    bad = cli("import", har, "--out", tmp_path / "raw2", "--group", "no-such-group-xyz")
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "shadowtape: error: --group no-such-group-xyz: no such group on this machine; "
        "`getent group` lists them"
    ]
    assert not (tmp_path / "raw2").exists()


def test_a_key_file_others_can_read_is_refused_with_the_fix(tmp_path: Path, cli) -> None:
    har = write_har(tmp_path / "s.har")
    key = tmp_path / "team.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o644)
    for args in (
        ("import", har, "--out", tmp_path / "raw", "--key-file", key),
        ("sanitize", tmp_path / "raw", tmp_path / "clean", "--key-file", key),
    ):
        result = cli(*args)
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            f"shadowtape: error: {key}: key file has mode 0644, so other users can read it; "
            f"run `chmod 600 {key}` (and make a new key if others may have read it)"
        ]
    key.chmod(0o640)
    assert cli("import", har, "--out", tmp_path / "raw", "--key-file", key).exit_code == 2
    key.chmod(0o600)
    assert cli("import", har, "--out", tmp_path / "raw", "--key-file", key).exit_code == 0


def test_reading_a_raw_dataset_others_can_read_warns_once(tmp_path: Path, cli) -> None:
    har = write_har(tmp_path / "s.har")
    raw = tmp_path / "raw"
    assert cli("import", har, "--out", raw).exit_code == 0
    quiet = cli("inspect", raw)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
    raw.chmod(0o755)
    for f in dataset_files(raw):
        f.chmod(0o644)
    loud = cli("sanitize", raw, tmp_path / "clean")
    assert loud.exit_code == 0, loud.output
    warnings = [line for line in loud.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"shadowtape: warning: {raw} is raw (unsanitized) data that other users can read; "
        f"run `chmod -R o-rwx {raw}`"
    ]
    # The sanitized output is meant to travel: no warning reading it.
    assert "warning" not in cli("inspect", tmp_path / "clean").stderr


def test_the_demo_key_is_made_owner_only(tmp_path: Path) -> None:
    from shadowtape.demo.pipeline import DemoPaths, prepare_workdir

    old = os.umask(0)
    try:
        paths = DemoPaths(tmp_path / "demo")
        prepare_workdir(paths)
    finally:
        os.umask(old)
    assert _mode(paths.key) == 0o600


def test_file_access_sets_modes_before_data(tmp_path: Path) -> None:
    access = FileAccess.private()
    target = tmp_path / "a" / "b"
    access.make_dirs(target)
    assert _mode(tmp_path / "a") == 0o700 and _mode(target) == 0o700
    f = target / "x"
    access.create_file(f)
    assert _mode(f) == 0o600 and f.stat().st_size == 0
