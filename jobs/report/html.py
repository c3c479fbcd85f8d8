"""HTML building blocks of the explain report: the style sheet, images, tables, sections.

Every string from data or metadata goes through :func:`html.escape` here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from html import escape
from typing import Any

CSS = """
body{margin:0;background:#f6f7f9;color:#1f2937;font:15px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{background:#111827;color:#f9fafb;padding:22px 0 18px}
.wrap{max-width:1100px;margin:0 auto;padding:0 24px}
h1{margin:0 0 4px;font-size:24px}h2{margin:0 0 12px;font-size:19px}
.sub{color:#9ca3af;font-size:13px}
nav{margin-top:10px;font-size:13px}nav a{color:#93c5fd;margin-right:14px;text-decoration:none}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;margin:18px 0;
padding:18px 22px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:18px 0 0}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:10px 16px;
min-width:120px}.card b{display:block;font-size:20px}.card span{color:#6b7280;font-size:12px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
table{border-collapse:collapse;width:100%;font-size:13px;margin:8px 0}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{background:#f9fafb;font-weight:600}tr:nth-child(even) td{background:#fcfcfd}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#6b7280;font-size:13px}
footer{color:#9ca3af;font-size:12px;text-align:center;padding:18px}
"""


def img(png: bytes, alt: str) -> str:
    """An ``<img>`` whose source is the PNG itself (a ``data:`` URI)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def table(header: Sequence[str], rows: list[list[Any]], numeric: set[int]) -> str:
    """A table; every cell is ``str()``-ed and escaped; columns in ``numeric`` align right."""
    cls = [' class="num"' if i in numeric else "" for i in range(len(header))]
    head = "".join(f"<th{c}>{escape(h)}</th>" for h, c in zip(header, cls, strict=True))
    body = "".join(
        "<tr>"
        + "".join(f"<td{c}>{escape(str(v))}</td>" for v, c in zip(r, cls, strict=True))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(anchor: str, title: str, body: str) -> str:
    """A card with an anchor (``anchor`` is a fixed identifier) and an escaped title."""
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def metadata_table(metadata: dict[str, Any]) -> str:
    """Key/value table of model metadata; nested values shown as JSON, long ones cut."""
    rows = []
    for key in sorted(metadata):
        value = metadata[key]
        if isinstance(value, dict | list | tuple):
            value = json.dumps(value, sort_keys=True, default=str)
        text = str(value)
        rows.append([key, text if len(text) <= 400 else text[:400] + "…"])
    return table(["key", "value"], rows, set()) if rows else '<p class="note">None.</p>'
