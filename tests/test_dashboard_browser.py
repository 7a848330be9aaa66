"""The dashboard and the HTML report in a real browser: Debian's headless Chromium driven by
playwright (``executable_path``; no browser download). Screenshots of every tab go to
``test-artifacts/``.

Skipped when Chromium or playwright is missing, except under CI (``CI`` set), where .ci/run
installs Chromium and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lopt_trace.dashboard.screenshots import (CANVASES, TABS, free_port, start_dashboard, tab_class,
                                              wait_for_server)

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
#: Bokeh plots each tab must show (the full store has every analysis)
PLOTS = {"Overview": 2, "State space": 3, "Update functions": 2, "Linear dynamics": 2, "Gradients": 2,
         "Emergence": 2, "Distillation": 2}

def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        exe = None
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium or playwright is missing in CI: .ci/run installs chromium; "
                        "pip install '.[test]' installs playwright")
        pytest.skip("needs Debian's chromium (apt-get install chromium) and playwright")
    return exe


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(full_store):
    store = full_store
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "dashboard-server.log", "w")
    started = time.perf_counter()
    proc, url = start_dashboard(store, free_port(), stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_server(proc, url, timeout=120.0)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}; see {log.name}") from None
        yield url, time.perf_counter() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _watch(page):
    errors = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    return errors


def _plots(page, expected: int, root: str | None = None, timeout: float = 60.0):
    """Wait until at least ``expected`` canvases under the CSS class ``root`` (a tab's content;
    the page when None) have ink; return (all canvases, those with ink)."""
    deadline = time.time() + timeout
    while True:
        canv = page.evaluate(CANVASES, root)
        inked = [c for c in canv if c["ink"] > 0.002]
        if len(inked) >= expected or time.time() > deadline:
            return canv, inked
        page.wait_for_timeout(300)


def _click_tab(page, title):
    page.locator(".bk-tab", has_text=title).first.click()


@pytest.mark.slow
def test_every_tab_renders_its_plots(browser, server):
    url, ready = server
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors = _watch(page)
    t0 = time.perf_counter()
    page.goto(url)
    canv, inked = _plots(page, PLOTS["Overview"], tab_class("Overview"))
    opened = time.perf_counter() - t0
    print(f"\ndashboard: server ready {ready:.1f} s after start; Overview plots drawn {opened:.1f} s after load")
    for title in TABS:
        if title != "Overview":
            _click_tab(page, title)
            page.wait_for_timeout(300)
            canv, inked = _plots(page, PLOTS[title], tab_class(title))
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{title.lower().replace(' ', '-')}.png"), full_page=True)
        assert canv, f"{title}: no Bokeh canvas"
        assert len(inked) >= PLOTS[title], f"{title}: {len(inked)} non-blank plots of {PLOTS[title]}: {canv}"
        assert not errors, f"{title}: {errors}"
    page.close()


def test_a_widget_change_updates_a_plot(browser, server):
    url, _ = server
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors = _watch(page)
    page.goto(url)
    _click_tab(page, "Gradients")
    _, before = _plots(page, PLOTS["Gradients"], tab_class("Gradients"))
    page.locator(".bk-btn", has_text="kind").first.click()  # group the histograms by kind
    deadline = time.time() + 30
    while time.time() < deadline:
        page.wait_for_timeout(300)
        _, after = _plots(page, PLOTS["Gradients"], tab_class("Gradients"))
        if [c["sig"] for c in after] != [c["sig"] for c in before]:
            break
    assert [c["sig"] for c in after] != [c["sig"] for c in before], "the histogram did not change"
    page.screenshot(path=str(ARTIFACTS / "dashboard-gradients-by-kind.png"), full_page=True)
    # Overview: switching the loss axis from log to linear redraws the loss curves
    _click_tab(page, "Overview")
    _, before = _plots(page, PLOTS["Overview"], tab_class("Overview"))
    box = page.locator(f".{tab_class('Overview')} input[type=checkbox]").first
    box.click()  # the "log loss axis" checkbox itself (a click on its label text can miss it)
    assert not box.is_checked()
    deadline = time.time() + 30
    while time.time() < deadline:
        page.wait_for_timeout(300)
        _, after = _plots(page, PLOTS["Overview"], tab_class("Overview"))
        if sorted(c["sig"] for c in after) != sorted(c["sig"] for c in before):
            break
    assert sorted(c["sig"] for c in after) != sorted(c["sig"] for c in before), "the loss plot did not change"
    assert not errors, errors
    page.close()


@pytest.mark.slow
def test_the_report_opens_offline_with_every_figure(browser, full_store):
    from lopt_trace.report import FIGURES, write_report

    out = ARTIFACTS / "report.html"
    pngs = ARTIFACTS / "report-png"
    shutil.rmtree(pngs, ignore_errors=True)
    png_dir = pngs if shutil.which("chromedriver") or os.environ.get("CI") else None
    res = write_report(full_store, out, compute=False, overwrite=True)
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = _watch(page)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.as_uri())
    figures = page.locator("section.figure[data-figure]")
    assert figures.count() == len(FIGURES)
    for i in range(figures.count()):
        fig = figures.nth(i)
        key = fig.get_attribute("data-figure")
        fig.scroll_into_view_if_needed()
        assert fig.get_attribute("data-ok") == "true", fig.inner_text()[:300]
        assert fig.locator(".caption").inner_text().strip()
        assert fig.locator("table.numbers tr").count() >= 1
        _, inked = _plots(page, 2, f"lopt-{key}")  # every figure has at least two panels
        assert len(inked) >= 2, f"{key}: {len(inked)} drawn plots"
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)
    assert not [u for u in requests if not u.startswith(("file:", "data:", "blob:"))], requests
    assert not errors, errors
    if png_dir is not None:  # --png: one figure is enough to test the export (each takes seconds)
        from lopt_trace.report import write_pngs

        pngs = write_pngs(res.figures[1:2], png_dir)
        assert [Path(p).name for p in pngs] == ["fig3.png"]
        for p in pngs:
            head = Path(p).read_bytes()[:8]
            assert head == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 10_000
    page.close()
