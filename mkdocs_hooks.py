"""MkDocs hooks: pages generated from the source, so nothing is written twice.

``<!-- gilfree:options-table -->`` in a page becomes the table of every option
of map / imap / Executor, made from ``gilfree._options.Options`` -- the same
source the functions' docstrings are generated from.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- gilfree:options-table -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from gilfree._options import options_table

    return markdown.replace(MARKER, options_table())
