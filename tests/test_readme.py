"""The README's generated parts (command reference, demo walkthrough) match the code, and its
top is what a newcomer needs first."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SCRIPT = ROOT / "scripts" / "gen_cli_reference.py"


def _check(readme: Path) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: click caches each command's help option the first time any context
    # asks for it, so help rendered after other tests ran could differ from a user's `--help`.
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generated_sections_are_up_to_date() -> None:
    done = _check(README)
    assert done.returncode == 0, done.stderr


def test_every_command_and_option_is_in_the_reference() -> None:
    from shadowtape.cli import COMMANDS

    text = README.read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"### `shadowtape {name}`" in text, name
    for flag in ("--fail-on", "--allow-writes", "--noise-sample", "--key-file", "--config"):
        assert flag in text, flag


def test_the_top_is_title_paragraph_and_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.match(r"# shadowtape\n\n(?:[^\n#`]+\n)+\n```\n(.*?)```\n", text, re.S)
    assert match, "README must open with the title, one paragraph, then one code block"
    commands = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_check_mode_fails_on_a_stale_readme(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(README.read_text(encoding="utf-8").replace("### `shadowtape demo`", "### x"))
    done = _check(stale)
    assert done.returncode == 1
    assert "out of date" in done.stderr
