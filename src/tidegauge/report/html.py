"""The report page: one self-contained HTML file (inline CSS, figures embedded as base64 PNG, no scripts,
nothing fetched), readable offline and attachable to a ticket.

Each summary value is a cell ``<td data-key="..." data-value="...">`` so tools (and the tests) read the exact
numbers the report shows.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path

import polars as pl

from tidegauge.report.summary import Section

__all__ = ["FigureEntry", "render_html"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
.meta { color: #555; margin-top: 0; }
.tables { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; align-self: start; }
th, td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
.missing { background: #fff7e6; border-left: 4px solid #f0a030; padding: .6rem .8rem; }
.note { color: #777; font-style: italic; }
"""


@dataclass(frozen=True)
class FigureEntry:
    """One figure of the page: its PNG (``None`` when it could not be drawn, ``note`` saying why)."""

    name: str
    title: str
    caption: str
    png: Path | None
    note: str = ""


def _value_attr(v: object) -> str:
    return "" if v is None else escape(str(v), quote=True)


def _section_table(sec: Section) -> str:
    rows = [f'<tr><th scope="row">{escape(s.label)}</th><td class="num" data-key="{escape(s.key, quote=True)}" '
            f'data-value="{_value_attr(s.value)}">{escape(s.text)}</td></tr>' for s in sec.stats]
    note = f'<tr><td colspan="2" class="note">{escape(sec.note)}</td></tr>' if sec.note else ""
    return f'<table class="summary"><caption>{escape(sec.title)}</caption>{"".join(rows)}{note}</table>'


def frame_table(df: pl.DataFrame, caption: str, *, css_id: str) -> str:
    """A small frame as an HTML table (floats to 3 significant digits, datetimes to seconds)."""
    head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in df.columns)
    body = []
    for row in df.iter_rows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f'<td class="num">{v:,.3g}</td>')
            elif isinstance(v, int) and not isinstance(v, bool):
                cells.append(f'<td class="num">{v:,}</td>')
            elif isinstance(v, datetime):
                cells.append(f"<td>{v:%Y-%m-%d %H:%M:%S}</td>")
            else:
                cells.append(f"<td>{escape('' if v is None else str(v))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table id="{escape(css_id, quote=True)}"><caption>{escape(caption)}</caption>'
            f"<tr>{head}</tr>{''.join(body)}</table>")


def _figure(fig: FigureEntry) -> str:
    fid = escape(f"fig-{fig.name}", quote=True)
    if fig.png is None:
        return (f'<section id="{fid}" class="figure missing-figure"><h2>{escape(fig.title)}</h2>'
                f'<p class="missing">{escape(fig.note)}</p></section>')
    data = base64.b64encode(fig.png.read_bytes()).decode("ascii")
    return (f'<section id="{fid}" class="figure"><h2>{escape(fig.title)}</h2><figure>'
            f'<img alt="{escape(fig.title, quote=True)}" data-file="{escape(fig.png.name, quote=True)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(fig.caption)}</figcaption></figure></section>")


def render_html(*, title: str, meta: Sequence[str], sections: Sequence[Section], figures: Sequence[FigureEntry],
                tables: Sequence[str] = ()) -> str:
    """The whole page: title, metadata lines, the summary tables, extra tables, then every figure in order."""
    meta_html = "".join(f'<p class="meta">{escape(m)}</p>' for m in meta)
    summary = "".join(_section_table(s) for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>{meta_html}"
        f'<h2>Summary</h2><div class="tables" id="summary">{summary}</div>'
        f"{''.join(tables)}{''.join(_figure(f) for f in figures)}</body></html>\n"
    )
