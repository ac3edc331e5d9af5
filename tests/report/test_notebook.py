"""The drift notebook executes against a results dataset the tests make, so it cannot rot."""

import nbformat
from click.testing import CliRunner

from shadowtape.cli import main
from shadowtape.report.notebook import NOTEBOOK


def _text(nb):
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")))
            assert o.get("output_type") != "error", o
    return "\n".join(out)


def test_notebook_executes_via_report(diffed, tmp_path):
    out = tmp_path / "executed.ipynb"
    result = CliRunner().invoke(main, ["report", str(diffed), "--notebook", str(out)])
    assert result.exit_code == 0, result.output
    nb = nbformat.read(out, as_version=4)
    text = _text(nb)
    for needle in ("$.full_name", "$.items[*].price", "GET /reports/{id}", "p99_ratio"):
        assert needle in text
    assert any("image/svg+xml" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    # The canonical notebook is left untouched and the repo symlink points at it.
    assert not any(c.get("outputs") for c in nbformat.read(NOTEBOOK, 4).cells)


def test_notebook_failure_is_one_line(tmp_path, diffed):
    empty = tmp_path / "empty"
    empty.mkdir()
    from shadowtape.errors import ShadowtapeError
    from shadowtape.report.notebook import execute_notebook

    try:
        execute_notebook(empty, tmp_path / "x.ipynb")
    except ShadowtapeError as exc:
        assert "no results files" in str(exc)
    else:
        raise AssertionError("expected a failure")
    assert not (tmp_path / "x.ipynb").exists()
