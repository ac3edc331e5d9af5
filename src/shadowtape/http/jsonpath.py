"""JSON paths: one grammar for the places in a JSON body that diff reports, sanitize rules
name and replay correlates.

Concrete paths (a location found in a document) are spelled one way, so the same field is
the same string in every stage: `$` the root, `.key` for a key that is a plain identifier
(letters, digits, `_` and `-`, not starting with a digit), `["key"]` (JSON string syntax)
for any other key, so a key holding a dot or a bracket is never read as structure, `[3]` an
array index, and `[id=42]` an array element that diff matched by its key field.
`normalise` turns every element step into `[*]` so a field is counted once however many
array elements it sits in: `$.items[3].price` -> `$.items[*].price`.

Patterns (rules written by a person) read a superset of what sanitize's policy and diff's
ignore files each accepted before they shared this module:
    .key  .*  ["quoted"]  ['quoted']  [3]  [*]  [field=value]  ..key  ..["quoted"]  ..*
where a bare key may also hold `$` and `@` (`$.@type`). `.*` and `[*]` are the same wildcard,
one step of any kind (key or element), as in RFC 9535; diff used to read `.*` as keys only.
`..key` is `key` at any depth (this level or below), `..*` any one or more steps.

Matching, two questions made explicit:
- `matches(pattern, path)`: the pattern names exactly this location (sanitize's rules).
- `covers(pattern, path)`: the location is the pattern's or below it, as `$.meta` covers
  `$.meta.generated_at` (diff's pinned rules).

Steps are tuples: ("key", name), ("index", n), ("keyed", field, value_text), ("any",),
("desc", name), ("desc_any",). A concrete path may also be given as a tuple of keys (str) and
indices (int), which is how a document walker holds it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

ROOT = "$"
WILDCARD = "[*]"

Step = tuple[Any, ...]
ANY: Step = ("any",)
DESC_ANY: Step = ("desc_any",)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_NAME = re.compile(r"[A-Za-z0-9_\-$@]+")
_INDEX = re.compile(r"\d+")
_DQ_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SQ_STRING = re.compile(r"'([^']*)'")


# --- spelling ----------------------------------------------------------------------------------


def key_step(key: str) -> str:
    """The path step that selects `key` in an object."""
    if _IDENT.match(key):
        return "." + key
    return "[" + json.dumps(key, ensure_ascii=False) + "]"


def index_step(index: int) -> str:
    return f"[{index}]"


def keyed_step(field: str, value: object) -> str:
    """An array element matched by its key field (`[id=42]`) rather than by position."""
    shown = value if isinstance(value, str) and _IDENT.match(value) else json.dumps(value)
    return f"[{field}={shown}]"


def spell_step(step: Step | str | int) -> str:
    if isinstance(step, str):
        return key_step(step)
    if isinstance(step, int):
        return index_step(step)
    kind = step[0]
    if kind == "key":
        return key_step(step[1])
    if kind == "index":
        return index_step(step[1])
    if kind == "keyed":
        return f"[{step[1]}={step[2]}]"
    if kind == "any":
        return WILDCARD
    if kind == "desc":
        spelled = key_step(step[1])
        return ("." if spelled.startswith(".") else "..") + spelled
    if kind == "desc_any":
        return "..*"
    raise ValueError(f"not a JSON path step: {step!r}")


def spell(steps: Sequence[Step | str | int]) -> str:
    """A path from its steps (or from a walker's keys and indices)."""
    return ROOT + "".join(spell_step(s) for s in steps)


# --- parsing -----------------------------------------------------------------------------------


def _fail(text: str, pos: int) -> ValueError:
    return ValueError(
        f"JSON path {text!r}: cannot read it from {text[pos:]!r} (character {pos + 1})"
    )


def _quoted(text: str, pos: int) -> tuple[str, int] | None:
    """A quoted key at `pos` (just after "["): its text and the position after it."""
    m = _DQ_STRING.match(text, pos)
    if m is not None:
        return json.loads(m.group(0)), m.end()
    m = _SQ_STRING.match(text, pos)
    if m is not None:
        return m.group(1), m.end()
    return None


def _bracket(text: str, pos: int) -> tuple[Step, int]:
    """One `[...]` step; `pos` is at the "["."""
    inner = pos + 1
    quoted = _quoted(text, inner)
    if quoted is not None:
        key, end = quoted
        if text.startswith("]", end):
            return ("key", key), end + 1
        raise _fail(text, pos)
    if text.startswith("*]", inner):
        return ANY, inner + 2
    m = _INDEX.match(text, inner)
    if m is not None and text.startswith("]", m.end()):
        return ("index", int(m.group(0))), m.end() + 1
    # [field=value]: the value may be a JSON string holding "]".
    eq = text.find("=", inner)
    if eq > inner:
        field = text[inner:eq]
        value_end = eq + 1
        m = _DQ_STRING.match(text, value_end)
        close = text.find("]", m.end() if m else value_end)
        if close != -1 and "[" not in field and "]" not in field:
            return ("keyed", field, text[eq + 1 : close]), close + 1
    raise _fail(text, pos)


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> tuple[Step, ...]:
    """The steps of a path or pattern; ValueError naming what cannot be read. `$` alone is
    the root (no steps)."""
    if not text.startswith(ROOT):
        raise ValueError(
            f"JSON path {text!r} must start with '$' (a JSON path starts with $, the root)"
        )
    steps: list[Step] = []
    pos = len(ROOT)
    n = len(text)
    while pos < n:
        if text.startswith("..", pos):
            after = pos + 2
            if text.startswith("*", after):
                steps.append(DESC_ANY)
                pos = after + 1
                continue
            if text.startswith("[", after):
                quoted = _quoted(text, after + 1)
                if quoted is not None and text.startswith("]", quoted[1]):
                    steps.append(("desc", quoted[0]))
                    pos = quoted[1] + 1
                    continue
                raise _fail(text, pos)
            m = _NAME.match(text, after)
            if m is None:
                raise _fail(text, pos)
            steps.append(("desc", m.group(0)))
            pos = m.end()
        elif text.startswith(".", pos):
            if text.startswith("*", pos + 1):
                steps.append(ANY)
                pos += 2
                continue
            m = _NAME.match(text, pos + 1)
            if m is None:
                raise _fail(text, pos)
            steps.append(("key", m.group(0)))
            pos = m.end()
        elif text.startswith("[", pos):
            step, pos = _bracket(text, pos)
            steps.append(step)
        else:
            raise _fail(text, pos)
    return tuple(steps)


def canonical(text: str) -> str:
    """The path spelled the one way (`$['a']` -> `$.a`); ValueError on a bad path."""
    return spell(parse(text))


def _is_element(step: Step) -> bool:
    return step[0] in ("index", "keyed")


def normalise(text: str) -> str:
    """`$.items[3].price` and `$.items[id=7].price` -> `$.items[*].price`."""
    return spell([ANY if _is_element(s) else s for s in parse(text)])


# --- matching ----------------------------------------------------------------------------------


def _concrete(path: Sequence[Step | str | int]) -> tuple[Step, ...]:
    out = []
    for seg in path:
        if isinstance(seg, str):
            out.append(("key", seg))
        elif isinstance(seg, int):
            out.append(("index", seg))
        else:
            out.append(tuple(seg))
    return tuple(out)


def _match(pattern: tuple[Step, ...], i: int, path: tuple[Step, ...], j: int, prefix: bool) -> bool:
    if i == len(pattern):
        return prefix or j == len(path)
    step = pattern[i]
    kind = step[0]
    if kind == "desc" or kind == "desc_any":
        wanted = ("key", step[1]) if kind == "desc" else None
        for k in range(j, len(path)):
            here = wanted is None or path[k] == wanted
            if here and _match(pattern, i + 1, path, k + 1, prefix):
                return True
        return False
    if j == len(path):
        return False
    if kind != "any" and path[j] != step:
        return False
    return _match(pattern, i + 1, path, j + 1, prefix)


def _steps(value: str | Sequence[Step]) -> tuple[Step, ...]:
    return parse(value) if isinstance(value, str) else tuple(value)


def matches(pattern: str | Sequence[Step], path: str | Sequence[Step | str | int]) -> bool:
    """Whether the pattern names exactly this location."""
    have = parse(path) if isinstance(path, str) else _concrete(path)
    return _match(_steps(pattern), 0, have, 0, False)


def covers(pattern: str | Sequence[Step], path: str | Sequence[Step | str | int]) -> bool:
    """Whether the location is the pattern's or anywhere below it."""
    have = parse(path) if isinstance(path, str) else _concrete(path)
    return _match(_steps(pattern), 0, have, 0, True)
