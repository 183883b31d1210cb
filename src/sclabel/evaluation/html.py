"""A self-contained HTML page: inline style, figures as PNG data URIs, no network at all.

The page's Content-Security-Policy allows nothing outside the file (`default-src 'none'`),
so a report opens the same offline, in an e-mail attachment or on a cluster's file browser.
A one-line script marks `<body data-images-ok>` once every figure has decoded: the headless
browser test reads it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
p.note { color: #555; font-size: 0.9em; }
"""
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
CHECK = (
    "window.addEventListener('load', () => { document.body.dataset.imagesOk = "
    "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0); });"
)


@dataclass
class Section:
    """One heading and what goes under it: paragraphs, figures and tables, in order."""

    title: str
    parts: list[str] = field(default_factory=list)

    def text(self, value: str, note: bool = False) -> Section:
        self.parts.append(f"<p{' class=note' if note else ''}>{html.escape(value)}</p>")
        return self

    def figure(self, fig, alt: str) -> Section:
        """A matplotlib figure, embedded as a PNG (the figure is closed)."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode()
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        return self

    def png(self, raw: bytes, alt: str) -> Section:
        data = base64.b64encode(raw).decode()
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        return self

    def table(self, frame: pd.DataFrame, digits: int = 3, index: bool = True) -> Section:
        shown = frame.copy()
        for column in shown.columns:
            if pd.api.types.is_float_dtype(shown[column]):
                shown[column] = shown[column].round(digits)
        self.parts.append(shown.to_html(border=0, escape=True, index=index))
        return self


def page(title: str, sections: Iterable[Section], subtitle: str = "") -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        body.append(f"<p class=note>{html.escape(subtitle)}</p>")
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body.extend(section.parts)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{CHECK}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def md_cell(value) -> str:
    """Text for a Markdown table cell: a '|' or a line break in a label would break the row."""
    return (
        str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    )
