"""The sanitize policy: what to do with each part of an exchange, loaded from YAML or TOML.

A policy is validated completely on load. A mistake (an unknown key, an action that does not
exist, a JSON path that does not parse) is reported as one line naming the file, the line and
what is allowed, because a policy that silently does less than its author thinks is the worst
failure a scrubber can have.

`Policy` is plain frozen data (picklable, sent to worker processes); `PolicyRules` is the
compiled form with fast lookups that each process builds once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from shadowtape.errors import InputError
from shadowtape.http import jsonpath, routes

POLICY_VERSION = 1
ACTIONS = ("keep", "drop", "redact", "pseudonymize", "hash", "secret", "detect")
UNDECODABLE_ACTIONS = ("drop", "redact", "keep")
NAME_SECTIONS = ("headers", "cookies", "query", "form")
TOP_KEYS = (
    "version",
    "default",
    "undecodable_bodies",
    "redact_marker",
    "detect",
    "headers",
    "cookies",
    "query",
    "form",
    "json",
    "paths",
)
DETECT_KEYS = ("entities", "score_threshold")
PATH_RULE_KEYS = ("template", "regex", "method", "params")
DEFAULT_POLICY_NAME = "default_policy.yaml"


@dataclass(frozen=True, slots=True)
class Rule:
    action: str
    # Where the rule came from ("json:$..email"), for the manifest's per-rule counts.
    rule_id: str


@dataclass(frozen=True, slots=True)
class JsonPath:
    text: str
    # http.jsonpath steps: ("key", name) | ("index", n) | ("any",) | ("desc", name) |
    # ("desc_any",)
    steps: tuple[tuple[Any, ...], ...]

    @property
    def specificity(self) -> tuple[int, int]:
        has_desc = any(s[0].startswith("desc") for s in self.steps)
        literal = sum(1 for s in self.steps if s[0] in ("key", "index", "desc"))
        return (1 if has_desc else 0, -literal)

    def matches(self, path: tuple[str | int, ...]) -> bool:
        return jsonpath.matches(self.steps, path)


@dataclass(frozen=True, slots=True)
class PathRule:
    pattern: str  # a regex with named groups (templates are compiled to one)
    source: str  # the template or regex as written
    method: str | None
    params: tuple[tuple[str, Rule], ...]


@dataclass(frozen=True, slots=True)
class Policy:
    default: Rule
    undecodable_bodies: str
    redact_marker: str
    entities: tuple[str, ...]
    score_threshold: float
    headers: tuple[tuple[str, Rule], ...] = ()
    cookies: tuple[tuple[str, Rule], ...] = ()
    query: tuple[tuple[str, Rule], ...] = ()
    form: tuple[tuple[str, Rule], ...] = ()
    json: tuple[tuple[JsonPath, Rule], ...] = ()
    paths: tuple[PathRule, ...] = ()
    source: str = field(default="<default>", compare=False)

    @property
    def fingerprint(self) -> str:
        """Identifies what the policy does, not how its file is written."""
        data = asdict(self)
        data.pop("source")
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- loading --------------------------------------------------------------------------------


def default_policy_text() -> str:
    return resources.files("shadowtape.sanitize").joinpath(DEFAULT_POLICY_NAME).read_text()


def default_entities() -> list[str]:
    return list(yaml.safe_load(default_policy_text())["detect"]["entities"])


def default_policy() -> Policy:
    return parse_policy(default_policy_text(), "<built-in default policy>", "yaml")


def load_policy(path: str | Path | None) -> Policy:
    """The policy in `path` (YAML, or TOML by a .toml suffix), or the built-in default."""
    if path is None:
        return default_policy()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read policy file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: policy file is not UTF-8 text") from None
    return parse_policy(text, str(p), "toml" if p.suffix.lower() == ".toml" else "yaml")


def parse_policy(text: str, source: str, fmt: str = "yaml") -> Policy:
    doc = _YamlDoc(text, source) if fmt == "yaml" else _TomlDoc(text, source)
    return _PolicyBuilder(doc).build()


class _YamlDoc:
    """YAML with the line of every value, so errors can point at it."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[tuple[Any, ...], int] = {}
        # A loader only to turn scalar nodes into Python values the safe way.
        self._constructor = yaml.SafeLoader("")
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else 1
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"{source}:{line}: not valid YAML ({problem})") from None
        self.data = self._convert(node, ()) if node is not None else {}

    def _convert(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                out[key] = self._convert(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(n, (*path, i)) for i, n in enumerate(node.value)]
        return self._constructor.construct_object(node, deep=True)

    def line(self, path: tuple[Any, ...]) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


class _TomlDoc:
    """TOML has no positions in its parser; lines are found by the key's text."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.text_lines = text.splitlines()
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"line (\d+)", str(exc))
            line = int(match.group(1)) if match else 1
            raise InputError(f"{source}:{line}: not valid TOML ({exc})") from None

    def line(self, path: tuple[Any, ...]) -> int:
        for key in reversed(path):
            if isinstance(key, int):
                continue
            pattern = re.compile(
                rf"""^\s*(\[+\s*)?(.*\.)?["']?{re.escape(str(key))}["']?\s*(=|\])"""
            )
            for i, text in enumerate(self.text_lines, 1):
                if pattern.search(text):
                    return i
        return 1


class _PolicyBuilder:
    def __init__(self, doc: _YamlDoc | _TomlDoc) -> None:
        self.doc = doc

    def fail(self, path: tuple[Any, ...], message: str) -> InputError:
        return InputError(f"{self.doc.source}:{self.doc.line(path)}: {message}")

    def build(self) -> Policy:
        data = self.doc.data
        if not isinstance(data, dict):
            raise self.fail((), "a policy is a mapping of sections (see `shadowtape policy init`)")
        for key in data:
            if key not in TOP_KEYS:
                raise self.fail((key,), f"unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}")
        version = data.get("version", POLICY_VERSION)
        if version != POLICY_VERSION:
            raise self.fail(
                ("version",), f"policy version {version!r} is not supported; use version: 1"
            )
        detect = self._detect(data.get("detect", {}))
        marker = data.get("redact_marker", "[REDACTED]")
        if not isinstance(marker, str):
            raise self.fail(("redact_marker",), "redact_marker must be a string")
        undecodable = data.get("undecodable_bodies", "drop")
        if undecodable not in UNDECODABLE_ACTIONS:
            raise self.fail(
                ("undecodable_bodies",),
                f"undecodable_bodies is {undecodable!r}; allowed: {', '.join(UNDECODABLE_ACTIONS)}",
            )
        return Policy(
            default=self._rule(("default",), data.get("default", "detect"), "default"),
            undecodable_bodies=undecodable,
            redact_marker=marker,
            entities=detect[0],
            score_threshold=detect[1],
            headers=self._names("headers", data),
            cookies=self._names("cookies", data),
            query=self._names("query", data),
            form=self._names("form", data),
            json=self._json(data.get("json", {})),
            paths=self._paths(data.get("paths", [])),
            source=self.doc.source,
        )

    def _rule(self, path: tuple[Any, ...], value: Any, rule_id: str) -> Rule:
        if isinstance(value, dict):
            unknown = [k for k in value if k != "action"]
            if unknown:
                raise self.fail(
                    (*path, unknown[0]), f"unknown key {unknown[0]!r} in a rule; allowed: action"
                )
            value = value.get("action")
        if value not in ACTIONS:
            raise self.fail(path, f"unknown action {value!r}; allowed: {', '.join(ACTIONS)}")
        return Rule(value, rule_id)

    def _detect(self, section: Any) -> tuple[tuple[str, ...], float]:
        from shadowtape.sanitize.detectors import KNOWN_ENTITIES

        if not isinstance(section, dict):
            raise self.fail(("detect",), "detect must be a mapping with entities, score_threshold")
        for key in section:
            if key not in DETECT_KEYS:
                raise self.fail(
                    ("detect", key), f"unknown key {key!r}; allowed: {', '.join(DETECT_KEYS)}"
                )
        # Without an entities list, the built-in policy's list applies: leaving `detect` out
        # must not silently switch detection off.
        entities = section["entities"] if "entities" in section else default_entities()
        if not isinstance(entities, list):
            raise self.fail(("detect", "entities"), "detect.entities must be a list")
        for i, entity in enumerate(entities):
            if entity not in KNOWN_ENTITIES:
                raise self.fail(
                    ("detect", "entities", i),
                    f"unknown entity {entity!r}; allowed: {', '.join(KNOWN_ENTITIES)}",
                )
        threshold = section.get("score_threshold", 0.4)
        if (
            not isinstance(threshold, int | float)
            or isinstance(threshold, bool)
            or not 0 <= threshold <= 1
        ):
            raise self.fail(
                ("detect", "score_threshold"), "score_threshold must be a number from 0 to 1"
            )
        return tuple(entities), float(threshold)

    def _names(self, section: str, data: dict[str, Any]) -> tuple[tuple[str, Rule], ...]:
        rules = data.get(section, {})
        if not isinstance(rules, dict):
            raise self.fail((section,), f"{section} must be a mapping of name: action")
        out = []
        for name, action in rules.items():
            if not isinstance(name, str) or not name:
                raise self.fail((section, name), f"{section}: names must be non-empty strings")
            out.append((name.lower(), self._rule((section, name), action, f"{section}:{name}")))
        return tuple(out)

    def _json(self, rules: Any) -> tuple[tuple[JsonPath, Rule], ...]:
        if not isinstance(rules, dict):
            raise self.fail(("json",), "json must be a mapping of JSON path: action")
        out = []
        for text, action in rules.items():
            try:
                path = parse_json_path(str(text))
            except ValueError as exc:
                raise self.fail(
                    ("json", text),
                    f"bad JSON path {text!r} ({exc}); allowed forms: $.a.b, $.items[*].card, "
                    "$.items[0], $['a b'], $..name",
                ) from None
            out.append((path, self._rule(("json", text), action, f"json:{text}")))
        # Most specific first; file order breaks ties (sorted is stable).
        return tuple(sorted(out, key=lambda pr: pr[0].specificity))

    def _paths(self, rules: Any) -> tuple[PathRule, ...]:
        if not isinstance(rules, list):
            raise self.fail(("paths",), "paths must be a list of {template|regex, params}")
        out = []
        for i, entry in enumerate(rules):
            where = ("paths", i)
            if not isinstance(entry, dict):
                raise self.fail(where, "each paths entry is a mapping: {template|regex, params}")
            for key in entry:
                if key not in PATH_RULE_KEYS:
                    raise self.fail(
                        (*where, key),
                        f"unknown key {key!r}; allowed: {', '.join(PATH_RULE_KEYS)}",
                    )
            if ("template" in entry) == ("regex" in entry):
                raise self.fail(where, "a paths entry needs exactly one of template or regex")
            if "template" in entry:
                source = str(entry["template"])
                pattern, names = routes.template_regex(source)
                allowed = set(names)
            else:
                source = pattern = str(entry["regex"])
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise self.fail(
                    (*where, "regex"), f"bad regex {source!r} ({exc}); use Python regex syntax"
                ) from None
            if "regex" in entry:
                allowed = set(compiled.groupindex)
            params = entry.get("params", {})
            if not isinstance(params, dict) or not params:
                raise self.fail(
                    (*where, "params"), "params must map placeholder or group names to actions"
                )
            param_rules = []
            for name, action in params.items():
                if name not in allowed:
                    raise self.fail(
                        (*where, "params", name),
                        f"{name!r} is not a placeholder of {source!r}; "
                        f"allowed: {', '.join(sorted(allowed)) or '(none)'}",
                    )
                rule = self._rule((*where, "params", name), action, f"paths:{source}:{name}")
                param_rules.append((name, rule))
            method = entry.get("method")
            out.append(
                PathRule(
                    pattern=pattern,
                    source=source,
                    method=str(method).upper() if method else None,
                    params=tuple(param_rules),
                )
            )
        return tuple(out)


# --- JSON paths -----------------------------------------------------------------------------


def parse_json_path(text: str) -> JsonPath:
    """A rule's JSON path in the one grammar (http.jsonpath). A rule must name a member, and
    may not select elements by content (`[id=7]`): sanitize decides by position, so such a
    rule would silently match nothing."""
    steps = jsonpath.parse(text)
    if not steps:
        raise ValueError("the root $ alone names the whole body; name a member")
    if any(s[0] == "keyed" for s in steps):
        raise ValueError("[field=value] selects by content; a sanitize rule uses [*] or [n]")
    return JsonPath(text, steps)


# --- compiled form --------------------------------------------------------------------------


class PolicyRules:
    """Fast lookups over a Policy; built once per process."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._names = {s: self._name_table(getattr(policy, s)) for s in NAME_SECTIONS}
        self._name_cache: dict[tuple[str, str], Rule] = {}
        self._json_cache: dict[tuple[str | int, ...], Rule | None] = {}
        self._paths = [(re.compile(r.pattern), r) for r in policy.paths]
        # A template's placeholder names its regex group through http.routes.group_name;
        # a regex rule's params are its own group names.
        self._groups = {
            (r.pattern, name): name if name in regex.groupindex else routes.group_name(name)
            for regex, r in self._paths
            for name, _ in r.params
        }
        # Without index rules ($.items[0]) all array positions resolve alike, so they share
        # one cache entry instead of one per element.
        self._by_index = any(s[0] == "index" for p, _ in policy.json for s in p.steps)

    @staticmethod
    def _name_table(
        rules: tuple[tuple[str, Rule], ...],
    ) -> tuple[dict[str, Rule], list[tuple[str, Rule]], Rule | None]:
        exact = {n: r for n, r in rules if "*" not in n and "?" not in n}
        globs = [(n, r) for n, r in rules if ("*" in n or "?" in n) and n != "*"]
        star = next((r for n, r in rules if n == "*"), None)
        return exact, globs, star

    def name_rule(self, section: str, name: str) -> Rule:
        """The rule for a header, cookie, query parameter or form field name."""
        key = (section, name)
        rule = self._name_cache.get(key)
        if rule is None:
            exact, globs, star = self._names[section]
            low = name.lower()
            rule = exact.get(low)
            if rule is None:
                rule = next((r for n, r in globs if fnmatch.fnmatchcase(low, n)), None)
            if rule is None:
                rule = star or self.policy.default
            if len(self._name_cache) > 100_000:
                self._name_cache.clear()
            self._name_cache[key] = rule
        return rule

    def json_rule(self, path: tuple[str | int, ...]) -> Rule | None:
        """The rule for one JSON location, or None when no JSON rule names it."""
        if not self.policy.json:
            return None
        key = path if self._by_index else tuple(0 if isinstance(s, int) else s for s in path)
        if key in self._json_cache:
            return self._json_cache[key]
        rule = next((r for p, r in self.policy.json if p.matches(key)), None)
        if len(self._json_cache) > 100_000:
            self._json_cache.clear()
        self._json_cache[key] = rule
        return rule

    def path_params(self, method: str, path: str) -> list[tuple[int, int, Rule]]:
        """Spans of `path` that a path rule names, with their rules; the first rule that
        matches the path wins."""
        for regex, rule in self._paths:
            if rule.method and rule.method != method.upper():
                continue
            m = regex.search(path)
            if m is None:
                continue
            out = []
            for name, param_rule in rule.params:
                group = self._groups[(rule.pattern, name)]
                if m.group(group) is not None:
                    out.append((m.start(group), m.end(group), param_rule))
            return sorted(out, key=lambda t: t[0])
        return []
