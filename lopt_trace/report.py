"""A self-contained HTML report of a store: analogues of Figs. 1 and 3–7 of the paper, Fig. 8
(the mechanisms along the meta-training history) and Fig. 9 (distillation: how much of the learned
optimizer the mechanisms explain), each with its caption and key numbers
(``lopt-trace report STORE --out report.html [--png DIR]``).

The figures are drawn from the store's ``/analysis/<recipe>`` results (computed and written first
when missing, unless ``compute=False``) with the same plotting functions as the dashboard. The
page inlines Bokeh's JavaScript and CSS, so it opens offline. ``png_dir`` also writes each figure
as a PNG through Bokeh's ``export_png``, which drives a headless Chromium with chromedriver
(Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

from bokeh.core.templates import CSS_RESOURCES, JS_RESOURCES
from bokeh.embed import components
from bokeh.embed.bundle import bundle_for_objs_and_resources
from bokeh.io import export_png
from bokeh.resources import INLINE
from tqdm.auto import tqdm

from lopt_trace import recipes_loader
from lopt_trace.dashboard.data import RECIPE_ROLES, StoreView, human_bytes
from lopt_trace.dashboard.style import hv
from lopt_trace.errors import UserError
from lopt_trace.store.zarr_io import exists
from lopt_trace.report_figures import (FIGURES, Figure, figure_1, figure_3, figure_4,  # noqa: F401
                                       figure_5, figure_6, figure_7, figure_8, figure_9)


@dataclasses.dataclass
class ReportResult:
    path: str
    size: int
    figures: list
    pngs: list
    seconds: float


#: recipe behind each figure, in order (the registry's)
RECIPES = recipes_loader.ORDER


def _not_applicable(view: StoreView, recipe: str) -> str | None:
    """Why ``recipe`` cannot run on this store (emergence without a history), or None."""
    check = getattr(recipes_loader.load(recipe), "not_applicable", None)
    return check(view.tree) if check is not None else None


def collect(view: StoreView, compute: bool = True, progress: bool = False) -> list[Figure]:
    """Compute missing analyses (when ``compute``), then draw every figure."""
    problems = {}
    if compute and view.writable:  # not distill: it runs new problems (`lopt-trace distill`)
        missing = [r for r in RECIPES if view.analysis(r) is None and r not in recipes_loader.ON_DEMAND
                   and not _not_applicable(view, r)]
        for recipe in tqdm(missing, desc="analyses", disable=not progress):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    view.compute(recipe)
            except Exception as exc:  # noqa: BLE001 - the figure says what went wrong
                problems[recipe] = f"`{view.command(recipe)}` failed: {type(exc).__name__}: {exc}"
    figs = []
    for make, recipe in zip(FIGURES, RECIPES):
        try:
            fig = make(view)
        except Exception as exc:  # noqa: BLE001
            fig = Figure(make.__name__.replace("ure_", ""), make.__name__, recipe, "",
                         problem=f"could not draw: {type(exc).__name__}: {exc}")
        if recipe in problems:
            fig.problem = (fig.problem + "; " if fig.problem else "") + problems[recipe]
        figs.append(fig)
    return figs


# -- HTML --------------------------------------------------------------------------------------
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; font-size: 0.92em; }
section.figure { border-top: 1px solid #ddd; margin-top: 2em; padding-top: 1em; }
.caption { font-size: 0.95em; max-width: 1000px; } .summary { font-family: monospace; font-size: 0.88em;
  background: #f6f8fa; padding: 0.5em 0.8em; border-radius: 4px; white-space: pre-wrap; }
table.numbers { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
table.numbers td { border: 1px solid #ddd; padding: 2px 10px; } .missing { color: #9a6700; }
"""


def render_html(view: StoreView, figs: list[Figure], title: str | None = None) -> str:
    """The report page: Bokeh inlined, one section per figure."""
    h = hv()
    models = {f.key: h.render(f.plot, backend="bokeh") for f in figs if f.ok}
    script, divs = components(models) if models else ("", {})
    # only the JavaScript these plots need, inlined (not every extension that happens to be
    # imported, such as Panel's, whose module shims would be fetched from a server)
    bundle = bundle_for_objs_and_resources(list(models.values()), INLINE)
    # every file Bokeh needs is inlined in js_raw/css_raw; js_files would only be fetched
    resources = (CSS_RESOURCES.render(css_files=[], css_raw=bundle.css_raw)
                 + JS_RESOURCES.render(js_files=[], js_raw=bundle.js_raw))
    a = view.attrs
    title = title or f"lopt-trace report · {a.get('task', '?')}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'>store <code>{html.escape(view.label)}</code> · task "
             f"{html.escape(str(a.get('task', '?')))} · optimizers {html.escape(', '.join(view.optimizers))} · "
             f"{a.get('steps', '?')} steps · store size {human_bytes(view.size_bytes())} · created "
             f"{html.escape(str(a.get('created', '?')))} · report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
             "<ul>" + "".join(f"<li><a href='#{f.key}'>{html.escape(f.title)}</a></li>" for f in figs) + "</ul>"]
    for f in figs:
        body = [f"<section class='figure lopt-{f.key}' id='{f.key}' data-figure='{f.key}' "
                f"data-ok='{str(f.ok).lower()}'>",
                f"<h2>{html.escape(f.title)}</h2>"]
        if f.ok:
            body.append(f"<div class='plot'>{divs[f.key]}</div>")
        if f.problem:
            body.append(f"<p class='missing'>{html.escape(f.problem)}</p>")
        body.append(f"<p class='caption'><b>{html.escape(f.title.split(' · ')[0])}.</b> {html.escape(f.caption)}</p>")
        if f.summary:
            body.append(f"<p class='summary'>{html.escape(f.summary)}</p>")
        if f.numbers:
            body.append("<table class='numbers'>" + "".join(
                f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in f.numbers)
                + "</table>")
        body.append("</section>")
        parts.append("\n".join(body))
    roles = "".join(f"<li><code>{r}</code>: {html.escape(t)}</li>" for r, t in RECIPE_ROLES.items())
    parts.append(f"<section class='figure'><h2>About</h2><p class='caption'>Figures are drawn from the "
                 f"store's <code>/analysis/&lt;recipe&gt;</code> groups:</p><ul>{roles}</ul></section>")
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>{html.escape(title)}</title>\n<link rel='icon' href='data:,'>\n<style>{STYLE}</style>\n"
            f"{resources}\n</head>\n"
            f"<body>\n{''.join(parts)}\n{script}\n</body>\n</html>\n")


# -- PNG ---------------------------------------------------------------------------------------
def check_png_export() -> tuple[str, str]:
    """The paths of Chromium and chromedriver that PNG export uses, found without starting them;
    a :class:`UserError` that says what to install when they (or selenium) are missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise UserError("PNG export needs Chromium and chromedriver; install them with "
                        "`apt-get install chromium chromium-driver` (Debian/Ubuntu)")
    try:  # selenium is optional (the test extra): only PNG export needs it
        import selenium  # noqa: F401
    except ImportError:
        raise UserError("PNG export needs selenium; install it with `pip install selenium`") from None
    return chromium, driver


def chrome_webdriver():
    """A headless Chromium driven by chromedriver (Debian's packages), for Bokeh's export_png."""
    chromium, driver = check_png_export()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def export_pngs(plots, driver=None) -> list[str]:
    """Each ``(HoloViews object, path)`` of ``plots`` as a PNG, without the toolbar, through one
    headless Chromium (``driver``; default a new :func:`chrome_webdriver`, quit at the end).

    Chromium's console notes that bokeh's export logs as warnings (WebGL "GPU stall due to
    ReadPixels") are silenced; errors still show."""
    h = hv()
    own = driver is None
    driver = driver or chrome_webdriver()
    log = logging.getLogger("bokeh.io.export")
    level = log.level
    log.setLevel(logging.ERROR)
    written = []
    try:
        for plot, path in plots:
            model = h.render(plot, backend="bokeh")
            for part in [model, *model.references()]:  # a static image has no use for tools
                if hasattr(part, "toolbar_location"):
                    part.toolbar_location = None
            export_png(model, filename=str(path), webdriver=driver)
            written.append(str(path))
    finally:
        log.setLevel(level)
        if own:
            driver.quit()
    return written


def write_pngs(figs: list[Figure], out_dir, driver=None) -> list[str]:
    """Each drawn figure as ``out_dir/<key>.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return export_pngs([(f.plot, out_dir / f"{f.key}.png") for f in figs if f.ok], driver)


def write_report(store, out, png_dir=None, compute: bool = True, overwrite: bool = False,
                 progress: bool = False, title: str | None = None) -> ReportResult:
    """Write the HTML report of ``store`` to ``out`` (and PNGs to ``png_dir``)."""
    started = time.perf_counter()
    store_path = os.fspath(store) if not hasattr(store, "subtree") else None
    if store_path is not None and not exists(store_path):
        raise UserError(f"no store at {store_path}; record one with `lopt-trace record --task TASK`")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    if png_dir is not None:
        chrome_webdriver().quit()  # fail before the (long) analyses when PNGs cannot be made
    view = StoreView(store)
    figs = collect(view, compute=compute, progress=progress)
    page = render_html(view, figs, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    pngs = write_pngs(figs, png_dir) if png_dir is not None else []
    return ReportResult(str(out), out.stat().st_size, figs, pngs, time.perf_counter() - started)


__all__ = ["write_report", "collect", "render_html", "write_pngs", "chrome_webdriver", "Figure",
           "ReportResult", "FIGURES"]
