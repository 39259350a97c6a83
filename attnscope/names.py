"""The names a user can choose among, in one torch-free module.

The library's registries and checks read their lists from here, and so does the
command line for its ``choices`` and help texts; importing this module costs
nothing, so ``attnscope --help`` stays fast. The registries of data sources, map
methods and index kinds are made with their list from here and refuse any other
name (:class:`attnscope.registry.Registry`); a test checks each holds its whole list.
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")
CALIBRATIONS = ("temperature", "none")  # trainer.calibration
# the scalar metrics of an evaluation, in the order they are shown (CLI, report): accuracy, balanced accuracy,
# sensitivity and specificity at 0.5, then sensitivity and specificity at the operating threshold chosen on
# validation (trainer.threshold)
HEADLINE_METRICS = (
    "auc",
    "ap",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "sensitivity_at_threshold",
    "specificity_at_threshold",
)
WEIGHTS = ("best", "last")

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "step", "cosine", "onecycle")
LOSSES = ("focal", "ce")
# what the focal loss's alpha means: "class", Lin et al. 2017 (positives alpha, negatives 1 - alpha; per class
# in multi-class); "scale", the AttnVGG melanoma tutorial's (every sample's loss times alpha)
FOCAL_ALPHA_MODES = ("class", "scale")
# attention supervision: against masks (dice, energy), or self-guided without masks (self_focal)
SUPERVISION_KINDS = ("dice", "energy", "self_focal")
MASK_SUPERVISION_KINDS = ("dice", "energy")
MONITOR_MODES = ("max", "min")

# how a classifier pools its last feature map: global average pooling, or attention pooling
# (Ilse et al. 2018), plain or gated
MODEL_HEADS = ("avg", "attn_pool", "gated_attn_pool")

DATA_SOURCES = ("csv", "folder", "idx", "medmnist", "synthetic_lesions", "synthetic_chest_xrays", "cluttered")

# layer CAMs: one backward pass (the first six), none (eigencam), one forward pass per channel (score-, ablation-),
# or Grad-CAM times guided backpropagation (guided_gradcam: two backward passes)
CAM_METHODS = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcam_elementwise",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "guided_gradcam",
)
# maps of the input's pixels: one forward pass per window (occlusion), per step or sample (the next two), or
# one backward pass (fullgrad, guided_backprop)
PIXEL_METHODS = ("occlusion", "integrated_gradients", "smoothgrad", "fullgrad", "guided_backprop")
# maps of a vision transformer read from its attention matrices: no backward pass (rollout), one (attribution)
TRANSFORMER_METHODS = ("attention_rollout", "transformer_attribution")
EXPLAIN_METHODS = ("attention", *CAM_METHODS, *PIXEL_METHODS, *TRANSFORMER_METHODS)
# what explain and the report compute unless told otherwise: the maps that cost one pass each
DEFAULT_EXPLAIN_METHODS = ("attention", "gradcam", "gradcam++", "xgradcam", "layercam")

EXPORT_FORMATS = ("onnx",)

INDEX_KINDS = ("flat", "ivf", "hnsw", "lsh", "lsh_buckets")
INDEX_PARAMS: dict[str, dict[str, int | float]] = {
    "flat": {},
    "ivf": {"nlist": 0, "nprobe": 16},
    "hnsw": {"M": 32, "ef_search": 64, "ef_construction": 80},
    "lsh": {"nbits": 0, "rerank": 10},  # sign random projections (Charikar 2002), FAISS IndexLSH
    # p-stable buckets (Datar et al. 2004) with multi-probe within ``margin`` of an interval's edge
    "lsh_buckets": {"tables": 32, "directions": 4, "intervals": 4, "margin": 0.2, "rerank": 10},
}
# the index parameters that are shares, not counts
FRACTION_INDEX_PARAMS = ("margin",)


def shipped_configs() -> list[str]:
    """Configs shipped with the package (``attnscope train --config NAME``), read from its ``configs`` folder."""
    import importlib.resources

    folder = importlib.resources.files("attnscope") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
