"""End to end in a real browser: ``streamlit run app/main.py`` driven by Playwright + Debian Chromium.

Skipped (with the reason) when ``/usr/bin/chromium`` or the ``playwright`` package is missing.
Playwright's own browser download cannot work here; the system Chromium is used instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def _healthy(url: str) -> bool:
    """Whether the streamlit server answers its health check (False while it is starting)."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False

@contextlib.contextmanager
def streamlit_server(model: str = "tiny-llama", timeout: float = 120.0):
    """A headless app server on a free local port; yields its URL."""
    port = _free_port()
    env = {**os.environ, "TDA_APP_MODEL": model}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{proc.stdout.read()}")
            if _healthy(url):
                break
            if time.time() > deadline:
                raise RuntimeError("streamlit did not become healthy in time")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _need_browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A Chromium page next to a fresh app server (skips when no browser is available): ``(url, page)``."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with streamlit_server() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield url, browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


HEATMAP_Y = """() => {
  const g = [...document.querySelectorAll('.js-plotly-plot')].find(d => d.data && d.data.some(t => t.type === 'heatmap'));
  return g ? JSON.stringify(g.data.filter(t => t.type === 'heatmap').map(t => Array.from(t.y))) : null;
}"""


def test_prompt_edit_updates_heatmap_in_browser(tmp_path):
    with browser_page(1400, 1000) as (url, page):
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(f"({HEATMAP_Y})() !== null", timeout=120_000)
        before = page.evaluate(HEATMAP_Y)
        assert page.locator("text=Traceback").count() == 0
        box = page.locator("textarea").first
        new = "Completely different words make a new heatmap here."
        box.fill(new)
        box.press("Control+Enter")
        page.wait_for_function(f"(b) => {{ const y = ({HEATMAP_Y})(); return y !== null && y !== b; }}",
                               arg=before, timeout=120_000)
        after = page.evaluate(HEATMAP_Y)
        assert after != before
        rows = json.loads(after)
        assert len(rows) == 2  # isolated and sequence panels
        for labels in rows:  # the rows are the new prompt's tokens, in order ("index:token", "␣" = space)
            assert "".join(lab.split(":", 1)[1] for lab in labels).replace("␣", " ") == new
        page.wait_for_timeout(500)
        shot = tmp_path / "app-browser.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.locator("[data-testid='stException']").count() == 0


PLOTS_READY = """(n) => {
  const g = [...document.querySelectorAll('.js-plotly-plot')].filter(d => d.data && d.data.length);
  return g.length >= n;
}"""


def test_neuron_page_in_browser(tmp_path):
    """/neuron?layer=1&neuron=5 serves its charts; the URL's choice fills the inputs; an out-of-range
    neuron is refused with a visible error, not a traceback."""
    with browser_page(1400, 1400) as (url, page):
        page.goto(f"{url}/neuron?layer=1&neuron=5", wait_until="domcontentloaded")
        page.wait_for_function(PLOTS_READY, arg=4, timeout=180_000)
        assert page.get_by_label("neuron (0..127)").input_value() == "5"
        assert page.get_by_label("layer (0..2)").input_value() == "1"
        assert page.locator("text=Neuron 5 of layer 1 on the prompt").count() >= 1
        assert page.locator("[data-testid='stException']").count() == 0
        box = page.get_by_label("neuron (0..127)")
        box.fill("500")
        box.press("Enter")
        page.wait_for_selector("text=neuron 500 out of range", timeout=60_000)
        assert page.locator("text=Traceback").count() == 0
        shot = tmp_path / "neuron-browser.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000


PAGES = [  # (url path, button to press or None, Plotly charts the page draws after it)
    ("", None, 2), ("masks", None, 3), ("samples", None, 1), ("recall", "Run recall study", 3),
    ("generate", "Generate", 2), ("neuron", None, 4),
]
N_CHARTS = "() => document.querySelectorAll('.js-plotly-plot').length"
RUNNING = "() => !!document.querySelector('[data-testid=\"stStatusWidget\"]')"


def test_every_page_renders_in_browser(tmp_path):
    """Each page in a real Chromium at 1400×1000: its charts paint, buttons run, no exception or error."""
    with browser_page(1400, 1000) as (url, page):
        for path, button, charts in PAGES:
            page.goto(f"{url}/{path}", wait_until="domcontentloaded")
            if button:
                page.get_by_role("button", name=button).wait_for(timeout=120_000)
                page.wait_for_function(f"!({RUNNING})()", timeout=120_000)
                page.get_by_role("button", name=button).click()
            page.wait_for_function(f"({N_CHARTS})() >= {charts}", timeout=180_000)
            page.wait_for_function(f"!({RUNNING})()", timeout=180_000)
            assert page.locator("[data-testid='stException']").count() == 0, path
            assert page.locator("[data-testid='stAlertContentError']").count() == 0, path
            assert page.locator("text=Traceback").count() == 0, path
            page.screenshot(path=str(tmp_path / f"{path or 'inertia'}.png"))


def test_inertia_url_and_samples_grid_delete_in_browser(tmp_path):
    """/inertia opens page 1 (not "Page not found"); Ctrl+A, Delete in the 13-sample grid is reported with a
    button that restores the emptied cells."""
    with browser_page(1400, 1000) as (url, page):
        page.goto(f"{url}/inertia", wait_until="domcontentloaded")
        page.wait_for_selector("text=Inertia explorer: tokens alone vs in a sequence", timeout=120_000)
        assert page.locator("text=Page not found").count() == 0
        page.goto(f"{url}/samples", wait_until="domcontentloaded")
        page.wait_for_function(f"({N_CHARTS})() >= 1", timeout=180_000)
        page.wait_for_function(f"!({RUNNING})()", timeout=180_000)
        grid = page.locator("[data-testid='stDataFrame'], [data-testid='stDataFrameResizable']").first
        box = grid.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + 55)  # a cell of the first sample's text
        page.keyboard.press("Control+a")
        page.keyboard.press("Delete")
        page.wait_for_selector("text=cell(s) emptied", timeout=60_000)
        page.screenshot(path=str(tmp_path / "samples-emptied.png"))
        page.get_by_role("button", name="Restore the emptied cells").click()
        page.wait_for_function("() => !document.body.innerText.includes('cell(s) emptied')", timeout=60_000)
        page.wait_for_function(f"!({RUNNING})()", timeout=180_000)
        assert page.locator("[data-testid='stAlertContentError']").count() == 0
        assert page.locator("text=of 5").count() >= 1  # the verdicts are back
