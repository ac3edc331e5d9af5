"""Route templates for scenarios, through one seam.

The grammar (`GET /users/{id}`: `{name}` is exactly one path segment, the method optional) is
the one the diff stage groups reports by, so a scenario names routes exactly as a report shows
them. It lives in `diff/routes.py` until the shared HTTP core (`shadowtape.http.routes`)
lands; this adapter is the only place that knows where, so switching is one import.
"""

from __future__ import annotations

from dataclasses import dataclass

from shadowtape.diff.routes import Template, compile_template, infer_template


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    text: str
    template: Template

    def matches(self, method: str, path: str | None) -> bool:
        t = self.template
        if t.method is not None and t.method != (method or "").upper():
            return False
        return bool(t.pattern.match((path or "/").split("?", 1)[0]))

    def matches_label(self, label: str) -> bool:
        """A report's route label, `GET /users/{id}`: placeholders match placeholders."""
        method, _, path = label.partition(" ")
        return self.matches(method, path or "/")


def route_label(method: str, path: str | None, recorded: str | None = None) -> str:
    """`GET /users/{id}`: the recorded route, else one inferred from the path's shape; what
    telemetry groups latencies by (raw paths would make one series per id)."""
    if recorded:
        return recorded if " " in recorded else f"{method} {recorded}"
    return f"{method} {infer_template((path or '/').split('?', 1)[0])}"


def compile_route(text: str) -> RouteTemplate:
    """Raises InputError (naming the template) when the text is not a template."""
    return RouteTemplate(text.strip(), compile_template(text))
