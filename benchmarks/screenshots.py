"""Screenshots of every app page on the embedded model for the README: ``docs/screenshots/``.

    python benchmarks/screenshots.py [--model gemma-3-270m] [--out docs/screenshots] [--width 1400] [--pages NAMES]

Starts ``streamlit run app/main.py`` headless on a free local port, opens each page in the system
Chromium through Playwright, runs the long pages (recall, generate) with their buttons, waits
until the app is idle and saves ``page-N-name.png``; a PNG over 400 KB is re-encoded with a
256-colour palette (Pillow) to stay under the limit.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_app_browser import CHROMIUM, streamlit_server  # noqa: E402

LIMIT = 400_000
PAGES = [  # (file name, url path, button to press or None, Plotly charts to wait for[, text to scroll to])
    ("page-1-inertia", "", None, 2),  # the default page lives at /
    ("page-1-inertia-verdict", "", None, 2, "Study 1 numbers for this prompt"),
    ("page-2-masks", "masks", None, 4),  # two methods side by side: 2 images, coverage, density
    ("page-3-samples", "samples", None, 1),
    ("page-4-recall", "recall", "Run recall study", 3),
    ("page-2-masks-details", "masks", None, 4, "Per-token details for"),
    ("page-5-generate", "generate", "Generate", 2),  # token agreement, density per layer
    ("page-6-neuron", "neuron?layer=9&neuron=100", None, 4),  # Gemma: fires on sentence ends
]

IDLE = """() => !document.querySelector('[data-testid="stStatusWidget"]')"""
N_CHARTS = """() => document.querySelectorAll('.js-plotly-plot').length"""


def shrink(png: bytes) -> bytes:
    """Re-encode with an adaptive 256-colour palette when over :data:`LIMIT`."""
    if len(png) <= LIMIT:
        return png
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (256, 128, 64):
        buf = io.BytesIO()
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        if buf.tell() <= LIMIT:
            return buf.getvalue()
    scale = (LIMIT / buf.tell()) ** 0.5
    small = img.resize((int(img.width * scale), int(img.height * scale)))
    buf = io.BytesIO()
    small.quantize(colors=128).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def wait_idle(page, charts: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    page.wait_for_function(f"({N_CHARTS})() >= {charts}", timeout=timeout_s * 1000)
    quiet = 0
    while time.time() < deadline and quiet < 3:  # idle for ~1.5 s in a row
        quiet = quiet + 1 if page.evaluate(IDLE) else 0
        page.wait_for_timeout(500)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--pages", default="", help="comma list of file names to take (default: all)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with streamlit_server(args.model, timeout=args.timeout) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            wanted = {x for x in args.pages.split(",") if x}
            for name, path, button, charts, *scroll in PAGES:
                if wanted and name not in wanted:
                    continue
                t0 = time.time()
                page.goto(f"{url}/{path}", wait_until="domcontentloaded")
                if button:
                    page.get_by_role("button", name=button).wait_for(timeout=args.timeout * 1000)
                    wait_idle(page, 0, args.timeout)
                    page.get_by_role("button", name=button).click()
                wait_idle(page, charts, args.timeout)
                if page.locator("[data-testid='stException']").count():
                    raise SystemExit(f"{name}: the page shows an exception")
                if scroll:
                    page.get_by_text(scroll[0]).first.evaluate("e => e.scrollIntoView({block: 'start'})")
                    page.wait_for_timeout(800)
                png = shrink(page.screenshot(full_page=False))
                (out / f"{name}.png").write_bytes(png)
                print(f"{name}.png  {len(png) / 1000:.0f} KB  ({time.time() - t0:.1f} s)")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
