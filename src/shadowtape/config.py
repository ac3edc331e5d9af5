"""`shadowtape.toml`: defaults for every command, committed once by a team.

    [defaults]                      # any command that has the option
    key-env = "ACME_SHADOWTAPE_KEY"

    [replay]                        # one command; [policy.init] for a subcommand
    target = "http://staging.internal:8000"
    allow-host = ["staging.internal"]

    [report]
    fail-on = ["status_mismatch>0", "drift_rate>1%"]

Keys are option names as typed on the command line, without the dashes. The file becomes
click's `default_map`, so precedence is click's own: a flag on the command line, then the
option's environment variable, then this file (a command's table before [defaults]), then the
built-in default. Every value remembers the file and line it came from, so `config show` and
error messages can say where to look.

Validation is lazy on purpose: a command checks only its own table when it runs (importing
every stage to check the rest would cost seconds on every call); `config show` checks all.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from shadowtape.errors import InputError

CONFIG_FILE = "shadowtape.toml"
CONFIG_ENV = "SHADOWTAPE_CONFIG"
SHARED = "defaults"
# Tables that are not a command's options: [scenarios.NAME] and [governance], kept as parsed
# (with their lines) and checked by shadowtape.governance.scenarios.
EXTRA_TABLES = ("scenarios", "governance")
# Options of `shadowtape` itself that [defaults] may set: `audit-log = "audit/log.jsonl"` (a
# relative path is taken from the config file's directory) and `actor`.
ROOT_DEFAULTS = ("audit_log", "actor")

_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")


@dataclass(frozen=True, slots=True)
class Setting:
    """One value from the file and where it was written."""

    key: str
    value: Any
    path: Path
    section: str  # "replay", "policy.init", or "defaults"
    line: int | None

    @property
    def source(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where} [{self.section}]"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None = None
    sections: Mapping[str, Mapping[str, Setting]] = field(default_factory=dict)
    tables: Mapping[str, Any] = field(default_factory=dict)  # EXTRA_TABLES, as parsed
    lines: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Setting]:
        return self.sections.get(name, {})


def find_config(explicit: str | os.PathLike[str] | None, cwd: Path | None = None) -> Path | None:
    """The file to read: the one named (it must exist), else ./shadowtape.toml if present."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(f"{path}: no such config file (given with --config or ${CONFIG_ENV})")
        return path
    candidate = (cwd or Path.cwd()) / CONFIG_FILE
    return candidate if candidate.is_file() else None


def text_line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _line_numbers(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line, from a plain scan; tomllib keeps no positions."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            section = ".".join(part.strip().strip("\"'") for part in header.group(1).split("."))
            lines.setdefault((section, ""), number)
            continue
        key = _KEY.match(line)
        if key:
            name = next(g for g in key.groups() if g is not None)
            lines.setdefault((section, name), number)
    return lines


def load_config(path: Path, command_names: Iterable[str]) -> Config:
    """Parse and check the file's shape: tables named after commands, values not tables."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = text_line_of(path.read_bytes(), exc.start)
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); TOML files are "
            "UTF-8: save it as UTF-8"
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    lines = _line_numbers(text)
    known = sorted({*command_names, SHARED, *EXTRA_TABLES})
    extras: dict[str, Any] = {}
    sections: dict[str, dict[str, Setting]] = {}

    def walk(table: Mapping[str, Any], name: str) -> None:
        settings: dict[str, Setting] = {}
        for key, value in table.items():
            if isinstance(value, dict):
                if name == SHARED:
                    raise InputError(
                        f"{path}:{lines.get((name, key), '?')}: [{SHARED}] holds options, "
                        f"not tables; move [{SHARED}.{key}] to [{key}]"
                    )
                walk(value, f"{name}.{key}")
            else:
                settings[key] = Setting(key, value, path, name, lines.get((name, key)))
        if settings:
            sections[name] = settings

    for name, table in doc.items():
        if not isinstance(table, dict):
            raise InputError(
                f"{path}:{lines.get(('', name), '?')}: `{name}` is outside any table; put it "
                f"under [{SHARED}] (every command) or a command's table such as [replay]"
            )
        if name not in known:
            raise InputError(
                f"{path}:{lines.get((name, ''), '?')}: [{name}] is not a shadowtape command; "
                f"tables allowed: {', '.join(f'[{k}]' for k in known)}"
            )
        if name in EXTRA_TABLES:
            extras[name] = table
            continue
        walk(table, name)
    return Config(path, sections, extras, lines)


# --- matching the file to commands ---------------------------------------------------------


def _option_keys(param: click.Parameter) -> set[str]:
    """The names a file may use for an option: its long flags without dashes, and its name."""
    keys = {param.name or ""}
    for opt in [*param.opts, *param.secondary_opts]:
        if opt.startswith("--"):
            keys.add(opt[2:])
    keys |= {k.replace("_", "-") for k in keys}
    keys.discard("")
    return keys


def configurable_options(command: click.Command) -> list[click.Option]:
    """Options a file may set: everything but eager ones such as --help and --version."""
    return [p for p in command.params if isinstance(p, click.Option) and not p.is_eager]


def find_option(command: click.Command, key: str) -> click.Option | None:
    for option in configurable_options(command):
        if key in _option_keys(option):
            return option
    return None


def iter_commands(
    group: click.Group,
    ctx: click.Context,
    prefix: tuple[str, ...] = (),
    names: Iterable[str] | None = None,
    broken: dict[str, str] | None = None,
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under a group (or the named ones), depth first, groups included.

    A command whose module fails to import is named in `broken` (when given) and skipped, so
    one broken stage does not hide every other command's settings.
    """
    for name in group.list_commands(ctx) if names is None else names:
        try:
            command = group.get_command(ctx, name)
        except ImportError as exc:
            if broken is None:
                raise
            broken[name] = f"{type(exc).__name__}: {exc}"
            continue
        if command is None:
            continue
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from iter_commands(command, ctx, path, broken=broken)


def flag_of(option: click.Option) -> str:
    """The one spelling of an option in messages: its longest `--flag` (never a set's
    arbitrary pick, which changed from run to run)."""
    flags = sorted(
        (o for o in [*option.opts, *option.secondary_opts] if o.startswith("--")),
        key=lambda o: (-len(o), o),
    )
    return flags[0] if flags else f"--{(option.name or '').replace('_', '-')}"


def _checked_value(setting: Setting, option: click.Option, command: click.Command) -> Any:
    value = setting.value
    if option.multiple and not isinstance(value, list):
        value = [value]  # `allow-host = "x"` means a list of one, as a single flag would
    where = f"{setting.source}: {setting.key} = {setting.value!r} ({flag_of(option)})"
    if isinstance(value, list) and not option.multiple and option.nargs == 1:
        raise InputError(f"{where}: takes one value, not a list")
    try:
        option.type_cast_value(click.Context(command), value)
    except click.BadParameter as exc:
        raise InputError(f"{where}: {exc.message}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        # A TOML value of the wrong kind (a boolean for a path) fails inside click's type.
        kind = type(setting.value).__name__
        raise InputError(f"{where}: a {kind} is not a value for this option ({exc})") from None
    return value


def _section_defaults(
    config: Config, path: tuple[str, ...], command: click.Command, all_keys: set[str] | None
) -> dict[str, Any]:
    """The default_map entries for one command: its own table over [defaults]."""
    values: dict[str, Any] = {}
    for setting in config.section(SHARED).values():
        option = find_option(command, setting.key)
        if option is not None and option.name:
            values[option.name] = _checked_value(setting, option, command)
        elif all_keys is not None and setting.key not in all_keys:
            raise InputError(
                f"{setting.source}: no shadowtape command has an option --{setting.key}"
            )
    name = ".".join(path)
    for setting in config.section(name).values():
        option = find_option(command, setting.key)
        if option is None or not option.name:
            allowed = sorted(flag_of(o) for o in configurable_options(command))
            raise InputError(
                f"{setting.source}: `shadowtape {' '.join(path)}` has no option "
                f"--{setting.key}; options it takes: {', '.join(allowed) or 'none'}"
            )
        values[option.name] = _checked_value(setting, option, command)
    return values


def all_option_keys(
    root: click.Group, ctx: click.Context, broken: dict[str, str] | None = None
) -> set[str]:
    # Two of the root's own options may be set under [defaults] too (see ROOT_DEFAULTS).
    keys: set[str] = {
        k for o in configurable_options(root) if o.name in ROOT_DEFAULTS for k in _option_keys(o)
    }
    for _, command in iter_commands(root, ctx, broken=broken):
        for option in configurable_options(command):
            keys |= _option_keys(option)
    return keys


def build_default_map(
    config: Config,
    root: click.Group,
    ctx: click.Context,
    only: str | None = None,
) -> dict[str, Any]:
    """click's default_map for the whole tree, or for the one command about to run.

    Checking [defaults] keys that the running command lacks needs every command's options;
    those imports happen only when such a key exists.
    """
    default_map: dict[str, Any] = {}
    shared_keys = set(config.section(SHARED))
    all_keys = all_option_keys(root, ctx, broken={}) if shared_keys and only is None else None
    names = None if only is None else [only]
    for path, command in iter_commands(root, ctx, names=names):
        if all_keys is None and shared_keys and only is not None:
            own = {k for o in configurable_options(command) for k in _option_keys(o)}
            if not shared_keys <= own:
                all_keys = all_option_keys(root, ctx, broken={})
        values = _section_defaults(config, path, command, all_keys)
        node = default_map
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node.setdefault(path[-1], {}).update(values)
    return default_map


# --- `config show` ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EffectiveValue:
    command: str  # "replay", "policy init"
    option: str  # "--target"
    value: Any
    source: str  # "default", "env SHADOWTAPE_X", or "FILE:LINE [section]"


def effective_values(
    config: Config,
    root: click.Group,
    ctx: click.Context,
    commands: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    broken: dict[str, str] | None = None,
) -> list[EffectiveValue]:
    """What every option of every command (or the ones named) would be, and why."""
    environ = os.environ if environ is None else environ
    wanted = set(commands)
    all_keys = all_option_keys(root, ctx, broken)
    rows: list[EffectiveValue] = []
    for path, command in iter_commands(root, ctx, broken=broken):
        name = " ".join(path)
        if wanted and path[0] not in wanted and name not in wanted:
            continue
        from_file = _section_defaults(config, path, command, all_keys)
        tables = [config.section(".".join(path)), config.section(SHARED)]
        for option in configurable_options(command):
            flag = flag_of(option)
            envvars = option.envvar if isinstance(option.envvar, list | tuple) else [option.envvar]
            env_hit = next((e for e in envvars if e and environ.get(e)), None)
            if env_hit:
                rows.append(EffectiveValue(name, flag, environ[env_hit], f"env {env_hit}"))
            elif option.name in from_file:
                setting = next(
                    s for t in tables for k, s in t.items() if find_option(command, k) is option
                )
                rows.append(EffectiveValue(name, flag, from_file[option.name], setting.source))
            else:
                default = _builtin_default(option, command)
                rows.append(EffectiveValue(name, flag, default, "default"))
    return rows


def _builtin_default(option: click.Option, command: click.Command) -> Any:
    value = option.get_default(click.Context(command), call=False)
    if callable(value):
        return "(computed)"
    # click marks "no default" with a sentinel object; shown as nothing, like an unset flag.
    if type(value).__name__ == "Sentinel":
        return [] if option.multiple else None
    return value
