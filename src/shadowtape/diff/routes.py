"""Endpoint templates: `GET /users/1234/orders/9f1c...` -> `GET /users/{id}/orders/{uuid}`.

Every count in a report is per route, so a route must stand for one endpoint whatever ids its
URLs carry. Templates come from, in order: the user's explicit templates or OpenAPI paths, the
route the recording already carries, and inference from the shape of each path segment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import yaml

from shadowtape.errors import InputError
from shadowtape.http.routes import (
    RouteTemplate,
    infer_template,
    most_specific_first,
    parse_route,
    route_label,
)
from shadowtape.http.target import target_path

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def compile_template(text: str, base_path: str = "") -> RouteTemplate:
    """`GET /users/{id}` or `/users/{id}`, in the one grammar of http.routes."""
    try:
        return parse_route(text, base_path)
    except ValueError as exc:
        raise InputError(str(exc)) from None


class RouteTable:
    """Turns (method, path, recorded route) into the route label reports group by."""

    def __init__(self, templates: Iterable[RouteTemplate] = ()) -> None:
        # Most specific first, so `/users/me` wins over `/users/{id}`.
        self.templates = most_specific_first(templates)
        self._cache: dict[tuple[str, str], str] = {}

    def route(self, method: str, path: str | None, recorded: str | None = None) -> str:
        method = (method or "GET").upper()
        path = path or "/"
        if "?" in path:
            path = target_path(path)
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
                label = recorded if " " in recorded else route_label(method, recorded)
            else:
                label = route_label(method, infer_template(path))
        # Paths carry ids, so the cache would grow with the data: keep it bounded.
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = label
        return label


def _openapi_templates(doc: dict, where: str) -> list[RouteTemplate]:
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
