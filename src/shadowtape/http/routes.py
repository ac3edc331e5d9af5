"""Route templates: one grammar for `GET /users/{id}`, and inference of one from a path.

Grammar. A template is an optional method, a space, and a path starting with "/". In the path,
`{name}` is a placeholder: `name` is one or more characters other than `{`, `}` and `/` (so
OpenAPI's `{petId}`, `{pet-id}` and `{pet.id}` are all placeholders), and a placeholder stands
for exactly one non-empty path segment, or part of one (`/files/{name}.pdf`): it matches
`[^/]+`. Everything else is literal. A template matches a path (without its query) exactly,
with one optional trailing "/". Diff's route table, sanitize's path rules and replay's steps
all use this grammar, so a template means the same wherever a user writes it.

Compiled regexes name one group per placeholder. A group name must be a Python identifier and
unique, so `group_name` maps a placeholder to one: an identifier stands for itself (so a
policy's fingerprint, which includes the regex, is the same as before this module existed);
anything else, or a repeat, gets a reversible `_ph<hex>` name.

Specificity: more literal segments first, then a template naming a method before one for any
method, then by text, so `/users/me` wins over `/users/{id}` whatever order they came in.

Inference turns a concrete path into a template by the shape of each segment (`segment_kind`):
numbers, UUIDs, hex digests, dates, emails, long opaque tokens and shadowtape's own `stk_`
tokens, and long ids mixing digits into a word (`ord_8f3k2a91`). Words stay literal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\{([^{}/]+)\}")
SEGMENT_PATTERN = "[^/]+"
_GROUP_PREFIX = "_ph"


def group_name(placeholder: str, occurrence: int = 0) -> str:
    """The regex group name of a placeholder's `occurrence`-th appearance in a template."""
    if occurrence == 0 and placeholder.isidentifier() and not placeholder.startswith(_GROUP_PREFIX):
        return placeholder
    suffix = f"_{occurrence}" if occurrence else ""
    return _GROUP_PREFIX + placeholder.encode("utf-8", "surrogateescape").hex() + suffix


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    method: str | None  # upper-case; None: any method
    path: str
    placeholders: tuple[str, ...]  # in order, repeats kept
    regex: str  # the regex source, one named group per placeholder
    pattern: re.Pattern[str]
    literal_segments: int

    @property
    def label(self) -> str:
        return self.path

    def matches(self, method: str | None, path: str) -> bool:
        if self.method is not None and method is not None and self.method != method.upper():
            return False
        return self.pattern.match(path) is not None

    def spans(self, path: str) -> list[tuple[str, int, int]] | None:
        """(placeholder, start, end) of each placeholder in `path`, or None if no match."""
        m = self.pattern.match(path)
        if m is None:
            return None
        seen: dict[str, int] = {}
        out = []
        for name in self.placeholders:
            n = seen.get(name, 0)
            seen[name] = n + 1
            group = group_name(name, n)
            out.append((name, m.start(group), m.end(group)))
        return out

    @property
    def specificity(self) -> tuple[int, bool, str]:
        """Sort key: most specific first."""
        return (-self.literal_segments, self.method is None, self.path)


def template_regex(path: str) -> tuple[str, tuple[str, ...]]:
    """(regex source, placeholders) of a path template."""
    out = []
    names = []
    seen: dict[str, int] = {}
    pos = 0
    for m in PLACEHOLDER.finditer(path):
        name = m.group(1)
        n = seen.get(name, 0)
        seen[name] = n + 1
        names.append(name)
        out.append(re.escape(path[pos : m.start()]))
        out.append(f"(?P<{group_name(name, n)}>{SEGMENT_PATTERN})")
        pos = m.end()
    out.append(re.escape(path[pos:]))
    return "^" + "".join(out) + "/?$", tuple(names)


def compile_path(path: str, method: str | None = None) -> RouteTemplate:
    """A path template (no method part); ValueError when it does not start with "/"."""
    if not path.startswith("/"):
        raise ValueError(f"route template {path!r}: the path must start with '/'")
    regex, names = template_regex(path)
    literal = sum(1 for seg in path.split("/") if seg and not PLACEHOLDER.search(seg))
    return RouteTemplate(
        method=method.upper() if method else None,
        path=path,
        placeholders=names,
        regex=regex,
        pattern=re.compile(regex),
        literal_segments=literal,
    )


def parse_route(text: str, base_path: str = "") -> RouteTemplate:
    """`GET /users/{id}` or `/users/{id}`, the path put after `base_path` (an API's prefix)."""
    text = text.strip()
    method, _, path = text.partition(" ") if " " in text else ("", "", text)
    path = path.strip()
    if not path.startswith("/"):
        raise ValueError(f"route template {text!r}: the path must start with '/'")
    full = (base_path.rstrip("/") + path) if base_path else path
    return compile_path(full, method or None)


def most_specific_first(templates: Iterable[RouteTemplate]) -> list[RouteTemplate]:
    return sorted(templates, key=lambda t: t.specificity)


def route_label(method: str | None, path_template: str) -> str:
    """`GET /users/{id}`: how a route is written in results, reports and rules."""
    return f"{(method or 'GET').upper()} {path_template or '/'}"


# --- inference from a concrete path ------------------------------------------------------------

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_INT = re.compile(r"^-?\d+$")
_HEX = re.compile(r"^(?=.*\d)[0-9a-fA-F]{12,}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+Z?)?$")
_EMAIL = re.compile(r"^[^@/\s]+@[^@/\s]+\.[A-Za-z]{2,}$")
# Opaque tokens: long, and mixing letters with digits, so words like "notifications" stay.
_TOKEN = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-.~]{20,}$")
_KEYED_TOKEN = re.compile(r"^stk_[a-z2-7]+$")
# Shorter ids that mix digits into a word: ord_8f3k2a91, a1b2c3d4e5.
_MIXED_ID = re.compile(r"^(?=.*\d)[A-Za-z0-9_.~-]{10,}$")


def segment_placeholder(segment: str) -> str | None:
    """The placeholder an id-like path segment stands for, or None for a literal segment."""
    # The two commonest cases, a word and a number, decided without a regex.
    if not segment or segment.isalpha():
        return None
    if segment.isdigit() or _INT.match(segment):
        return "{id}"
    if _UUID.match(segment):
        return "{uuid}"
    if _HEX.match(segment):
        return "{hex}"
    if _DATE.match(segment):
        return "{date}"
    if _EMAIL.match(segment):
        return "{email}"
    if _TOKEN.match(segment) or _KEYED_TOKEN.match(segment):
        return "{token}"
    if _MIXED_ID.match(segment):
        return "{id}"
    return None


# Literal segments that only the regexes could clear ("v2", "logo.png"): a run meets the same
# few again and again, so they are remembered (a bounded set: ids never land here).
_LITERALS: set[str] = set()


def infer_template(path: str | None, *, fold: bool = False) -> str:
    """`/users/1234/orders/9f1c...` -> `/users/{id}/orders/{uuid}`; with `fold`, every
    placeholder is `{id}` (for grouping steps, where the kind of id does not matter)."""
    out = []
    for seg in (path or "/").split("/"):
        # Words and numbers, nearly every segment, settled without a call.
        if not seg or seg.isalpha() or seg in _LITERALS:
            out.append(seg)
        elif seg.isdigit():
            out.append("{id}")
        else:
            placeholder = segment_placeholder(seg)
            if placeholder is None:
                if len(_LITERALS) < 10_000:
                    _LITERALS.add(seg)
                out.append(seg)
            else:
                out.append("{id}" if fold else placeholder)
    return "/".join(out)
