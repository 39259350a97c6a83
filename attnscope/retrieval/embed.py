"""Image embeddings for retrieval from a trained run's model.

An embedding concatenates, for each chosen stage (a module whose output is a
(B, C, h, w) feature map), the average- and max-pooled features and, with
``attention_pooling``, the features pooled under the model's own attention:
the spatial maps of its taps, each resized to the stage's grid and scaled to
sum to 1, averaged into one weighting per stage. Each pooled block is
L2-normalised before the concatenation, so that no stage or pooling outweighs
another by its scale alone; the whole vector is L2-normalised again, so that
inner product is cosine similarity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from attnscope.data.loader import BatchLoader
from attnscope.errors import ConfigError, DataError
from attnscope.layers.tap import capture_attention, native_maps

if TYPE_CHECKING:
    from attnscope.engine.run import Run

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class EmbeddingConfig:
    """How embeddings are made: what a gallery and its queries must share.

    ``stages``: module names whose outputs are pooled (empty: the model's Grad-CAM
    layer, its last feature map); ``attention_pooling``: add attention-pooled
    features (``taps``: which attention taps, empty: every spatial one);
    ``pca_dim``: reduce to this size with PCA fitted on the gallery (0: keep);
    ``dtype``: how vectors are stored.
    """

    stages: tuple[str, ...] = ()
    attention_pooling: bool = False
    taps: tuple[str, ...] = ()
    pca_dim: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"embedding dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.pca_dim < 0:
            raise ConfigError(f"pca_dim={self.pca_dim} must be 0 (no PCA) or a positive size")
        if self.taps and not self.attention_pooling:
            raise ConfigError("taps are chosen only for attention pooling; turn attention_pooling on")

    def to_dict(self) -> dict:
        return {**asdict(self), "stages": list(self.stages), "taps": list(self.taps)}

    @classmethod
    def from_dict(cls, values: dict) -> EmbeddingConfig:
        return cls(**{**values, "stages": tuple(values.get("stages", ())), "taps": tuple(values.get("taps", ()))})


def default_stages(model: nn.Module) -> tuple[str, ...]:
    """The model's Grad-CAM layer (its last spatial feature map)."""
    config = getattr(model, "default_cfg", None)
    layer = getattr(config, "cam_target_layer", "")
    if not layer:
        raise ConfigError(f"{type(model).__name__} names no default feature layer; choose stages by module name")
    return (layer,)


def resolve_stages(model: nn.Module, config: EmbeddingConfig) -> tuple[str, ...]:
    """The stage modules to pool, checked to exist."""
    stages = config.stages or default_stages(model)
    modules = dict(model.named_modules())
    unknown = [s for s in stages if s not in modules]
    if unknown:
        top = [name for name in modules if name and "." not in name]
        raise ConfigError(
            f"no module(s) {unknown} in {type(model).__name__}; its top-level modules are "
            f"{', '.join(top)} (a stage is any module whose output is a feature map)"
        )
    return tuple(stages)


def l2_normalise(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(eps)


def attention_weights(maps: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """One (B, h, w) weighting summing to 1 per image: the taps' maps resized, scaled to sum 1, averaged."""
    weights = []
    for values in maps.values():
        resized = F.interpolate(values[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
        total = resized.sum(dim=(1, 2), keepdim=True)
        # a map that is zero everywhere carries no preference: weigh every position alike
        uniform = torch.full_like(resized, 1.0 / (size[0] * size[1]))
        weights.append(torch.where(total > 0, resized / total.clamp_min(1e-12), uniform))
    return torch.stack(weights).mean(dim=0)


def pool_stage(features: torch.Tensor, weights: torch.Tensor | None) -> list[torch.Tensor]:
    """[average, max, (attention-weighted)] pooled (B, C) blocks of a (B, C, h, w) feature map, each L2-normalised."""
    blocks = [features.mean(dim=(2, 3)), features.amax(dim=(2, 3))]
    if weights is not None:
        blocks.append((features * weights[:, None]).sum(dim=(2, 3)))
    return [l2_normalise(block) for block in blocks]


class StageFeatures:
    """Forward hooks that keep the outputs of named modules during one forward pass."""

    def __init__(self, model: nn.Module, stages: Sequence[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._store(name)) for name in stages]

    def _store(self, name: str):
        def store(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ConfigError(
                    f"stage {name!r} gives {shape}, not a (B, C, h, w) feature map; choose a convolutional stage"
                )
            self.outputs[name] = output.float()

        return store

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


TOKEN_GRID = 4  # the re-ranker's tokens: the last stage's map average-pooled to at most 4 x 4


def stage_tokens(features: torch.Tensor) -> torch.Tensor:
    """(B, T, C) tokens of a (B, C, h, w) feature map, average-pooled to at most ``TOKEN_GRID`` squared."""
    grid = (min(features.shape[-2], TOKEN_GRID), min(features.shape[-1], TOKEN_GRID))
    return F.adaptive_avg_pool2d(features.float(), grid).flatten(2).transpose(1, 2)


@torch.no_grad()
def embed_images(model: nn.Module, images: torch.Tensor, config: EmbeddingConfig) -> torch.Tensor:
    """(B, D) L2-normalised embeddings of normalised ``images`` (before any PCA)."""
    return embed_images_and_tokens(model, images, config, with_tokens=False)[0]


@torch.no_grad()
def embed_images_and_tokens(
    model: nn.Module, images: torch.Tensor, config: EmbeddingConfig, with_tokens: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings (B, D) and, from the same forward pass, the re-ranker's tokens (B, T, C) of the last stage."""
    stages = resolve_stages(model, config)
    hooks = StageFeatures(model, stages)
    try:
        maps = _forward_with_maps(model, images, config)
    finally:
        hooks.close()
    blocks = []
    for name in stages:
        features = hooks.outputs[name]
        weights = attention_weights(maps, (features.shape[-2], features.shape[-1])) if maps else None
        blocks += pool_stage(features, weights)
    tokens = stage_tokens(hooks.outputs[stages[-1]]) if with_tokens else None
    return l2_normalise(torch.cat(blocks, dim=1)), tokens


def _forward_with_maps(model: nn.Module, images: torch.Tensor, config: EmbeddingConfig) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``images``; the attention maps to pool with, when the embedding asks for them."""
    if not config.attention_pooling:
        model(images)
        return {}
    with capture_attention(model, detach=True) as captured:
        model(images)
    maps = native_maps(captured)
    if config.taps:
        missing = sorted(set(config.taps) - set(maps))
        if missing:
            raise ConfigError(f"no spatial attention tap(s) {missing}; this model's are {sorted(maps)}")
        maps = {name: maps[name] for name in config.taps}
    if not maps:
        raise ConfigError(
            f"{type(model).__name__} has no spatial attention maps to pool with; "
            "build the index without attention pooling, or from a model with attention"
        )
    return maps


@dataclass
class Embeddings:
    """Vectors (N, D) float32 and, for each, its position in the loader's manifest; with tokens,
    the re-ranker's (N, T, C) float16 tokens from the same forward passes."""

    vectors: np.ndarray
    rows: np.ndarray
    tokens: np.ndarray | None = None


def embed(run: Run, loader: BatchLoader, config: EmbeddingConfig, with_tokens: bool = False) -> Embeddings:
    """Embeddings of every image of ``loader`` with the model of ``run``, before any PCA (and its tokens)."""
    model = run.model()
    vectors, tokens, rows = [], [], []
    for batch in tqdm(loader, desc="embed", disable=not run.progress, leave=False, unit="batch"):
        images, _ = run.transform(batch["image"])
        batch_vectors, batch_tokens = embed_images_and_tokens(model, images, config, with_tokens)
        vectors.append(batch_vectors)
        if batch_tokens is not None:
            tokens.append(batch_tokens.half())
        rows.append(batch["row"])
    if not vectors:
        raise DataError("no images to embed")
    return Embeddings(
        torch.cat(vectors).numpy(), torch.cat(rows).numpy(), torch.cat(tokens).numpy() if with_tokens else None
    )


@dataclass(frozen=True)
class PCA:
    """Centring and projection onto the top principal directions, then L2 normalisation."""

    mean: np.ndarray
    components: np.ndarray  # (k, D), rows orthonormal

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        projected = torch.from_numpy((vectors.astype(np.float32) - self.mean) @ self.components.T)
        return l2_normalise(projected).numpy()


def fit_pca(vectors: np.ndarray, dim: int) -> PCA:
    """PCA of ``vectors`` (N, D) to ``dim`` components, signs fixed so the largest coefficient is positive."""
    count, width = vectors.shape
    if not 0 < dim <= min(count, width):
        raise ConfigError(f"pca_dim={dim} must lie between 1 and min(gallery size {count}, embedding size {width})")
    data = torch.from_numpy(vectors.astype(np.float64))
    mean = data.mean(dim=0)
    centred = data - mean
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    order = eigenvalues.argsort(descending=True)[:dim]
    components = eigenvectors[:, order].T
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * signs
    return PCA(mean.float().numpy(), components.float().numpy())
