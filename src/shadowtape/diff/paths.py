"""JSON path spelling, one place for it: `$.items[3].price` as found, `$.items[*].price` for
grouping, so that a field is counted once per route however many array elements it sits in.

Keys that are not plain identifiers are quoted (`$["content-type"]`), so a key holding a dot
or a bracket can never be confused with structure.
"""

from __future__ import annotations

import json
import re

ROOT = "$"
WILDCARD = "[*]"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
# One step of a path: .key | ["quoted key"] | [index] | [key=value] | [*]
_STEP = re.compile(r'\.([A-Za-z_][A-Za-z0-9_\-]*|\*)|\[("(?:[^"\\]|\\.)*")\]|\[([^\]]*)\]')


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


def split(path: str) -> list[str]:
    """The steps of a path, each spelt as `key_step`/`index_step` would spell it.

    Raises ValueError on a path that is not ours, so a typo in an ignore file is reported
    instead of silently matching nothing.
    """
    if not path.startswith(ROOT):
        raise ValueError(f"JSON path {path!r} must start with '$'")
    steps = []
    pos = len(ROOT)
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise ValueError(f"JSON path {path!r}: cannot read it from {path[pos:]!r}")
        if m.group(1) is not None:
            steps.append("." + m.group(1))
        elif m.group(2) is not None:
            steps.append(key_step(json.loads(m.group(2))))
        else:
            steps.append("[" + m.group(3) + "]")
        pos = m.end()
    return steps


def _is_element(step: str) -> bool:
    return step.startswith("[") and not step.startswith('["')


def normalise(path: str) -> str:
    """`$.items[3].price` and `$.items[id=7].price` -> `$.items[*].price`."""
    return ROOT + "".join(WILDCARD if _is_element(s) else s for s in split(path))


def matches(pattern: str, location: str) -> bool:
    """Whether a pinned rule's path covers a normalised location.

    A rule covers the path itself and everything below it (`$.meta` covers
    `$.meta.generated_at`); `*` stands for any one key and `[*]` for any element.
    """
    if pattern == location:
        return True
    try:
        want = [WILDCARD if _is_element(s) else s for s in split(normalise(pattern))]
        have = split(location)
    except ValueError:
        return False
    if len(want) > len(have):
        return False
    for w, h in zip(want, have, strict=False):
        if w == h:
            continue
        if w == ".*" and not _is_element(h):
            continue
        return False
    return True
