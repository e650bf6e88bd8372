"""HTML renderings of the Markdown tables, for the Snakemake report.

The report shows an HTML result as a rendered page (an ``iframe`` in the self-contained
report.html), while a Markdown or CSV result is only a download; so every table the workflow
writes as Markdown also gets an ``.html`` twin rendered from that same Markdown. One source for
both keeps the two from disagreeing: bold best, underlined second, "≈" ties and the footnotes
come out the same.
"""

from __future__ import annotations

import html
from pathlib import Path

import markdown

from quantface.io import atomic_write_text

# Inline and minimal: the page is opened from a data: URI inside the report, with nothing else
# to load. Numbers are right-aligned by the Markdown alignment row (`---:`).
STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #ccc; padding: 3px 8px; white-space: nowrap; }
th { border-bottom: 2px solid #444; }
ul { color: #444; font-size: 12px; max-width: 70em; }
"""


def markdown_page(text: str, title: str) -> str:
    """A standalone HTML page of a Markdown table and its notes."""
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_markdown_table(path: Path, text: str) -> None:
    """Write a Markdown table (`path`, .md) and its HTML rendering beside it (.html)."""
    atomic_write_text(path, text)
    atomic_write_text(path.with_suffix(".html"), markdown_page(text, path.stem))
