"""Write figures: PNG through kaleido (needs a Chromium) and one self-contained HTML page.

All figures go into a single ``figures.html`` that embeds plotly.js once (offline, ~5 MB);
per-figure HTML files would each carry their own copy. PNG export batches all figures in one
browser session (``plotly.io.write_images``); when it fails (no browser) the HTML is still
written and the failure is reported, never raised.
"""

from __future__ import annotations

import html
from pathlib import Path

HTML_NAME = "figures.html"


def write_html_page(figs: dict, path: Path, *, title: str, captions: dict[str, str] | None = None) -> Path:
    """One offline HTML page with every figure (anchors = figure names), plotly.js embedded once."""
    captions = captions or {}
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             "<style>body{font-family:sans-serif;margin:20px} h2{margin-top:40px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><ul>"]
    parts += [f"<li><a href='#{n}'>{html.escape(n)}</a> — {html.escape(captions.get(n, ''))}</li>" for n in figs]
    parts.append("</ul>")
    for i, (name, fig) in enumerate(figs.items()):
        parts.append(f"<h2 id='{name}'>{html.escape(name)}</h2><p>{html.escape(captions.get(name, ''))}</p>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig-{name}",
                                 config={"responsive": True}))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_pngs(figs: dict, folder: Path) -> tuple[dict[str, str], str | None]:
    """``({name: file name}, error)``: all PNGs in one kaleido batch; on failure ``({}, message)``."""
    import plotly.io as pio

    names = list(figs)
    paths = [folder / f"{n}.png" for n in names]
    try:
        pio.write_images([figs[n] for n in names], [str(p) for p in paths],
                         width=[figs[n].layout.width for n in names], height=[figs[n].layout.height for n in names])
    except Exception as e:  # no Chromium, kaleido missing or broken: HTML only
        for p in paths:
            p.unlink(missing_ok=True)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {}, f"{type(e).__name__}: {msg}"[:300]
    return {n: p.name for n, p in zip(names, paths, strict=True) if p.exists()}, None


def export_figures(figs: dict, folder: Path, *, png: bool = True, title: str = "",
                   captions: dict[str, str] | None = None) -> tuple[dict[str, dict], str | None]:
    """Write ``figs`` into ``folder``: returns ``({name: {"png", "html"}}, png_error)``."""
    folder = Path(folder)
    write_html_page(figs, folder / HTML_NAME, title=title, captions=captions)
    pngs, err = write_pngs(figs, folder) if png else ({}, "PNG export not requested (--no-png)")
    return {n: {"png": pngs.get(n), "html": f"{HTML_NAME}#{n}"} for n in figs}, err
