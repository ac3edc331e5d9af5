"""Optional dependencies: which extra brings what, checked before any work is done.

A plain `pip install shadowtape` runs every stage; the drift notebook needs Jupyter, which is
heavy and only some users want, so it comes with the `notebook` extra. Commands ask here
first, so a missing package is one line before anything is written, never a failure halfway.
"""

from __future__ import annotations

import importlib.util

# The packages `report --notebook` needs: nbformat reads it, nbclient runs it in a kernel.
NOTEBOOK_MODULES = ("nbformat", "nbclient", "ipykernel")
NOTEBOOK_EXTRA = "shadowtape[notebook]"


def missing_modules(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def notebook_missing() -> list[str]:
    """The notebook packages that are not installed (none: `--notebook` can run)."""
    return missing_modules(NOTEBOOK_MODULES)


def notebook_install_hint(missing: list[str]) -> str:
    needs = f"the drift notebook needs Jupyter ({', '.join(NOTEBOOK_MODULES)})"
    if len(missing) == len(NOTEBOOK_MODULES):
        state = ", not installed here"
    else:
        state = f"; {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    return f"{needs}{state}: pip install '{NOTEBOOK_EXTRA}'"
