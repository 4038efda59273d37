"""Markdown outputs of the DAG (tables.md, diff.md) as self-contained HTML pages, so that
`snakemake --report` shows them in place (it shows HTML in a frame; a Markdown file would only
be offered as a download). Rendered with markdown-it-py (CommonMark plus GFM tables); raw HTML
in the Markdown is escaped, not passed through.
"""
from __future__ import annotations

import html
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #f2f2f2; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
blockquote { color: #555; border-left: 3px solid #ccc; margin-left: 0; padding-left: 1em; }
code { background: #f4f4f4; padding: 0 3px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 1.6em; } h3 { font-size: 15px; }
"""


def markdown_html(text: str, title: str) -> str:
    """A complete HTML document of Markdown `text` (tables enabled, raw HTML escaped)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def write_page(md_path: str | Path, out: str | Path, title: str | None = None) -> Path:
    """`md_path` rendered to the HTML file `out` (written atomically)."""
    from sgmn.io import atomic_path

    md_path = Path(md_path)
    if not md_path.is_file():
        raise FileNotFoundError(f"{md_path} does not exist")
    page = markdown_html(md_path.read_text(encoding="utf-8"), title or md_path.stem)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(out)
