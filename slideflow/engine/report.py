"""Extraction report: one self-contained HTML page (inline CSS, base64 PNG previews).

Each slide row shows its preview (tissue mask, ROIs and kept tiles drawn by `wsi.preview()`),
status, tile count, time, MPP and any warnings or errors. No external file is referenced, so
the page can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..io.atomic import atomic_open
from .outcome import SlideOutcome, Status


# What the page reads, as protocols: `extract` (ExtractionSummary, ExtractOptions) sits above
# this module and uses it for notebooks' HTML, so the report never imports it back.
class ExtractionSummary(Protocol):
    @property
    def results(self) -> Mapping[str, SlideOutcome]: ...
    @property
    def label(self) -> str: ...
    tile_px: int
    tile_um: Any
    seconds: float


class ExtractOptions(Protocol):
    def request_record(self) -> dict[str, Any]: ...
    def normalizer_config(self) -> Any: ...

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} .sub{color:#666;margin-bottom:16px}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #ddd;
padding:6px 10px;text-align:left;vertical-align:top} th{background:#f4f4f4}
.done{color:#17803d} .reused,.busy{color:#555} .failed{color:#b3261e;font-weight:600}
.warn{color:#9a6700} img{max-width:384px;border:1px solid #ccc}
.kv td{border:none;padding:2px 12px 2px 0} .num{text-align:right}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _settings_rows(opt: ExtractOptions | None) -> str:
    if opt is None:
        return ""
    keys = ("qc", "qc_threshold", "roi_method", "whitespace_fraction", "whitespace_threshold",
            "grayspace_fraction", "grayspace_threshold", "img_format", "jpeg_quality", "passthrough",
            "max_tiles", "shuffle", "seed", "stride_div", "use_edge_tiles", "save_tiles")
    rows = [(k, opt.request_record()["qc"] if k == "qc" else getattr(opt, k)) for k in keys]
    rows.append(("normalizer", opt.normalizer_config()))
    return "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)


def _slide_row(r: SlideOutcome) -> str:
    img = ""
    if r.preview_png:
        uri = "data:image/png;base64," + base64.b64encode(r.preview_png).decode("ascii")
        img = f'<img alt="{_e(r.slide)}" src="{uri}">'
    notes = []
    if r.status == Status.FAILED and r.message:
        notes.append(f'<div class="failed">{_e(r.message)}</div>')
    if r.status in (Status.REUSED, Status.BUSY) and r.reason:
        notes.append(f"<div>{_e(r.reason)}</div>")
    elif r.status == "done" and r.reason and r.reason != "not extracted yet":
        notes.append(f"<div>redone: {_e(r.reason)}</div>")
    notes += [f'<div class="warn">⚠ {_e(w)}</div>' for w in r.warnings]
    info = r.info
    details = []
    if info:
        w, h = info.get("dimensions", ("?", "?"))
        details.append(f"{w}×{h} px, {info.get('mpp', 0):.4g} µm/px ({_e(info.get('backend'))})")
        details.append(f"tile = {info.get('full_extract_px')} level-0 px, level "
                       f"{info.get('level')}")
        pt = info.get("passthrough")
        if pt:
            why = pt.get("why_not") or "; ".join(f"{k}: {v} re-encoded"
                                                 for k, v in pt.get("re_encoded", {}).items())
            details.append(f"stored JPEG passthrough: {pt['tiles']}/{pt['of']} tiles"
                           + (f" ({_e(why)})" if why else ""))
    if r.timings:
        details.append(" · ".join(f"{k} {v:.2f}s" for k, v in r.timings.items()))
    rate = f"{r.tiles / r.seconds:.0f}" if r.status == "done" and r.seconds else ""
    return (f"<tr><td>{img}</td><td><b>{_e(r.slide)}</b><br><small>{'<br>'.join(details)}"
            f"</small></td><td class=\"{_e(r.status)}\">{_e(r.status)}</td>"
            f"<td class=\"num\">{r.tiles}</td><td class=\"num\">{r.seconds:.1f}</td>"
            f"<td class=\"num\">{rate}</td><td>{''.join(notes)}</td></tr>")


def summary_table_html(summary: ExtractionSummary, names: Sequence[str] | None = None,
                       previews: bool = False) -> str:
    """An HTML table of per-slide results (used by the report and by notebooks)."""
    results = [summary.results[n] for n in (names or summary.results) if n in summary.results]
    rows = []
    for r in results:
        if previews:
            rows.append(_slide_row(r))
        else:
            rows.append(f"<tr><td>{_e(r.slide)}</td><td class=\"{_e(r.status)}\">"
                        f"{_e(r.status)}</td><td class=\"num\">{r.tiles}</td>"
                        f"<td class=\"num\">{r.seconds:.1f}</td>"
                        f"<td>{_e(r.message or r.reason or '')}</td></tr>")
    head = ("<tr><th>preview</th><th>slide</th><th>status</th><th>tiles</th><th>s</th>"
            "<th>tiles/s</th><th>notes</th></tr>" if previews else
            "<tr><th>slide</th><th>status</th><th>tiles</th><th>s</th><th>notes</th></tr>")
    caption = _e(repr(summary))
    return f"<table><caption>{caption}</caption>{head}{''.join(rows)}</table>"


def render_report(summary: ExtractionSummary, names: Sequence[str] | None = None,
                  options: ExtractOptions | None = None, title: str | None = None) -> str:
    """The whole report page as a string."""
    names = list(names or summary.results)
    res = [summary.results[n] for n in names if n in summary.results]
    done = [r for r in res if r.status == "done"]
    tiles = sum(r.tiles for r in done)
    secs = summary.seconds or sum(r.seconds for r in done)
    counts = (f"{len(done)} extracted, {sum(r.status == Status.REUSED for r in res)} reused, "
              f"{sum(r.status == Status.BUSY for r in res)} busy, "
              f"{sum(r.status == 'failed' for r in res)} failed · {tiles:,} tiles in "
              f"{secs:.1f} s ({tiles / secs if secs else 0:.0f} tiles/s)")
    title = title or f"Tile extraction {summary.label}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><div class=\"sub\">{_e(counts)} · {_e(stamp)}</div>"
        f"<table class=\"kv\"><tr><td>tile_px</td><td>{summary.tile_px}</td></tr>"
        f"<tr><td>tile_um</td><td>{_e(summary.tile_um)}</td></tr>"
        f"{_settings_rows(options)}</table><h2>Slides</h2>"
        f"{summary_table_html(summary, names, previews=True)}</body></html>\n"
    )


def write_report(path: str | Path, summary: ExtractionSummary, names: Sequence[str] | None = None,
                 options: ExtractOptions | None = None, title: str | None = None) -> Path:
    """Write the report atomically; returns its path."""
    path = Path(path)
    with atomic_open(path, "w") as fh:
        fh.write(render_report(summary, names, options, title))
    return path
