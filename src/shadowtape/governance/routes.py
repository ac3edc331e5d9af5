"""Route templates for scenarios and telemetry, in the one grammar of the HTTP core.

`shadowtape.http.routes` defines it (`GET /users/{id}`: `{name}` is one path segment or part
of one, the method optional), and diff groups reports by it, so a scenario names routes exactly
as a report shows them. This module only adds what governance needs on top: a template that
keeps the text it was written as, matching against a report's route label, and an InputError
(exit 2) instead of the core's ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

from shadowtape.errors import InputError
from shadowtape.http import routes as core
from shadowtape.http.target import target_path


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    text: str
    template: core.RouteTemplate

    def matches(self, method: str, path: str | None) -> bool:
        return self.template.matches(method or None, target_path(path or "/"))

    def matches_label(self, label: str) -> bool:
        """A report's route label, `GET /users/{id}`: placeholders match placeholders."""
        method, _, path = label.partition(" ")
        return self.matches(method, path or "/")


def route_label(method: str, path: str | None, recorded: str | None = None) -> str:
    """`GET /users/{id}`: the recorded route, else one inferred from the path's shape; what
    telemetry groups latencies by (raw paths would make one series per id)."""
    if recorded:
        return recorded if " " in recorded else core.route_label(method, recorded)
    return core.route_label(method, core.infer_template(target_path(path or "/")))


def compile_route(text: str) -> RouteTemplate:
    """Raises InputError (naming the template) when the text is not a template."""
    try:
        return RouteTemplate(text.strip(), core.parse_route(text))
    except ValueError as exc:
        raise InputError(str(exc)) from None
