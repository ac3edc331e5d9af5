"""Endpoint templates: `GET /users/1234/orders/9f1c...` -> `GET /users/{id}/orders/{uuid}`.

Every count in a report is per route, so a route must stand for one endpoint whatever ids its
URLs carry. Templates come from, in order: the user's explicit templates or OpenAPI paths, the
route the recording already carries, and inference from the shape of each path segment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from shadowtape.errors import InputError

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_INT = re.compile(r"^-?\d+$")
_HEX = re.compile(r"^(?=.*\d)[0-9a-fA-F]{12,}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ][0-9:.]+Z?)?$")
_EMAIL = re.compile(r"^[^@/\s]+@[^@/\s]+\.[A-Za-z]{2,}$")
# Opaque tokens: long, and mixing letters with digits, so words like "notifications" stay.
_TOKEN = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-.~]{20,}$")
_PARAM = re.compile(r"\{([^{}/]+)\}")

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


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
    if _TOKEN.match(segment):
        return "{token}"
    return None


# Literal segments that only the regexes could clear ("v2", "logo.png"): a run meets the same
# few again and again, so they are remembered (a bounded set: ids never land here).
_LITERALS: set[str] = set()


def infer_template(path: str) -> str:
    out = []
    for seg in (path or "/").split("/"):
        # Words and numbers, nearly every segment, settled without a call.
        if not seg or seg.isalpha() or seg in _LITERALS:
            out.append(seg)
        elif seg.isdigit():
            out.append("{id}")
        else:
            placeholder = segment_placeholder(seg)
            if placeholder is None and len(_LITERALS) < 10_000:
                _LITERALS.add(seg)
            out.append(placeholder or seg)
    return "/".join(out)


@dataclass(frozen=True, slots=True)
class Template:
    method: str | None  # None: any method
    path: str
    pattern: re.Pattern[str]
    literal_segments: int

    @property
    def label(self) -> str:
        return self.path


def compile_template(text: str, base_path: str = "") -> Template:
    """`GET /users/{id}` or `/users/{id}`: `{name}` stands for exactly one path segment."""
    text = text.strip()
    method, _, path = text.partition(" ") if " " in text else ("", "", text)
    path = path.strip()
    if not path.startswith("/"):
        raise InputError(f"route template {text!r}: the path must start with '/'")
    full = (base_path.rstrip("/") + path) if base_path else path
    regex = ""
    pos = 0
    for m in _PARAM.finditer(full):
        regex += re.escape(full[pos : m.start()]) + r"[^/]+"
        pos = m.end()
    regex += re.escape(full[pos:])
    literal = sum(1 for seg in full.split("/") if seg and not _PARAM.search(seg))
    return Template(
        method=method.upper() or None,
        path=full,
        pattern=re.compile("^" + regex + "/?$"),
        literal_segments=literal,
    )


class RouteTable:
    """Turns (method, path, recorded route) into the route label reports group by."""

    def __init__(self, templates: Iterable[Template] = ()) -> None:
        # Most specific first, so `/users/me` wins over `/users/{id}`.
        self.templates = sorted(
            templates, key=lambda t: (-t.literal_segments, t.method is None, t.path)
        )
        self._cache: dict[tuple[str, str], str] = {}

    def route(self, method: str, path: str | None, recorded: str | None = None) -> str:
        method = (method or "GET").upper()
        path = path or "/"
        if "?" in path:
            path = path.split("?", 1)[0]
        key = (method, path)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        label = None
        for t in self.templates:
            if (t.method is None or t.method == method) and t.pattern.match(path):
                label = f"{method} {t.path}"
                break
        if label is None:
            if recorded:
                label = recorded if " " in recorded else f"{method} {recorded}"
            else:
                label = f"{method} {infer_template(path)}"
        # Paths carry ids, so the cache would grow with the data: keep it bounded.
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = label
        return label


def _openapi_templates(doc: dict, where: str) -> list[Template]:
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise InputError(f"{where}: an OpenAPI document without a 'paths' mapping")
    base = ""
    if isinstance(doc.get("basePath"), str):  # Swagger 2
        base = doc["basePath"]
    servers = doc.get("servers")
    if isinstance(servers, list) and servers and isinstance(servers[0], dict):
        url = str(servers[0].get("url", ""))
        scheme_end = url.find("://")
        rest = url[scheme_end + 3 :] if scheme_end != -1 else url
        slash = rest.find("/") if scheme_end != -1 else 0
        base = rest[slash:] if slash != -1 and rest.startswith("/", slash) else ""
    out = []
    for path, item in paths.items():
        methods = [m for m in (item or {}) if isinstance(item, dict) and m.lower() in _METHODS]
        if not methods:
            out.append(compile_template(str(path), base))
        for m in methods:
            out.append(compile_template(f"{m.upper()} {path}", base))
    return out


def load_routes(path: str | Path) -> RouteTable:
    """An OpenAPI/Swagger file (YAML or JSON), or a list of templates: a YAML list, a YAML
    mapping with `routes:`, or plain text with one template a line (# comments allowed)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read route templates ({exc.strerror})") from None
    if p.suffix.lower() not in (".json", ".yaml", ".yml"):
        return _template_lines(text.splitlines(), p)
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not valid YAML/JSON ({first}); fix the file") from None
    if isinstance(doc, dict) and ("openapi" in doc or "swagger" in doc):
        return RouteTable(_openapi_templates(doc, str(p)))
    if isinstance(doc, dict) and "routes" in doc:
        doc = doc["routes"]
    if isinstance(doc, str):
        doc = text.splitlines()
    if not isinstance(doc, list):
        raise InputError(
            f"{p}: expected an OpenAPI document or a list of templates such as 'GET /users/{{id}}'"
        )
    return _template_lines(doc, p)


def _template_lines(doc: list, p: Path) -> RouteTable:
    lines = [str(x).split("#", 1)[0].strip() for x in doc]
    try:
        return RouteTable(compile_template(line) for line in lines if line)
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None
