"""Screenshots of every dashboard tab, and how long the dashboard takes to open.

    python -m lopt_trace.dashboard.screenshots STORE --out docs/screenshots [--width 1400]

starts ``lopt-trace dashboard STORE`` on a free local port, opens it in Debian's headless Chromium
(playwright with ``executable_path``; no browser download), waits on each tab until its Bokeh
plots are drawn, saves ``<out>/<tab>.png`` and prints the timings: server start to first answer,
page load to the Overview's plots drawn, and each tab's first render. Needs ``chromium``
(``apt-get install chromium``) and ``playwright`` (``pip install playwright``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from lopt_trace.dashboard.app import TABS as _APP_TABS, slug

#: every tab of the dashboard, in its order
TABS = tuple(title for title, _ in _APP_TABS)

#: JavaScript: the Bokeh plot canvases under the element with CSS class ``root`` (a tab's content,
#: ``lopt-tab-<slug>``; the whole page when null), found through open shadow roots, each with the
#: share of sampled pixels that are neither transparent nor white. Bokeh draws a plot on a main
#: canvas plus an overlay canvas that stays empty until a tool draws on it.
CANVASES = """(root) => {
  const all = (node, out) => {
    for (const el of node.querySelectorAll('*')) {
      out.push(el);
      if (el.shadowRoot) all(el.shadowRoot, out);
    }
    return out;
  };
  let scope = document;
  if (root) {
    const hit = all(document, []).find(el => el.classList && el.classList.contains(root));
    if (!hit) return [];
    scope = hit.shadowRoot || hit;
  }
  return all(scope, []).filter(el => el.tagName === 'CANVAS' && el.width > 100 && el.height > 100)
    .map(c => {
      const d = c.getContext('2d', {willReadFrequently: true}).getImageData(0, 0, c.width, c.height).data;
      let ink = 0, n = 0;
      for (let i = 0; i < d.length; i += 4 * 31) {
        n++;
        if (d[i + 3] > 0 && !(d[i] > 240 && d[i + 1] > 240 && d[i + 2] > 240)) ink++;
      }
      return {w: c.width, h: c.height, ink: ink / n, sig: c.toDataURL().length + ':' + c.toDataURL().slice(-160)};
    });
}"""


def tab_class(title: str) -> str:
    return "lopt-tab-" + slug(title)


def drawn_plots(page, expected: int, root: str | None = None, timeout: float = 120.0,
                settle: float = 1.0) -> tuple[int, float]:
    """Wait until at least ``expected`` canvases under ``root`` (a CSS class) have ink and their
    number has not changed for ``settle`` seconds (or ``timeout``). Returns (how many, seconds
    until the last of them was drawn)."""
    start = time.time()
    deadline = start + timeout
    last, since = -1, start
    while True:
        n = sum(c["ink"] > 0.002 for c in page.evaluate(CANVASES, root))
        now = time.time()
        if n != last:
            last, since = n, now
        if (n >= expected and now - since >= settle) or now > deadline:
            return n, since - start
        page.wait_for_timeout(100)


def _shrink(path: Path) -> None:
    """Re-save a screenshot with a 256-colour palette (a few times smaller; plots lose nothing)."""
    try:
        from PIL import Image  # optional: without Pillow screenshots stay as they are
    except ImportError:
        return
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(store: str, port: int, **popen_kwargs) -> tuple[subprocess.Popen, str]:
    """``lopt-trace dashboard STORE`` on ``127.0.0.1:port`` in a subprocess; returns it and its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "lopt_trace.cli", "dashboard", str(store), "--port",
                             str(port), "--address", "127.0.0.1", "--no-show"], **popen_kwargs)
    return proc, f"http://127.0.0.1:{port}/"


def wait_for_server(proc: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    """Return once ``url`` answers 200; raise RuntimeError if ``proc`` exits or ``timeout`` passes."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited with code {proc.returncode}")
        try:  # a loaded machine can take many seconds to render the first page: wait for it
            with urllib.request.urlopen(url, timeout=max(1.0, min(30.0, deadline - time.perf_counter()))) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the dashboard did not answer within {timeout:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lopt_trace.dashboard.screenshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--out", default="docs/screenshots", help="folder for the PNGs")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=950)
    p.add_argument("--plots", default="1,2,2,0,2,0,0",
                   help="least number of drawn plots to wait for on each tab (comma separated, in tab "
                        "order; the defaults hold for a store without analyses, where Emergence and "
                        "Distillation only say how to make them)")
    args = p.parse_args(argv)
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("needs Debian's chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright  # optional (the test extra)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    expected = [int(x) for x in args.plots.split(",")]
    t0 = time.perf_counter()
    proc, url = start_dashboard(args.store, free_port())
    timings = {}
    try:
        try:
            wait_for_server(proc, url)
        except RuntimeError as exc:
            sys.exit(str(exc))
        timings["server_ready_s"] = time.perf_counter() - t0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            t1 = time.perf_counter()
            page.goto(url)
            for i, title in enumerate(TABS):
                t = time.perf_counter()
                if i:
                    page.locator(".bk-tab", has_text=title).first.click()
                    page.wait_for_timeout(200)
                n, drawn = drawn_plots(page, expected[i], tab_class(title))
                timings[f"{title} drawn_s"] = drawn + (t - t1 if i == 0 else 0.0)
                if i == 0:
                    timings["command_to_overview_drawn_s"] = t - t0 + drawn
                path = out / f"{slug(title)}.png"
                page.screenshot(path=str(path), full_page=False)
                _shrink(path)
                print(f"{title}: {n} plots drawn, {path}")
            timings["errors"] = errors
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in timings.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
