"""The report as one self-contained HTML page: figures inlined as data: URIs, every text escaped."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f4f4f4}img{max-width:100%}.note{color:#666;font-size:90%}td.num{text-align:right}"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f'<td class="num">{"—" if math.isnan(v) else f"{v:.3f}"}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(png: bytes, alt: str, name: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<figure><img alt="{html.escape(alt)}" data-file="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>'


def page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def paragraph(text: str, note: bool = False) -> str:
    return f"<p{' class=note' if note else ''}>{html.escape(text)}</p>"
