"""shadowtape.toml: parsing, checking, precedence (flag > env > file > default), `config show`."""

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from shadowtape.cli import main
from shadowtape.config import (
    Config,
    build_default_map,
    effective_values,
    find_config,
    load_config,
)
from shadowtape.demo.defaults import DEFAULT_REQUESTS
from shadowtape.errors import InputError


@click.group()
@click.option("--config", "config_path")
@click.pass_context
def toy(ctx: click.Context, config_path: str) -> None:
    """A root like shadowtape's: the file becomes the default_map of the command that runs."""
    ctx.ensure_object(dict)
    config = load_config(Path(config_path), ["replay", "policy"])
    ctx.obj["config"] = config
    ctx.default_map = build_default_map(config, toy, ctx, only=ctx.invoked_subcommand)


@toy.command()
@click.option("--target", envvar="TOY_TARGET")
@click.option("--speed", type=float, default=1.0)
@click.option("--allow-host", "allow_hosts", multiple=True)
@click.option("--allow-writes", is_flag=True)
@click.option("--key-env", default="SHADOWTAPE_KEY")
def replay(target, speed, allow_hosts, allow_writes, key_env) -> None:
    click.echo(json.dumps([target, speed, list(allow_hosts), allow_writes, key_env]))


@toy.group()
def policy() -> None:
    """A group with a subcommand, as [policy.init] addresses it."""


@policy.command()
@click.option("--out", default="policy.yaml")
def init(out) -> None:
    click.echo(out)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shadowtape.toml"
    path.write_text(text)
    return path


def run_toy(path: Path, *args: str, env=None):
    return CliRunner().invoke(toy, ["--config", str(path), *args], env=env or {})


def test_file_values_become_defaults_and_flags_and_env_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[defaults]\nkey-env = "TEAM_KEY"\n\n[replay]\ntarget = "http://staging:1"\n'
        'speed = 5\nallow-host = "staging"\nallow-writes = true\n',
    )
    assert json.loads(run_toy(path, "replay").output) == [
        "http://staging:1", 5.0, ["staging"], True, "TEAM_KEY"
    ]  # fmt: skip
    flags = run_toy(path, "replay", "--target", "http://flag:2", "--speed", "2")
    assert json.loads(flags.output)[:2] == ["http://flag:2", 2.0]
    env = run_toy(path, "replay", env={"TOY_TARGET": "http://env:3"})
    assert json.loads(env.output)[0] == "http://env:3"


def test_a_command_table_beats_defaults_and_subcommands_have_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[defaults]\nkey-env = "A"\n[replay]\nkey_env = "B"\n[policy.init]\nout = "team.yaml"\n',
    )
    assert json.loads(run_toy(path, "replay").output)[4] == "B"
    assert run_toy(path, "policy", "init").output.strip() == "team.yaml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[replay]\ntraget = "x"\n',
            r"shadowtape.toml:2 \[replay\]: `shadowtape replay` has no option --traget",
        ),  # noqa: E501
        ('[replay]\nspeed = "fast"\n', r"shadowtape.toml:2 \[replay\]: speed = 'fast'"),
        ("[defaults]\nnot-an-option = 1\n", r"no shadowtape command has an option --not-an-option"),  # noqa: E501
    ],
)
def test_bad_keys_and_values_name_file_line_and_fix(tmp_path, text, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message):
        config = load_config(path, ["replay", "policy"])
        build_default_map(config, toy, click.Context(toy), only="replay")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[replay\n", r"not valid TOML"),
        ('target = "x"\n', r":1: `target` is outside any table; put it under \[defaults\]"),
        ("[nosuch]\na = 1\n", r":1: \[nosuch\] is not a shadowtape command; tables allowed:"),
        ("[defaults.replay]\na = 1\n", r"\[defaults\] holds options, not tables"),
    ],
)
def test_bad_files_are_refused_on_load(tmp_path, text, message) -> None:
    with pytest.raises(InputError, match=message):
        load_config(write(tmp_path, text), ["replay"])


def test_find_config_prefers_the_named_file_and_requires_it(tmp_path: Path) -> None:
    assert find_config(None, cwd=tmp_path) is None
    local = write(tmp_path, "")
    assert find_config(None, cwd=tmp_path) == local
    with pytest.raises(InputError, match="no such config file"):
        find_config(tmp_path / "missing.toml")


def test_effective_values_say_where_each_value_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, '[defaults]\nkey-env = "A"\n\n[replay]\nspeed = 3\n')
    config = load_config(path, ["replay", "policy"])
    rows = effective_values(config, toy, click.Context(toy), ["replay"], {"TOY_TARGET": "e"})
    by_option = {r.option: (r.value, r.source) for r in rows}
    assert by_option["--target"] == ("e", "env TOY_TARGET")
    assert by_option["--speed"] == (3, f"{path}:5 [replay]")
    assert by_option["--key-env"] == ("A", f"{path}:2 [defaults]")
    assert by_option["--allow-writes"] == (False, "default")
    assert by_option["--allow-host"] == ([], "default")


def test_shadowtape_reads_the_file_in_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHADOWTAPE_CONFIG", raising=False)
    monkeypatch.delenv("SHADOWTAPE_NO_CONFIG", raising=False)
    write(tmp_path, "[demo]\nrequests = 120\n")
    result = CliRunner().invoke(main, ["config", "show", "demo", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    values = {r["option"]: r for r in payload["values"]}
    assert values["--requests"]["value"] == 120
    assert values["--requests"]["source"].endswith("shadowtape.toml:2 [demo]")
    assert values["--seed"]["source"] == "default"
    ignored = CliRunner().invoke(main, ["--no-config", "config", "show", "demo", "--json"])
    assert json.loads(ignored.stdout)["config_file"] is None


def test_a_bad_file_is_one_line_and_exit_2_from_the_real_cli(tmp_path: Path) -> None:
    path = write(tmp_path, "[demo]\nrequets = 5\n")
    result = CliRunner().invoke(main, ["--config", str(path), "demo"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"shadowtape: error: {path}:2 [demo]: `shadowtape demo` has no option --requets; "
        "options it takes: --keep, --requests, --seed, --workdir"
    ]
    assert not (tmp_path / "demo-work").exists()


def test_config_show_refuses_unknown_commands() -> None:
    result = CliRunner().invoke(main, ["--no-config", "config", "show", "nosuch"])
    assert result.exit_code == 2
    assert "no command nosuch" in result.output


def test_empty_config_has_no_sections() -> None:
    assert Config().section("replay") == {}


def test_no_config_env_ignores_even_a_broken_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[nosuch]\n")
    broken = CliRunner().invoke(main, ["config", "show", "demo"], env={"SHADOWTAPE_CONFIG": ""})
    assert broken.exit_code == 2 and "[nosuch] is not a shadowtape command" in broken.stderr
    ignored = CliRunner().invoke(
        main, ["config", "show", "demo"], env={"SHADOWTAPE_NO_CONFIG": "1"}
    )
    assert ignored.exit_code == 0, ignored.output
    assert "config file: none" in ignored.stdout
    assert re.search(rf"^  --requests\s+{DEFAULT_REQUESTS}\s+default$", ignored.stdout, re.M)


def test_the_whole_tree_map_checks_shared_keys_too(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[defaults]\nspeeed = 2\n"), ["replay", "policy"])
    with pytest.raises(InputError, match="no shadowtape command has an option --speeed"):
        build_default_map(config, toy, click.Context(toy))
    good = load_config(write(tmp_path, "[defaults]\nspeed = 2\n"), ["replay", "policy"])
    assert build_default_map(good, toy, click.Context(toy))["replay"] == {"speed": 2}
