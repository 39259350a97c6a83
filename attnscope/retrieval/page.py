"""A self-contained HTML page of search results: each query beside its neighbours, as thumbnails."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from attnscope.fileio import atomic_write
from attnscope.htmlpage import document, png_array_uri
from attnscope.outputs import PAGE, check_output_file
from attnscope.retrieval.index import SimilarityIndex

DISPLAY_PX = 96

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.query { display: flex; gap: .6em; align-items: flex-start; margin-bottom: 1.2em; flex-wrap: wrap; }
figure { margin: 0; width: 7.5em; font-size: .8em; text-align: center; }
figure.q { border-right: 2px solid #888; padding-right: .8em; }
img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc; }
.missing { width: 96px; height: 96px; border: 1px dashed #aaa; display: flex; align-items: center;
           justify-content: center; color: #888; }
"""


def _figure(thumb: np.ndarray | None, caption: str, css: str = "") -> str:
    picture = (
        f'<img src="{png_array_uri(thumb)}" alt="{html.escape(caption)}">'
        if thumb is not None
        else '<div class="missing">no thumbnail</div>'
    )
    return f'<figure class="{css}">{picture}<figcaption>{caption}</figcaption></figure>'


def write_search_page(
    index: SimilarityIndex, result, out: str | Path, index_path: str | Path, force: bool = False
) -> Path:
    """The page at ``out``: one line per query, its thumbnail, then its neighbours with label and similarity
    (``force`` replaces a regular file attnscope did not write)."""
    out = check_output_file(out, PAGE, force)
    sections = []
    for number, query in enumerate(result.queries):
        truth = f"<br>truth: <b>{html.escape(query['label'])}</b>" if "label" in query else ""
        figures = [_figure(result.query_thumbs[number], f"<b>query</b>{truth}<br>{html.escape(query['id'])}", "q")]
        for rank, (position, similarity) in enumerate(
            zip(result.positions[number].tolist(), result.similarities[number].tolist(), strict=True), 1
        ):
            if position < 0:
                break
            row = index.rows[position]
            thumb = index.thumbs[position] if index.thumbs is not None else None
            caption = (
                f"#{rank} <b>{html.escape(row['label'])}</b><br>{similarity:.3f}<br>"
                f'<span title="{html.escape(row["path"] or row["source"])}">{html.escape(row["id"])}</span>'
            )
            figures.append(_figure(thumb, caption))
        sections.append(f'<div class="query">{"".join(figures)}</div>')
    title = f"Similar images in {Path(index_path).name}"
    body = (
        f"<h1>{html.escape(title)}</h1><p>{len(index)} indexed images ({html.escape(index.kind)} index, model "
        f"{html.escape(str(index.meta.get('model')))}); cosine similarity under each neighbour.</p>" + "".join(sections)
    )
    page = document(title, STYLE, body)
    return atomic_write(out, page)
