"""Loading backbone weights: torchvision's files, or a local .pth / .safetensors file.

Models keep torchvision's parameter names, so a torchvision state dict loads as it
is. What a file cannot provide is handled by rule, and reported:

- the first convolution adapts to ``in_chans`` (grayscale sums the RGB filters);
- the classifier, and every attention module (a module that owns a tap), may be
  missing or differently shaped: they keep their initialisation;
- any other missing or mis-shaped tensor is an error that names it;
- tensors of the file the model does not use (VGG's dense layers, say) are listed.

``torch.load`` is only ever called with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import math
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnscope.errors import CheckpointError
from attnscope.layers.tap import find_taps
from attnscope.models.base import AttnClassifier

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
MAX_LISTED = 8


@dataclass
class LoadReport:
    """What a load did with each tensor, by the model's key (``unused``: by the file's key)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    kept_initialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors, adapted {_listing(self.adapted)}, "
            f"kept initialised {_listing(self.kept_initialised)}, unused from the file {_listing(self.unused)}"
        )


def _listing(keys: list[str]) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:MAX_LISTED])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > MAX_LISTED else ''})"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or torch (``.pth``/``.pt``) file.

    A checkpoint that wraps the weights (``{"state_dict": ...}``) is unwrapped, and
    the ``module.`` prefix of DataParallel/DDP checkpoints is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file; pass the path of a .pth or .safetensors state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only state dict ({type(error).__name__}: {error}); "
            "save it with torch.save(model.state_dict(), path) or safetensors"
        ) from error
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict (a mapping of names to tensors)")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries {not_tensors[:MAX_LISTED]} are not tensors; is it a state dict?")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def fetch_published(url: str, model_name: str) -> dict[str, torch.Tensor]:
    """Download (or read from torch.hub's cache) a published file, its hash checked."""
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        file = url.rsplit("/", 1)[-1]
        raise CheckpointError(
            f"cannot fetch the published weights of {model_name} from {url} ({error}). Without a network, "
            f"download {file} elsewhere and pass its path: --model-option pretrained=/path/to/{file} "
            f"(attnscope train), model: {{pretrained: /path/to/{file}}} (a run config) or "
            f"pretrained='/path/to/{file}' (Python); or put the file in {cache}"
        ) from error


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a (out, in, k, k) filter bank to ``in_chans`` inputs.

    One channel sums the filters over the file's inputs: a gray image then gives
    exactly the response the RGB filters give to the same image in RGB. More
    channels repeat the filters cyclically, scaled by ``in/in_chans`` (timm's
    convention); the response to a constant input is kept exactly when
    ``in_chans`` is a multiple of the file's inputs, approximately otherwise.
    """
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def fresh_prefixes(model: AttnClassifier) -> list[str]:
    """Model-key prefixes that may keep their initialisation: classifiers and attention modules."""
    config = model.default_cfg
    prefixes = [owner + "." for owner in find_taps(model) if owner != "tap"]
    prefixes += [prefix + config.classifier + "." for prefix in config.pretrained_prefixes if config.classifier]
    return prefixes


def is_whole_model_state(target: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> bool:
    """True when ``state`` holds every tensor of ``target`` under the same name and shape: the weights of an
    attnscope run of this very model (an AG-CNN stage's, say), not a backbone file."""
    needed = [key for key in target if not key.endswith("num_batches_tracked")]
    return bool(needed) and all(key in state and state[key].shape == target[key].shape for key in needed)


def apply_state_dict(model: AttnClassifier, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy ``state`` into ``model`` by the rules of this module; raise naming every misfit.

    A whole-model state (:func:`is_whole_model_state`) loads as it is, every tensor."""
    config = model.default_cfg
    target = model.state_dict()
    state = model.upgrade_state_dict(state)
    if is_whole_model_state(target, state):
        model.load_state_dict({key: state.get(key, value).to(value.dtype) for key, value in target.items()})
        report = LoadReport(source, loaded=list(target), unused=sorted(set(state) - set(target)))
        log.info("%s", report.summary())
        return report
    fresh = fresh_prefixes(model)
    report = LoadReport(source)
    merged = dict(target)
    used: set[str] = set()
    problems: list[str] = []
    for key, current in target.items():
        prefix = next((p for p in config.pretrained_prefixes if key.startswith(p)), None)
        is_fresh = prefix is None or any(key.startswith(p) for p in fresh)
        source_key = key if prefix is None else key[len(prefix) :]
        value = state.get(source_key)
        if value is not None:
            used.add(source_key)
        if value is not None and value.shape == current.shape:
            merged[key] = value.to(current.dtype)
            report.loaded.append(key)
        elif value is not None and source_key == f"{config.first_conv}.weight" and value.dim() == 4:
            merged[key] = adapt_first_conv(value, current.shape[1]).to(current.dtype)
            if merged[key].shape != current.shape:
                problems.append(f"'{source_key}' has shape {tuple(value.shape)}, the model's {tuple(current.shape)}")
            report.adapted.append(key)
        elif is_fresh or key.endswith("num_batches_tracked"):
            report.kept_initialised.append(key)
        elif value is None:
            problems.append(f"'{source_key}' is missing")
        else:
            problems.append(f"'{source_key}' has shape {tuple(value.shape)}, the model's {tuple(current.shape)}")
    if problems:
        more = f" and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise CheckpointError(
            f"{source} does not fit {config.name}: {'; '.join(problems[:MAX_LISTED])}{more}. "
            f"The file must hold {config.name}'s backbone in torchvision's parameter names."
        )
    report.unused = sorted(set(state) - used)
    model.load_state_dict(merged)
    log.info("%s", report.summary())
    return report


def load_pretrained(model: AttnClassifier, pretrained: bool | str | Path) -> LoadReport:
    """Load published weights (``True``) or a local file (a path) into ``model``."""
    config = model.default_cfg
    if pretrained is True:
        if not config.url:
            raise CheckpointError(
                f"{config.name} has no published weights; pass pretrained='/path/to/state_dict.pth' instead"
            )
        return apply_state_dict(model, fetch_published(config.url, config.name), config.url)
    if pretrained is False:
        raise CheckpointError(f"{config.name}: pretrained=False asks for no weights; nothing to load")
    return apply_state_dict(model, read_state_dict(pretrained), str(pretrained))
