"""Executes the drift-analysis notebook against a results dataset and saves the executed copy.

The notebook ships inside the package (report/notebooks/), so `--notebook` works from an
installed wheel. Its `parameters` cell is followed by an injected cell that sets RESULTS (the
papermill convention), so the canonical notebook itself never changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shadowtape.errors import InputError, ShadowtapeError
from shadowtape.extras import notebook_install_hint, notebook_missing
from shadowtape.publish import atomic_file

NOTEBOOK = Path(__file__).parent / "notebooks" / "drift_analysis.ipynb"


def _inject(nb: Any, results: Path) -> None:
    import nbformat

    cell = nbformat.v4.new_code_cell(
        f"RESULTS = {str(results)!r}", metadata={"tags": ["injected-parameters"]}
    )
    for i, existing in enumerate(nb.cells):
        if "parameters" in existing.get("metadata", {}).get("tags", []):
            nb.cells.insert(i + 1, cell)
            return
    nb.cells.insert(0, cell)


def check_notebook_ready(out: str | os.PathLike[str]) -> None:
    """What `--notebook` needs, checked before the report writes anything: Jupyter installed
    and an .ipynb output name."""
    missing = notebook_missing()
    if missing:
        raise ShadowtapeError(f"--notebook: {notebook_install_hint(missing)}")
    if Path(out).suffix != ".ipynb":
        raise InputError(f"--notebook {out}: the output must end in .ipynb")


def execute_notebook(
    results: str | os.PathLike[str],
    out: str | os.PathLike[str],
    timeout_s: int = 600,
    notebook: Path = NOTEBOOK,
) -> Path:
    """Run every cell; on failure raise one line naming the cell, and write nothing."""
    check_notebook_ready(out)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    results_path = Path(results).resolve()
    out_path = Path(out)
    nb = nbformat.read(notebook, as_version=4)
    _inject(nb, results_path)
    client = NotebookClient(
        nb,
        timeout=timeout_s,
        kernel_name="python3",
        # The kernel's startup chatter (a transport notice) is not the user's business.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(results_path.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        last = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ShadowtapeError(
            f"notebook {notebook.name} failed on {results_path}: {last[-1] if last else exc}"
        ) from None
    except (CellTimeoutError, DeadKernelError) as exc:
        raise ShadowtapeError(f"notebook {notebook.name}: {type(exc).__name__}: {exc}") from None
    with atomic_file(out_path, "w", encoding="utf-8") as fh:
        nbformat.write(nb, fh)
    return out_path
