"""Generated chest-X-ray-like radiographs: 12-bit greyscale, several findings per image, a box per finding.

A frontal radiograph is drawn as attenuation: dark lungs with faint ribs in a
brighter body, the spine and the heart between them, the diaphragm below. Four
findings of ChestX-ray14's list can appear, each independently, each at a place
it has in real films and with a strength drawn at random (faint ones are hard):

- ``Cardiomegaly``: the heart wider than half the chest (its box: the heart);
- ``Effusion``: fluid rising from one lung's base, a brightening gradient;
- ``Nodule``: a small round opacity in a lung;
- ``Consolidation``: a large hazy patch in a lung.

Normal variants (nipple shadows like faint nodules, ECG leads) and exposure,
body size and noise vary, so no model reaches AUC 1. Some labels are
*uncertain* (the report said "possible"): the finding is then present or not at
even odds, and faint when present; they are written as -1 in a CheXpert-style
CSV and by their truth in a ChestX-ray14-style one.

Every item is drawn from a generator seeded by (seed, index): item i is the same
whatever the count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attnscope.data.manifest import Manifest
from attnscope.data.window import window_values
from attnscope.errors import DataError

FINDINGS = ("Cardiomegaly", "Effusion", "Nodule", "Consolidation")
PREVALENCE = 0.25
STORED_BITS = 12
MAX_VALUE = 2**STORED_BITS - 1


@dataclass
class ChestXray:
    """One generated radiograph: 12-bit values, the findings present, uncertain labels and boxes.

    ``boxes`` maps a finding to ``(x, y, width, height)`` in pixels (ChestX-ray14's BBox order).
    """

    pixels: np.ndarray
    present: np.ndarray
    uncertain: np.ndarray
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    patient: int = 0

    def mask(self) -> np.ndarray:
        """The union of the boxes as a 0/1 (H, W) uint8 mask."""
        mask = np.zeros(self.pixels.shape, np.uint8)
        for x, y, width, height in self.boxes.values():
            mask[int(y) : int(np.ceil(y + height)), int(x) : int(np.ceil(x + width))] = 1
        return mask


def _ellipse(yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """A soft-edged filled ellipse, 1 inside and 0 outside (edge a few pixels wide)."""
    distance = np.sqrt(((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2)
    return np.clip((1.0 - distance) * 12.0 + 0.5, 0.0, 1.0)


def _box(centre: tuple[float, float], axes: tuple[float, float], size: int) -> tuple[float, float, float, float]:
    """The (x, y, width, height) pixel box of an ellipse given in unit coordinates, inside the image."""
    top, bottom = max(centre[0] - axes[0], 0.0) * size, min(centre[0] + axes[0], 1.0) * size
    left, right = max(centre[1] - axes[1], 0.0) * size, min(centre[1] + axes[1], 1.0) * size
    return round(left, 1), round(top, 1), round(right - left, 1), round(bottom - top, 1)


@dataclass(frozen=True)
class _Anatomy:
    """Where the organs of one patient lie, in unit coordinates."""

    lungs: tuple[tuple[float, float], tuple[float, float]]
    lung_axes: tuple[float, float]
    heart: tuple[float, float]
    heart_axes: tuple[float, float]


def _anatomy(rng: np.random.Generator, cardiomegaly: float) -> _Anatomy:
    shift = rng.normal(0, 0.015, 2)
    lung_axes = (0.27 + rng.normal(0, 0.015), 0.15 + rng.normal(0, 0.01))
    lungs = ((0.48 + shift[0], 0.31 + shift[1]), (0.48 + shift[0], 0.69 + shift[1]))
    width = 0.12 + rng.normal(0, 0.01) + 0.09 * cardiomegaly  # an enlarged heart is wider than half the chest
    return _Anatomy(lungs, lung_axes, (0.6 + shift[0], 0.53 + shift[1]), (0.13 + 0.03 * cardiomegaly, width))


def _body(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, anatomy: _Anatomy) -> np.ndarray:
    """Attenuation of a normal chest: body, lungs with ribs, spine, heart, diaphragm."""
    image = 0.08 + 0.5 * _ellipse(yy, xx, (0.55, 0.5), (0.6, 0.47 + rng.normal(0, 0.02)))
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (yy * 9 + 1.5 * (xx - 0.5) ** 2 * 9 + rng.uniform(0, 1)))
    for centre in anatomy.lungs:
        lung = _ellipse(yy, xx, centre, anatomy.lung_axes)
        image -= lung * (0.33 - 0.07 * ribs)
    image += 0.22 * np.exp(-(((xx - 0.5) / 0.035) ** 2))  # the spine
    image += 0.28 * _ellipse(yy, xx, anatomy.heart, anatomy.heart_axes)
    below = np.clip((yy - (anatomy.lungs[0][0] + anatomy.lung_axes[0] - 0.02)) * 20, 0, 1)
    return image + 0.25 * below * _ellipse(yy, xx, (0.55, 0.5), (0.6, 0.45))  # the diaphragm


def _effusion(rng, yy, xx, anatomy: _Anatomy, strength: float, size: int):
    """Fluid rising from a lung's base: (attenuation added, box)."""
    centre = anatomy.lungs[int(rng.integers(2))]
    base = centre[0] + anatomy.lung_axes[0]
    level = base - anatomy.lung_axes[0] * (0.2 + 0.35 * strength)
    region = _ellipse(yy, xx, centre, anatomy.lung_axes) * np.clip((yy - level) / 0.08, 0, 1)
    box_centre = ((level + base) / 2, centre[1])
    return 0.12 * strength * region, _box(box_centre, ((base - level) / 2, anatomy.lung_axes[1]), size)


def _nodule(rng, yy, xx, anatomy: _Anatomy, strength: float, size: int):
    """A small round opacity in a lung: (attenuation added, box)."""
    lung = anatomy.lungs[int(rng.integers(2))]
    centre = (lung[0] + rng.uniform(-0.6, 0.5) * anatomy.lung_axes[0], lung[1] + rng.uniform(-0.5, 0.5) * 0.12)
    radius = rng.uniform(0.02, 0.035)
    shape = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * (radius / 1.5) ** 2))
    return 0.35 * strength * shape, _box(centre, (radius * 1.4, radius * 1.4), size)


def _consolidation(rng, yy, xx, anatomy: _Anatomy, strength: float, size: int):
    """A large hazy patch inside a lung: (attenuation added, box)."""
    index = int(rng.integers(2))
    lung = anatomy.lungs[index]
    centre = (lung[0] + rng.uniform(-0.4, 0.3) * anatomy.lung_axes[0], lung[1] + rng.normal(0, 0.02))
    axes = (rng.uniform(0.07, 0.11), rng.uniform(0.06, 0.09))
    patch = np.zeros_like(yy)
    for _ in range(4):
        spot = (centre[0] + rng.normal(0, axes[0] / 3), centre[1] + rng.normal(0, axes[1] / 3))
        patch = np.maximum(patch, np.exp(-(((yy - spot[0]) / axes[0]) ** 2 + ((xx - spot[1]) / axes[1]) ** 2) * 2))
    patch *= _ellipse(yy, xx, lung, anatomy.lung_axes)
    return 0.22 * strength * patch, _box(centre, (axes[0] * 1.3, axes[1] * 1.3), size)


FINDING_DRAWERS = {"Effusion": _effusion, "Nodule": _nodule, "Consolidation": _consolidation}


def _variants(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, anatomy: _Anatomy) -> np.ndarray:
    """Normal variants that look a little like findings: nipple shadows and ECG leads."""
    added = np.zeros_like(yy)
    if rng.random() < 0.4:
        for lung in anatomy.lungs:
            centre = (lung[0] + 0.12, lung[1] + rng.normal(0, 0.02))
            added += 0.12 * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * 0.015**2))
    for _ in range(rng.poisson(0.6)):
        start, end = rng.uniform(0.1, 0.9, 2), rng.uniform(0.1, 0.9, 2)
        t = np.clip(((yy - start[0]) * (end[0] - start[0]) + (xx - start[1]) * (end[1] - start[1])) / 0.64, 0, 1)
        distance = np.hypot(yy - start[0] - t * (end[0] - start[0]), xx - start[1] - t * (end[1] - start[1]))
        added += 0.3 * (distance < 0.004)
    return added


def _strengths(rng: np.random.Generator, uncertain_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per finding: present (0/1), uncertain (bool) and its strength (0 when absent; faint when uncertain)."""
    uncertain = rng.random(len(FINDINGS)) < uncertain_fraction
    present = np.where(uncertain, rng.random(len(FINDINGS)) < 0.5, rng.random(len(FINDINGS)) < PREVALENCE)
    strength = np.where(uncertain, rng.uniform(0.1, 0.35, len(FINDINGS)), rng.uniform(0.25, 1.0, len(FINDINGS)))
    return present.astype(np.float32), uncertain, np.where(present, strength, 0.0)


def render_chest_xray(rng: np.random.Generator, size: int, uncertain_fraction: float = 0.1) -> ChestXray:
    """One radiograph of ``size`` x ``size`` 12-bit values (uint16) with its findings and boxes."""
    present, uncertain, strength = _strengths(rng, uncertain_fraction)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    anatomy = _anatomy(rng, strength[0])
    image = _body(rng, yy, xx, anatomy) + _variants(rng, yy, xx, anatomy)
    boxes = {}
    if present[0]:
        boxes[FINDINGS[0]] = _box(anatomy.heart, anatomy.heart_axes, size)
    for index, name in enumerate(FINDINGS[1:], start=1):
        if present[index]:
            added, boxes[name] = FINDING_DRAWERS[name](rng, yy, xx, anatomy, strength[index], size)
            image += added
    exposure = rng.uniform(0.75, 1.15)
    image = image * exposure + rng.normal(0, 0.012, image.shape) + rng.uniform(-0.03, 0.05)
    pixels = np.clip(np.rint(image * 0.85 * MAX_VALUE), 0, MAX_VALUE).astype(np.uint16)
    return ChestXray(pixels, present, uncertain, boxes)


def image_name(index: int, suffix: str = ".png") -> str:
    """ChestX-ray14's file name of item ``index``: the patient, then the film's number."""
    return f"{1 + index // 2:08d}_{index % 2:03d}{suffix}"


def chest_xray_items(count: int, size: int, seed: int, uncertain_fraction: float = 0.1) -> list[ChestXray]:
    """``count`` radiographs; a patient has two films (``ChestXray.patient``, counted from 1)."""
    if count < 1 or size < 32:
        raise DataError(f"synthetic chest X-rays need count >= 1 and size >= 32, got count={count}, size={size}")
    if not 0 <= uncertain_fraction < 1:
        raise DataError(f"uncertain_fraction={uncertain_fraction} must lie in [0, 1)")
    items = []
    for index in range(count):
        item = render_chest_xray(np.random.default_rng((seed, index)), size, uncertain_fraction)
        item.patient = 1 + index // 2
        items.append(item)
    return items


def synthetic_chest_xrays(
    count: int = 1000, size: int = 128, seed: int = 0, uncertain_fraction: float = 0.1
) -> Manifest:
    """``count`` chest-X-ray-like images (8 bits, windowed as a 12-bit file would be by the percentiles) with the
    union of their findings' boxes as masks; multi-label over :data:`FINDINGS`, uncertain labels left out (NaN)."""
    items = chest_xray_items(count, size, seed, uncertain_fraction)
    labels = np.stack([np.where(item.uncertain, np.nan, item.present) for item in items]).astype(np.float32)
    return Manifest(
        f"synthetic_chest_xrays(count={count}, size={size}, seed={seed})",
        [image_name(index) for index in range(count)],
        labels,
        list(FINDINGS),
        images=np.stack([window_values(item.pixels, "percentile") for item in items]),
        masks=np.stack([item.mask() for item in items]),
        groups=[f"{item.patient:08d}" for item in items],
    )
