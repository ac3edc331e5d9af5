"""Case 10: without Jupyter (a plain `pip install shadowtape`), `report --notebook` says so in
one line BEFORE writing anything, and the demo runs its report step without the notebook,
saying why. (The real `pip install` into a fresh venv is checked by hand: see the report.)"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

import faultkit
import pytest

NOTEBOOK_MODULES = ("nbformat", "nbclient", "ipykernel")  # what --notebook needs


class _NoJupyter(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name.split(".")[0] in NOTEBOOK_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def no_jupyter(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_NoJupyter(), *sys.meta_path])
    for name in list(sys.modules):
        if name.split(".")[0] in NOTEBOOK_MODULES:
            monkeypatch.delitem(sys.modules, name)


def test_report_notebook_checks_its_packages_before_writing(no_jupyter, tmp_path):
    results = faultkit.results_dataset(tmp_path / "results")
    html, junit, nb = tmp_path / "r.html", tmp_path / "j.xml", tmp_path / "n.ipynb"
    result = faultkit.run_inprocess(
        "report", results, "--html", html, "--junit", junit, "--notebook", nb
    )
    assert result.exit_code == 1
    faultkit.assert_one_line(result.stderr, "--notebook", "pip install 'shadowtape[notebook]'")
    assert not html.exists() and not junit.exists() and not nb.exists()
    assert not (results / "_diff").exists()  # not even the diff was computed


def test_demo_report_step_runs_without_the_notebook(no_jupyter, tmp_path):
    from shadowtape.demo.pipeline import DemoOptions, DemoRun

    run = DemoRun(DemoOptions(workdir=tmp_path / "demo"), lambda _line: None)
    assert run.notebook is False
    step = run.step("report")
    (command,) = step.commands
    assert "--notebook" not in command and "--html" in command
    assert "notebook skipped" in step.note and "shadowtape[notebook]" in step.note


def test_demo_keeps_the_notebook_when_jupyter_is_there(tmp_path):
    pytest.importorskip("nbclient")
    from shadowtape.demo.pipeline import DemoOptions, DemoRun

    run = DemoRun(DemoOptions(workdir=tmp_path / "demo"), lambda _line: None)
    assert run.notebook is True and "--notebook" in run.step("report").commands[0]
