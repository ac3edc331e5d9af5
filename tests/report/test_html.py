"""The HTML report in a real headless Chromium: no console errors, the planted drift shown."""

import pytest

from shadowtape.report import html
from shadowtape.report.aggregate import load_report


def _chromium():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "shadowtape_test_chromium", Path(__file__).with_name("chromium.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_html_is_self_contained(diffed):
    page = html.render(load_report(diffed / "_diff"))
    assert "<script src" not in page and '<link rel="stylesheet"' not in page
    for needle in ("http://", "https://", "//cdn"):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_html_report_in_headless_chromium(planted, diffed, tmp_path):
    cdp = _chromium()
    exe = cdp.find_chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run does it)")
    out = tmp_path / "report.html"
    out.write_text(html.render(load_report(diffed / "_diff")), encoding="utf-8")
    browser = cdp.Browser(exe, tmp_path / "profile", timeout=90)
    try:
        page = cdp.Page(browser)
        page.goto(out.as_uri())
        assert page.evaluate("document.title") == "shadowtape report"
        assert "Drift: 9 paths on 6 routes" in page.evaluate(
            "document.getElementById('verdict').textContent"
        )
        shown = page.evaluate(
            "Array.from(document.querySelectorAll('.finding.f-drift'))"
            ".map(e => e.closest('section').querySelector('h2').textContent + ' | ' +"
            " e.getAttribute('data-location'))"
        )
        expected = {f"{route} | {loc}" for route, _, loc, _ in planted.EXPECTED_DRIFT}
        assert set(shown) == expected
        # Examples side by side: recorded and staging values of the renamed field.
        row = page.evaluate(
            "Array.from(document.querySelectorAll('.finding.f-drift'))"
            ".find(e => e.getAttribute('data-location') === '$.total')"
            ".querySelector('tbody tr').innerText"
        )
        assert "6.0" in row and '"6.00"' in row
        # Sorting: click "Requests" twice (descending) and the busiest route comes first.
        first = page.evaluate(
            "(() => { const th = document.querySelectorAll('#routes th')[1];"
            " th.click(); th.click();"
            " return document.querySelector('#routes tbody tr td').textContent; })()"
        )
        assert first.startswith("GET /users/{id}")
        # Each route's two latency distributions side by side, drawn as bars on one scale.
        sides = page.evaluate(
            "Array.from(document.querySelectorAll('section.route .dists'))"
            ".map(d => Array.from(d.querySelectorAll('figure svg rect + rect'))"
            ".length > 0 && Array.from(d.querySelectorAll('figure')).map(f => f.dataset.side)"
            ".join('|'))"
        )
        assert sides and set(sides) == {"recorded|staging"}
        assert "Comparing recorded vs target" in page.evaluate(
            "document.getElementById('comparison').textContent"
        )
        png = page.screenshot()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        page.collect()
        assert page.errors == []
    finally:
        browser.close()


def test_the_harness_does_see_console_errors(tmp_path):
    cdp = _chromium()
    exe = cdp.find_chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run does it)")
    page_file = tmp_path / "bad.html"
    page_file.write_text("<html><body><script>console.error('boom'); undefinedFn();</script>")
    browser = cdp.Browser(exe, tmp_path / "profile", timeout=90)
    try:
        page = cdp.Page(browser)
        page.goto(page_file.as_uri())
        page.evaluate("1")
        assert len(page.errors) >= 2
    finally:
        browser.close()
