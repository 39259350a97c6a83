"""Export a trained run to ONNX for a runtime of its own, checked with onnxruntime before it is written.

The exported graph takes what the loader yields, uint8 images (N, C, H, W) at the
run's size, and normalises them inside, so a hospital's runtime needs nothing of
attnscope: ``image`` in, ``logits`` out, divided by the run's temperature (and, with ``with_maps``, every spatial
attention tap as ``attention_<tap>``, at its own grid and in its own normalisation).
The batch axis is dynamic. The run's classes, validation threshold, image size,
normalisation and weights' SHA-256 travel in the model's metadata.

The export is checked before it is written: onnxruntime and PyTorch run the same
images of the run's test split (or another selection) and must agree on every
logit within ``tolerance`` and on every predicted class.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnscope.data.augment import BatchTransform
from attnscope.engine.inference import decisions
from attnscope.engine.metrics import probabilities
from attnscope.engine.run import DataSelection, Run
from attnscope.errors import CheckpointError, ConfigError, check_option, is_integer, is_number
from attnscope.fileio import atomic_write
from attnscope.layers.tap import capture_attention, native_maps
from attnscope.names import EXPORT_FORMATS
from attnscope.outputs import ONNX_MODEL, check_output_file

log = logging.getLogger(__name__)

MIN_OPSET = 18  # the lowest opset torch's exporter (torch.export based) writes


class ExportedModel(nn.Module):
    """The run's model with its normalisation in front, its logits divided by its temperature (so that their
    softmax or sigmoid are the calibrated probabilities) and, optionally, its attention maps as outputs."""

    def __init__(
        self,
        model: nn.Module,
        transform: BatchTransform,
        taps: list[str],
        temperature: float | list[float] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.taps = model, taps
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.inverse_temperature: torch.Tensor
        self.register_buffer("scale", transform.scale.clone())
        self.register_buffer("shift", transform.shift.clone())
        inverse = 1.0 / torch.as_tensor(1.0 if temperature is None else temperature, dtype=torch.float32)
        self.register_buffer("inverse_temperature", inverse)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = image.float() * self.scale + self.shift
        if not self.taps:
            return (self.model(inputs) * self.inverse_temperature,)
        with capture_attention(self.model) as captured:
            logits = self.model(inputs) * self.inverse_temperature
        maps = native_maps(captured)
        return (logits, *(maps[tap] for tap in self.taps))


@dataclass(frozen=True)
class ExportOptions(DataSelection):
    """How to export (``format``, ``opset``, ``with_maps``), where (default ``RUN/model.onnx``), and
    the check: the first ``check_images`` images of the selection (default: the test split)."""

    format: str = "onnx"
    opset: int = MIN_OPSET
    with_maps: bool = False
    out: str | Path | None = None
    check_images: int = 64
    tolerance: float = 1e-4
    force: bool = False  # replace a regular file at ``out`` that attnscope did not write

    def check(self) -> None:
        super().check()
        check_option("format", self.format, lambda v: v in EXPORT_FORMATS, f"is not one of {', '.join(EXPORT_FORMATS)}")
        newest = newest_opset()
        check_option(
            "opset",
            self.opset,
            lambda v: is_integer(v) and MIN_OPSET <= v <= newest,
            f"must be {MIN_OPSET} to {newest}",
        )
        check_option("check_images", self.check_images, lambda v: is_integer(v) and v >= 1, "must be an integer >= 1")
        check_option("tolerance", self.tolerance, lambda v: is_number(v) and v > 0, "must be a positive number")


@dataclass
class Export:
    """What :func:`export` wrote and how the check went."""

    out: Path
    outputs: dict[str, list[str | int]]
    opset: int
    images_checked: int
    max_logit_difference: float
    max_map_difference: float | None
    same_class: int
    seconds: float


def newest_opset() -> int:
    """The newest opset the installed onnx package knows (a ConfigError when the export extra is missing)."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({error.name} is missing): "
            "pip install 'attnscope[export]'"
        ) from error
    return int(onnx.defs.onnx_opset_version())


def export(run: Run, options: ExportOptions | None = None) -> Export:
    """Export ``run``'s model, check it with onnxruntime, and write it atomically (default ``RUN/model.onnx``)."""
    options = options or ExportOptions()
    options.check()
    started = time.perf_counter()
    out = check_output_file(
        options.out if options.out is not None else run.root / "model.onnx", ONNX_MODEL, options.force
    )
    taps = _spatial_taps(run) if options.with_maps else []
    if options.with_maps and not taps:
        raise ConfigError(f"{run.name} has no spatial attention maps to export; export without --with-maps")
    wrapped = ExportedModel(run.model(), run.transform, taps, run.temperature).eval()
    images = _check_images(run, options)
    names = ["logits", *[f"attention_{tap}" for tap in taps]]
    proto = to_onnx(wrapped, images[:2], names, options.opset)
    _add_metadata(proto, run)
    payload = proto.SerializeToString()
    result = _compare(wrapped, payload, images, names, run, options.tolerance)
    atomic_write(out, payload)
    return Export(
        out,
        {name: list(shape) for name, shape in _output_shapes(proto).items()},
        options.opset,
        len(images),
        result["logits"],
        max((result[name] for name in names[1:]), default=None),
        int(result["same_class"]),
        time.perf_counter() - started,
    )


def _spatial_taps(run: Run) -> list[str]:
    """The model's spatial attention taps, in capture order, from one pass over a blank image."""
    model = run.model()
    blank = torch.zeros(1, run.channels, run.image_size, run.image_size)
    with torch.no_grad(), capture_attention(model) as captured:
        model(blank)
    return list(native_maps(captured))


def _check_images(run: Run, options: ExportOptions) -> torch.Tensor:
    """The first ``check_images`` uint8 images of the selection (at least 2, for the batch axis)."""
    loader = run.loader(options)
    batches, count = [], 0
    for batch in loader:
        batches.append(batch["image"])
        count += len(batch["image"])
        if count >= options.check_images:
            break
    images = torch.cat(batches)[: options.check_images]
    return images if len(images) >= 2 else torch.cat([images, images])


def to_onnx(model: nn.Module, example: torch.Tensor, names: list[str], opset: int):  # -> onnx.ModelProto
    """The ONNX model of ``model`` with a dynamic batch axis (torch's exporter, quiet)."""
    batch = torch.export.Dim("batch", min=1)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside the exporter
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["image"],
                output_names=names,
                opset_version=opset,
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as error:
        raise CheckpointError(f"torch could not export this model to ONNX opset {opset}: {error}") from error
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    if program is None:
        raise CheckpointError("torch's ONNX exporter returned no program")
    return program.model_proto


def _add_metadata(proto, run: Run) -> None:
    """What a runtime needs to use the outputs: classes, task, threshold, input size, provenance."""
    from attnscope import __version__

    values = {
        "attnscope_version": __version__,
        "run": run.name,
        "weights_sha256": run.weights_sha256(),
        "kind": run.kind,
        "classes": json.dumps(run.classes),
        "threshold": json.dumps(run.threshold),
        "temperature": json.dumps(run.temperature),  # already applied to the logits in the graph
        "input": f"uint8 (N, {run.channels}, {run.image_size}, {run.image_size}), normalised inside the graph",
        "mean": json.dumps(run.summary["mean"]),
        "std": json.dumps(run.summary["std"]),
    }
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _output_shapes(proto) -> dict[str, list[str | int]]:
    return {
        output.name: [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
        for output in proto.graph.output
    }


def _compare(
    model: nn.Module, payload: bytes, images: torch.Tensor, names: list[str], run: Run, tolerance: float
) -> dict[str, float]:
    """Largest |difference| per output between onnxruntime and PyTorch, and the count of equal classes;
    a CheckpointError when they disagree beyond ``tolerance`` or on a class."""
    import onnxruntime

    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(names, {"image": images.numpy()})
    with torch.no_grad():
        torch_outputs = [t.numpy() for t in model(images)]
    differences = {
        name: float(np.abs(ours - theirs).max())
        for name, ours, theirs in zip(names, torch_outputs, onnx_outputs, strict=True)
    }
    ours, theirs = (
        decisions(probabilities(torch.from_numpy(o), run.kind), run) for o in (torch_outputs[0], onnx_outputs[0])
    )
    agree = ours == theirs
    same = int((agree.all(dim=-1) if agree.ndim > 1 else agree).sum())
    if differences["logits"] > tolerance or same < len(images):
        raise CheckpointError(
            f"the ONNX export disagrees with PyTorch: largest logit difference {differences['logits']:.2e} "
            f"(tolerance {tolerance:.0e}), {len(images) - same} of {len(images)} images classified differently"
        )
    return {**differences, "same_class": float(same)}
