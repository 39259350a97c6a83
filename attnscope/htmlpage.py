"""Self-contained HTML pages: pictures as data URIs and one document shell, shared by the report
and the search page (both must open anywhere, with no network and no folder beside them)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

GENERATOR = "attnscope"  # every page says who wrote it, so a later run can tell its own pages from a user's
RESEARCH_USE = (
    "For research use only, not for diagnosis: a model's output is no substitute for a clinician's judgement."
)


def png_file_uri(path: str | Path) -> str:
    """A data URI of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def png_array_uri(image: np.ndarray) -> str:
    """A PNG data URI of a uint8 (H, W) or (H, W, C) image."""
    from PIL import Image

    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def document(title: str, style: str, body: str) -> str:
    """A whole HTML page: ``title`` is escaped here, ``body`` is HTML the caller escaped; every page opens with
    the notice that it is for research use (:data:`RESEARCH_USE`)."""
    notice = f'<p class="research-use" role="note"><strong>{html.escape(RESEARCH_USE)}</strong></p>'
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="generator" content="{GENERATOR}">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{notice}{body}</body></html>\n"
    )
