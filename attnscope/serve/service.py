"""What the server computes, without the web: a run (and an index) answering for decoded images.

``ModelService`` decodes uploads with the guarded decoder of training
(:func:`~attnscope.data.decode.decode_image_bytes`), and answers the three
questions of the API for a batch of decoded images at once: the probabilities
and the decision at the run's validation threshold, the attention maps and a
CAM, the most similar indexed cases. Its batch methods are plain synchronous
functions: the web layer batches requests and calls them off its event loop,
always from one thread, so the CAM hooks of one batch never meet another's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps

from attnscope.data.decode import decode_image_bytes
from attnscope.engine.inference import decisions
from attnscope.engine.metrics import class_probabilities
from attnscope.engine.run import Run
from attnscope.engine.rundir import read_json
from attnscope.engine.uncertainty import spread_of_decision
from attnscope.errors import ConfigError, DataError, RetrievalError
from attnscope.explain.explainer import explain_batch
from attnscope.explain.overlay import overlay
from attnscope.htmlpage import png_array_uri
from attnscope.layers.tap import capture_attention, native_maps
from attnscope.models.vit import attention_modules
from attnscope.names import CAM_METHODS, HEADLINE_METRICS, PIXEL_METHODS, TRANSFORMER_METHODS
from attnscope.retrieval.apart import Apart, pixel_digest
from attnscope.retrieval.embed import embed_images
from attnscope.retrieval.index import SimilarityIndex
from attnscope.retrieval.service import check_same_model

log = logging.getLogger(__name__)

HEAT_COLOURS = "jet"
OVERLAY_ALPHA = 0.4
RAW_NOTE = (
    "raw: the map as the model computed it, at its own grid (row-major values, shape [h, w]), not rescaled: "
    "an attention tap in its own normalisation (softmax over positions or sigmoid gates, heads averaged), a CAM "
    "after its ReLU. The PNGs show it upsampled bilinearly to the input and min-max scaled to [0, 1] per image."
)


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave (for messages only) and its bytes."""

    name: str
    data: bytes


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)


class ModelService:
    """A run, and optionally an index built from it, answering batches of decoded images."""

    def __init__(self, run: Run, index: SimilarityIndex | None = None, index_path: Path | None = None) -> None:
        if index is not None:
            check_same_model(index, run, index_path or Path("index"))
        self.run, self.index = run, index
        self.model = run.model()
        self.weights_sha256 = run.weights_sha256()
        self.taps = self._taps()
        self.tested = self._test_metrics()  # read once: every prediction names its operating point
        self.sanity = self._sanity_flags()  # the maps' sanity checks, as explain or the report left them

    def _taps(self) -> list[str]:
        """The model's spatial attention taps, found by one forward pass (which also warms the model up)."""
        blank = torch.zeros(1, self.run.channels, self.run.image_size, self.run.image_size, dtype=torch.uint8)
        inputs, _ = self.run.transform(blank)
        with torch.no_grad(), capture_attention(self.model, detach=True) as captured:
            self.model(inputs)
        return sorted(native_maps(captured))

    # --- decoding ---------------------------------------------------------------------------------------

    def decode(self, upload: Upload, byte_limit: int | None = None) -> np.ndarray:
        """uint8 (C, S, S) pixels of an upload, decoded and resized as the run's training images were; an image
        whose pixels would take more than ``byte_limit`` bytes decoded is refused before it is decoded."""
        data = self.run.config.data
        if not upload.data:
            raise DataError(f"{upload.name}: an empty file")
        array = decode_image_bytes(
            upload.data, upload.name, data.image_size, data.mode, data.pixel_limit, byte_limit, data.window
        )
        return np.ascontiguousarray(array.reshape(data.image_size, data.image_size, -1).transpose(2, 0, 1))

    def _inputs(self, images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images))

    # --- the three answers ------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """Per image: every class's probability and the predicted class(es) at the validation threshold; served
        from a cross-validation folder, also ``uncertainty``: the spread of the probability over its folds."""
        inputs, _ = self.run.transform(self._inputs(images))
        spread = None
        if hasattr(self.model, "fold_probabilities"):  # a fold ensemble: its folds' spread comes for free
            drawn = self.model.fold_probabilities(inputs)  # type: ignore[operator]
            probs, spread = (
                drawn.mean(0),
                spread_of_decision(drawn.mean(0), drawn.std(0, unbiased=False), self.run.kind),
            )
        else:
            probs = self.run.probabilities(self.model(inputs))
        per_class = class_probabilities(probs, self.run.kind).tolist()
        decided = decisions(probs, self.run).tolist()
        results = []
        for position, (values, decision) in enumerate(zip(per_class, decided, strict=True)):
            if self.run.kind == "multilabel":
                predicted: str | list[str] = [c for c, on in zip(self.run.classes, decision, strict=True) if on]
            else:
                predicted = self.run.classes[decision]
            result = {"probabilities": dict(zip(self.run.classes, values, strict=True)), "predicted": predicted}
            if spread is not None:
                result["uncertainty"] = spread[position].tolist()
            results.append(result)
        return results

    def map_methods(self) -> list[str]:
        """The map methods this run's model takes: the CAMs and pixel methods, and a transformer's own two."""
        transformer = TRANSFORMER_METHODS if attention_modules(self.model) else ()
        return [*CAM_METHODS, *PIXEL_METHODS, *transformer]

    def explain(self, images: list[np.ndarray], method: str, target: int | None = None) -> list[dict[str, Any]]:
        """Per image: the explained class (``target``, a class index; None: the predicted one), the input as a
        PNG, and every attention tap and ``method``'s CAM as a colour heat map, an overlay and the raw values."""
        check_cam_method(method)
        images_u8 = self._inputs(images)
        explanation = explain_batch(self.run, images_u8, ["attention", method], target=target)
        pictures = images_u8.permute(0, 2, 3, 1).float().numpy() / 255.0
        results = []
        for position in range(len(images)):
            picture = pictures[position] if pictures.shape[-1] == 3 else pictures[position, ..., 0]
            maps = [
                self._map_entry(label, explanation.maps[label][position], explanation.raw[label][position], picture)
                for label in explanation.maps
            ]
            results.append(
                {
                    "target": self.run.classes[int(explanation.targets[position])],
                    "probability": float(explanation.probabilities[position]),
                    "input": png_array_uri(images[position].transpose(1, 2, 0)),
                    "maps": maps,
                }
            )
        return results

    def _map_entry(self, label: str, shown: torch.Tensor, raw: torch.Tensor, picture: np.ndarray) -> dict[str, Any]:
        heat = shown.numpy()
        colours = colormaps[HEAT_COLOURS](np.clip(heat, 0, 1))
        return {
            "name": label,
            "kind": "attention" if label.startswith("attention:") else "cam",
            "heatmap": png_array_uri(_to_u8(colours)),
            "overlay": png_array_uri(_to_u8(overlay(picture, heat, OVERLAY_ALPHA, HEAT_COLOURS))),
            "raw": {"shape": list(raw.shape), "values": [round(v, 6) for v in raw.float().flatten().tolist()]},
        }

    @torch.no_grad()
    def similar(self, images: list[np.ndarray], k: int) -> list[dict[str, Any]]:
        """Per image: its ``k`` most similar indexed cases (id, label, cosine similarity, thumbnail)."""
        index = self.require_index()
        inputs, _ = self.run.transform(self._inputs(images))
        vectors = embed_images(self.model, inputs, index.embedding).numpy()
        apart = [Apart(pixel_digest(image)) for image in images]  # an indexed image does not find itself
        positions, similarities = index.search(index.reduce(vectors), k, apart)
        results = []
        for found, scores in zip(positions.tolist(), similarities.tolist(), strict=True):
            neighbours = []
            for rank, (position, similarity) in enumerate(zip(found, scores, strict=True), 1):
                if position < 0:
                    break
                row = index.rows[position]
                thumb = index.thumbs[position] if index.thumbs is not None else None
                neighbours.append(
                    {
                        "rank": rank,
                        "id": row["id"],
                        "label": row["label"],
                        "similarity": round(float(similarity), 6),
                        "thumbnail": png_array_uri(thumb) if thumb is not None else None,
                    }
                )
            results.append({"neighbours": neighbours})
        return results

    def require_index(self) -> SimilarityIndex:
        """The index, or the error a similarity request gets from a server started without one."""
        if self.index is None:
            raise RetrievalError("this server has no similarity index; start it with --index INDEX")
        return self.index

    # --- what the model is ------------------------------------------------------------------------------

    def operating_point(self) -> dict[str, Any] | None:
        """The sensitivity and specificity at the validation threshold, measured on the test split when the run
        was evaluated with these weights (``RUN/evaluation``), else on the validation split; None if neither."""
        tested = self.tested
        if tested is not None and "sensitivity_at_threshold" in tested:
            return {
                "split": "test",
                "sensitivity": tested["sensitivity_at_threshold"],
                "specificity": tested["specificity_at_threshold"],
                "policy": self.run.threshold_policy,
            }
        validated = self.run.best.get("metrics", {})
        if "val/sensitivity_youden" in validated:  # the name every run's training log has
            return {
                "split": "val",
                "sensitivity": validated["val/sensitivity_youden"],
                "specificity": validated["val/specificity_youden"],
                "policy": self.run.threshold_policy,
            }
        return None

    def _test_metrics(self) -> dict[str, Any] | None:
        """The headline metrics of ``RUN/evaluation/metrics.json`` if it was computed with the served weights:
        the same file by its SHA-256 where the evaluation recorded one (the weights may have been retrained
        since), else the same name (``best``, ``last``)."""
        path = self.run.root / "evaluation" / "metrics.json"
        if not path.is_file():
            return None
        recorded = read_json(path)
        scored = recorded.get("weights_sha256")
        if (scored or recorded.get("weights")) != (self.weights_sha256 if scored else self.run.weights):
            log.warning("%s scored other weights than those served; the model card leaves its metrics out", path)
            return None
        metrics = dict(recorded.get("metrics", {}))
        for old, new in (
            ("sensitivity_youden", "sensitivity_at_threshold"),
            ("specificity_youden", "specificity_at_threshold"),
        ):
            for suffix in ("", "_per_class"):  # evaluations written before the names said what they are
                metrics.setdefault(new + suffix, metrics.get(old + suffix))
        wanted = (*HEADLINE_METRICS, "rows", *FINDING_METRICS)
        found = {name: metrics[name] for name in wanted if metrics.get(name) is not None}
        drawn = metrics.get("intervals", {})
        if drawn.get("intervals"):  # each headline metric's and each finding's AUC interval, and how they were drawn
            found["intervals"] = {
                name: values for name, values in drawn["intervals"].items() if name in found or name.startswith("auc (")
            }
            found["interval_method"] = {key: drawn[key] for key in ("method", "level", "resamples", "unit", "units")}
        return found

    def _sanity_flags(self) -> dict[str, str]:
        """Each method's flag from the newest ``sanity.json`` of this run's explanations or report (for the served
        weights): empty where it passed, or where nothing was checked."""
        found = [p for p in (self.run.root / "explain" / "sanity.json",
                             self.run.root / "report_files" / "explain" / "sanity.json") if p.is_file()]  # fmt: skip
        for path in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True):
            recorded = read_json(path)
            if recorded.get("weights_sha256") == self.weights_sha256:
                return {name: values.get("flag", "") for name, values in recorded.get("methods", {}).items()}
        return {}

    def card(self) -> dict[str, Any]:
        """What ``GET /v1/model`` says: the run, its model and data settings, classes, threshold, metrics."""
        config = self.run.config
        return {
            "run": self.run.root.name,
            "weights": self.run.weights,
            "weights_sha256": self.weights_sha256,
            "model": config.model.name,
            "kind": self.run.kind,
            "classes": self.run.classes,
            "threshold": self.run.threshold,
            "temperature": self.run.temperature,  # None: the probabilities are the model's own, not calibrated
            "image_size": self.run.image_size,
            "mode": config.data.mode,
            "attention_taps": self.taps,
            "cam_methods": self.map_methods(),
            "test_metrics": self.tested,
            "sanity": self.sanity,  # method -> "this map barely depends on ..." or "" (passed)
            "operating_point": self.operating_point(),
            "index": None
            if self.index is None
            else {"images": len(self.index), "kind": self.index.kind, "thumbnails": self.index.thumbs is not None},
        }


# a multi-label run's figures per finding, for the page's table of findings
FINDING_METRICS = (
    "auc_per_class",
    "threshold_per_class",
    "sensitivity_at_threshold_per_class",
    "specificity_at_threshold_per_class",
)


def check_cam_method(method: str) -> None:
    known = (*CAM_METHODS, *PIXEL_METHODS, *TRANSFORMER_METHODS)
    if method not in known:
        raise ConfigError(f"method={method!r} is not a CAM, pixel or transformer method; use one of {', '.join(known)}")
