"""Generated sets with ground-truth masks: dermoscopy-like lesions, and cluttered canvases.

Synthetic lesions follow the ABCD rule of dermoscopy. Each image draws a latent
severity, N(0, 1) for benign and N(separation, 1) for malignant lesions; every
visual cue (size, asymmetry, border irregularity, number of colours, blue-grey
areas) grows with it, with noise of its own. The classes therefore overlap by
design: the best possible AUC is Phi(separation / sqrt(2)), about 0.94 at the
default 2.2, so a small CNN lands between 0.85 and 0.97, not at 1.0.

Every item is drawn from a generator seeded by (seed, index): item i is the same
whatever the count.

``placement="anywhere"`` makes localisation hard to fake: the lesion sits anywhere in the frame (its centre
uniform over the places where it fits whole) at a wider range of sizes, among distractors a dermoscope
also sees: hairs, a ruler's marks along an edge, the dark corners of the round field of view, and small
dark moles that are not the lesion. A map that only looks at the centre, or at anything dark, no longer
scores well; the default ``centre`` keeps the images of earlier versions bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from attnscope.data.manifest import Manifest
from attnscope.errors import DataError

LESION_CLASSES = ["benign", "malignant"]
SEPARATION = 2.2
# Pigments (RGB): light brown, dark brown, black, blue-grey, red, white scar-like regression.
LIGHT_BROWN, DARK_BROWN, BLACK, BLUE_GREY, RED, WHITE = (
    np.array(c, dtype=np.float64)
    for c in ((170, 115, 75), (105, 60, 35), (40, 28, 25), (105, 115, 140), (170, 70, 70), (215, 200, 195))
)


def best_possible_auc(separation: float = SEPARATION) -> float:
    """AUC of the latent severity itself: the ceiling for any classifier."""
    return 0.5 * (1 + math.erf(separation / 2))


def _blob(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """A soft random blob near ``centre`` (weights in (0, 1])."""
    y, x = centre + rng.normal(0, 0.5 * radius, 2)
    width = radius * rng.uniform(0.25, 0.6)
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width**2))


def _hairs(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """Dark, thin, slightly curved hairs drawn over the image in place."""
    for _ in range(rng.poisson(2.0)):
        start, end = rng.uniform(-0.1, 1.1, 2) * size, rng.uniform(-0.1, 1.1, 2) * size
        bend = rng.normal(0, 0.15 * size, 2)
        t = np.linspace(0, 1, 4 * size)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * ((start + end) / 2 + bend) + t**2 * end
        colour = rng.uniform(20, 55) * np.array([1.0, 0.85, 0.75])  # brown-black
        for dy in (0, 1):
            for dx in (0, 1) if rng.random() < 0.5 else (0,):
                rows = np.clip(np.round(points[:, 0]).astype(int) + dy, 0, size - 1)
                cols = np.clip(np.round(points[:, 1]).astype(int) + dx, 0, size - 1)
                image[rows, cols] = colour


PLACEMENTS = ("centre", "anywhere")


def _ruler(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """A ruler's dark tick marks along one edge of the image, in place."""
    edge, step = int(rng.integers(4)), max(2, round(size * rng.uniform(0.04, 0.07)))
    depth = max(2, round(size * 0.06))
    colour = rng.uniform(30, 70)
    for position in range(int(rng.integers(step)), size, step):
        length = depth * (2 if (position // step) % 5 == 0 else 1)
        along = slice(position, position + 1)
        across = slice(0, length) if edge in (0, 2) else slice(size - length, size)  # top/left or bottom/right
        image[(across, along) if edge < 2 else (along, across)] = colour


def _dark_corners(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """The dark corners of a dermoscope's round field of view, in place."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    radius = rng.uniform(0.56, 0.66)
    outside = np.clip((np.hypot(yy - 0.5, xx - 0.5) - radius) / 0.04, 0, 1)
    image *= (1 - 0.85 * outside)[..., None]


def _moles(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, size: int) -> None:
    """Small dark benign-looking moles away from the lesion (they are not in its mask), in place."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    for _ in range(rng.poisson(1.5)):
        centre, radius = rng.uniform(0.08, 0.92, 2), rng.uniform(0.02, 0.045)
        spot = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * radius**2))
        spot = np.where(mask > 0, 0.0, spot)[..., None] * rng.uniform(0.6, 0.9)
        image[...] = image * (1 - spot) + DARK_BROWN * spot


def _lesion_place(rng: np.random.Generator, t: float, placement: str) -> tuple[np.ndarray, float]:
    """The lesion's centre (fractions of the side) and radius: near the centre, or anywhere it fits whole."""
    if placement == "centre":
        centre = 0.5 + rng.normal(0, 0.05, 2)
        return centre, float(np.clip(0.12 + 0.09 * t + rng.normal(0, 0.025), 0.06, 0.33))
    radius = float(rng.uniform(0.05, 0.14) + 0.05 * t)
    margin = 1.6 * radius + 0.04  # its border and elongation reach past the radius
    return rng.uniform(margin, 1 - margin, 2), radius


def render_lesion(
    rng: np.random.Generator, severity: float, size: int, placement: str = "centre"
) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like image (size, size, 3) uint8 and its lesion mask (size, size) 0/1."""
    t = float(np.clip((severity + 1.0) / (SEPARATION + 2.0), 0.0, 1.0))  # ~0 benign-looking, ~1 malignant-looking
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    skin = np.array([rng.uniform(200, 240), rng.uniform(150, 190), rng.uniform(120, 160)])
    light = 1 + 0.08 * (rng.normal() * (xx - 0.5) + rng.normal() * (yy - 0.5))
    vignette = 1 - rng.uniform(0.2, 0.5) * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 2
    image = skin * (light * vignette)[..., None]

    centre, radius = _lesion_place(rng, t, placement)
    elongation = 1 + abs(rng.normal(0, 0.05 + 0.25 * t))
    tilt = rng.uniform(0, np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    u = (dx * np.cos(tilt) + dy * np.sin(tilt)) / elongation
    v = -dx * np.sin(tilt) + dy * np.cos(tilt)
    distance, angle = np.hypot(u, v), np.arctan2(v, u)
    border = np.ones_like(angle)
    for k in range(2, 13):
        amplitude = (0.02 + 0.16 * t * rng.uniform(0.4, 1.6)) / (k**0.8 if k > 3 else 1.0)
        border += amplitude * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) * (1.0 if k <= 3 else t + 0.15)
    edge = radius * border
    softness = radius * (0.10 + 0.05 * rng.random())
    alpha = np.clip((edge - distance) / softness + 0.5, 0, 1)
    mask = (distance < edge).astype(np.uint8)

    inner = np.exp(-((distance / max(radius, 1e-6)) ** 2))
    pigment = LIGHT_BROWN * (1 - inner[..., None]) + DARK_BROWN * inner[..., None]
    extra_colours = min(4, rng.poisson(0.2 + 3.0 * t))
    palette = [BLACK, BLUE_GREY, RED, WHITE, DARK_BROWN]
    weights = np.array([0.25, 0.35 * t + 0.05, 0.15, 0.1 * t + 0.02, 0.2])
    for colour_index in rng.choice(len(palette), size=extra_colours, replace=False, p=weights / weights.sum()):
        blob = _blob(rng, yy, xx, centre, radius)[..., None] * rng.uniform(0.5, 0.9)
        pigment = pigment * (1 - blob) + palette[colour_index] * blob
    texture = 1 + rng.normal(0, 0.04 + 0.04 * t, (size, size, 1))
    image = image * (1 - alpha[..., None]) + pigment * texture * alpha[..., None]

    if placement == "anywhere":
        _moles(rng, image, mask, size)
        _ruler(rng, image, size)
        _dark_corners(rng, image, size)
    _hairs(rng, image, size)
    image += rng.normal(0, 4.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def synthetic_lesions(
    count: int = 1000,
    size: int = 128,
    seed: int = 0,
    malignant_fraction: float = 0.5,
    separation: float = SEPARATION,
    placement: str = "centre",
) -> Manifest:
    """``count`` dermoscopy-like images with lesion masks; labels 0 benign, 1 malignant.

    The latent severities are kept as ``manifest.severity`` (the best any model can do). ``placement``:
    ``centre`` (near the middle) or ``anywhere`` (anywhere in the frame, among distractors: see the module).
    """
    if count < 1 or size < 16:
        raise DataError(f"synthetic_lesions needs count >= 1 and size >= 16, got count={count}, size={size}")
    if placement not in PLACEMENTS:
        raise DataError(f"placement={placement!r}: use one of {', '.join(PLACEMENTS)}")
    if not 0 < malignant_fraction < 1:
        raise DataError(f"malignant_fraction={malignant_fraction} must lie strictly between 0 and 1")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    masks = np.empty((count, size, size), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    severity = np.empty(count)
    for index in range(count):
        rng = np.random.default_rng((seed, index))
        labels[index] = int(rng.random() < malignant_fraction)
        severity[index] = rng.normal(labels[index] * separation, 1.0)
        images[index], masks[index] = render_lesion(rng, severity[index], size, placement)
    manifest = Manifest(
        f"synthetic_lesions(count={count}, size={size}, seed={seed}"
        + (f", placement={placement})" if placement != "centre" else ")"),
        [f"lesion_{i:05d}" for i in range(count)],
        labels,
        list(LESION_CLASSES),
        images=images,
        masks=masks,
    )
    manifest.severity = severity  # type: ignore[attr-defined]
    return manifest


def cluttered(
    source: Manifest,
    canvas: int = 84,
    clutter: int = 6,
    clutter_size: int = 10,
    count: int | None = None,
    seed: int = 0,
) -> Manifest:
    """Each item of ``source`` (small gray images) placed at random on a ``canvas`` among clutter.

    Clutter pieces are random ``clutter_size`` crops of other items. The mask is
    the item's box, the ground truth for whether attention finds the object.
    """
    if source.images is None or source.images.ndim != 3:
        raise DataError(f"cluttered needs a source of small gray images in memory (IDX, MedMNIST), got {source.source}")
    items = source.images
    item = items.shape[1]
    if item > canvas or clutter_size > item:
        raise DataError(f"cluttered: items of {item} px need canvas >= {item} and clutter_size <= {item}")
    count = len(source) if count is None else count
    images = np.zeros((count, canvas, canvas), dtype=np.uint8)
    masks = np.zeros((count, canvas, canvas), dtype=np.uint8)
    order = np.arange(count) % len(source)
    for index in range(count):
        rng = np.random.default_rng((seed, index))
        board = images[index]
        for _ in range(clutter):
            other = items[rng.integers(len(source))]
            y, x = rng.integers(0, item - clutter_size + 1, 2)
            piece = other[y : y + clutter_size, x : x + clutter_size]
            top, left = rng.integers(0, canvas - clutter_size + 1, 2)
            region = board[top : top + clutter_size, left : left + clutter_size]
            np.maximum(region, piece, out=region)
        top, left = rng.integers(0, canvas - item + 1, 2)
        region = board[top : top + item, left : left + item]
        np.maximum(region, items[order[index]], out=region)
        masks[index, top : top + item, left : left + item] = 1
    return Manifest(
        f"cluttered({source.source}, canvas={canvas}, clutter={clutter}, seed={seed})",
        [f"{source.ids[order[i]]}@{i}" for i in range(count)],
        source.labels[order],
        list(source.classes),
        images=images,
        masks=masks,
    )
