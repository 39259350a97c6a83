"""Attention maps drawn over their images: upsampling, per-image normalisation, colour overlays, grids.

Maps are read by capture (DESIGN.md), upsampled bilinearly to the input size,
and min-max normalised per image for display only; the raw values stay
available to whoever asked for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib import colormaps
from torch.nn import functional as F

from attnscope.explain.cam import normalise
from attnscope.layers.tap import capture_attention, native_maps

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from attnscope.data.loader import BatchLoader
    from attnscope.engine.run import Run


def upsample(maps: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """(B, h, w) maps resized bilinearly to ``size``."""
    return {
        name: F.interpolate(values[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        for name, values in maps.items()
    }


def spatial_maps(maps: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Every spatial map as (B, H, W) at ``size`` (heads averaged); channel maps (B, C) are left out."""
    return upsample(native_maps(maps), size)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """RGB float image in [0, 1]: ``(1 - alpha) * image + alpha * cmap(heat)`` (seed: 0.6 / 0.4).

    ``image``: (H, W, 3) or (H, W) in [0, 1]; ``heat``: (H, W) in [0, 1].
    """
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    colours = colormaps[cmap](np.clip(heat, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image + alpha * colours, 0, 1)


@torch.no_grad()
def attention_maps(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spatial attention maps of ``model`` on normalised ``images``, upsampled to their size (B, H, W)."""
    with capture_attention(model, detach=True) as maps:
        model(images)
    return spatial_maps(maps, (images.shape[-2], images.shape[-1]))


def write_attention_grid(
    images_u8: torch.Tensor,
    maps: dict[str, torch.Tensor],
    titles: list[str],
    path: Path,
    alpha: float = 0.4,
    cmap: str = "jet",
    normalise_maps: bool = True,
) -> Path:
    """A figure with one row per image: the input, then one overlay per map, titled by its key
    (the "input | pool-3 attention | pool-4 attention" figure of the AttnVGG melanoma tutorial).
    Maps are (B, H, W); they are min-max scaled per image for display unless ``normalise_maps``
    is False (already in [0, 1])."""
    from attnscope.engine.plots import literal_text, save_figure

    shown = {name: (normalise(values) if normalise_maps else values).numpy() for name, values in maps.items()}
    with literal_text():
        return save_figure(_grid_figure(images_u8, shown, titles, alpha, cmap), path)


def _grid_figure(
    images_u8: torch.Tensor, shown: dict[str, np.ndarray], titles: list[str], alpha: float, cmap: str
) -> Figure:
    import matplotlib.pyplot as plt

    columns = ["input", *shown]
    rows = images_u8.shape[0]
    figure, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows + 0.3), squeeze=False)
    pictures = images_u8.permute(0, 2, 3, 1).float().numpy() / 255.0
    if pictures.shape[-1] == 1:
        pictures = pictures[..., 0]
    for row in range(rows):
        cells = [pictures[row]] + [overlay(pictures[row], shown[name][row], alpha, cmap) for name in shown]
        for column, cell in enumerate(cells):
            axes_cell = axes[row][column]
            axes_cell.imshow(cell, cmap="gray" if cell.ndim == 2 else None, vmin=0, vmax=1)
            axes_cell.set_xticks([])
            axes_cell.set_yticks([])
            if row == 0:
                axes_cell.set_title(columns[column], fontsize=9)
        axes[row][0].set_ylabel(titles[row], fontsize=8)
    return figure


@torch.no_grad()
def write_run_attention_grid(run: Run, loader: BatchLoader, count: int, path: Path) -> Path:
    """The first ``count`` images of ``loader`` with every tap of ``run``'s model, titled id, truth, probability."""
    from attnscope.engine.metrics import class_probabilities

    batch = next(iter(loader))
    images_u8 = batch["image"][:count]
    images, _ = run.transform(images_u8)
    model = run.model()
    with capture_attention(model, detach=True) as captured:
        logits = model(images)
    maps = {f"{tap} attention": values for tap, values in spatial_maps(captured, tuple(images.shape[-2:])).items()}
    probs = class_probabilities(run.probabilities(logits), run.kind)
    manifest = loader.decoded.manifest
    titles = []
    for position, row in enumerate(batch["row"][:count].tolist()):
        top = int(probs[position].argmax())
        titles.append(
            f"{manifest.ids[row]}\ntrue {manifest.label_text(row)}\n"
            f"p({run.classes[top]})={float(probs[position, top]):.2f}"
        )
    return write_attention_grid(images_u8, maps, titles, path)
