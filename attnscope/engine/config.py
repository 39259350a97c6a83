"""The run config: one tree of plain values that decides everything a run does.

It is read from YAML (a file, or a config shipped with the package by name),
overridden by dotted ``key=value`` settings (what CLI flags turn into), checked
(unknown keys are refused with the known ones), and written back resolved into
the run directory, so ``config.yaml`` alone reproduces the run.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnscope.data.module import DataConfig
from attnscope.errors import ConfigError, check_option, is_integer, is_number, refuse_unknown, shown
from attnscope.names import (
    CALIBRATIONS,
    FOCAL_ALPHA_MODES,
    LOSSES,
    MONITOR_MODES,
    OPTIMIZERS,
    SCHEDULES,
    SUPERVISION_KINDS,
    shipped_configs,
)


@dataclass
class ModelSection:
    """Which registered model, with which builder options and initial weights.

    Attributes:
        name: a model of the registry (``attnscope models`` lists them).
        options: the model builder's keyword options (``attnscope models --options``), e.g. ``{dropout: 0.2}``.
        pretrained: ``true`` for torchvision's published ImageNet weights of the backbone (fetched once and
            hash-checked by torch.hub, or found in its cache), or the path of a local weights file; ``false``
            starts from random weights.
    """

    name: str = "attn_vgg_tiny"
    options: dict = field(default_factory=dict)
    pretrained: bool | str = False


@dataclass
class LossSection:
    """The classification loss.

    Attributes:
        name: ``focal`` (Lin et al. 2017) or ``ce`` (cross-entropy; BCE for binary and multi-label data).
        alpha: the focal loss's class weight: one number, a list (one per class), or null for none.
        alpha_mode: ``class`` (Lin et al. 2017: positives weighed by alpha, negatives by 1 - alpha) or ``scale``
            (the AttnVGG melanoma tutorial's: every sample's loss times alpha).
        gamma: the focal loss's focusing exponent; 0 with a null alpha is plain cross-entropy.
        label_smoothing: the share of each target spread over the other classes (0 for none).
    """

    name: str = "focal"
    alpha: float | list[float] | None = 0.25
    alpha_mode: str = "class"
    gamma: float = 2.0
    label_smoothing: float = 0.0


@dataclass
class SupervisionSection:
    """Attention supervision: each tap's map pulled towards the lesion masks, towards itself, or towards
    the augmentation's geometry.

    Attributes:
        kind: ``dice`` (soft Dice against the mask), ``energy`` (the map's mass outside the mask), or
            ``self_focal`` (the maps are their own targets; no mask is read).
        weights: tap -> weight of the mask (or self-focal) loss, e.g. ``{pool3: 0.001, pool4: 0.01}``;
            empty turns it off.
        consistency: tap -> weight of attention consistency (Guo et al. 2019): each map follows the
            training augmentation's geometry; needs no masks.
        threshold: ``self_focal``: the positives are the cells reaching this share of the map's peak.
        ignore_th: ``self_focal``: a map whose peak is below this has no focus yet and is left out.
        gamma: ``self_focal``: the focal exponent of its loss.
    """

    kind: str = "dice"
    weights: dict = field(default_factory=dict)
    consistency: dict = field(default_factory=dict)
    threshold: float = 0.5
    ignore_th: float = 0.1
    gamma: float = 2.0


@dataclass
class OptimSection:
    """The optimiser: Adam (the AttnVGG melanoma tutorial: lr 1e-4), AdamW, or SGD with Nesterov momentum
    (AttnMel: 0.01, 0.9, weight decay 1e-4).

    Attributes:
        name: ``adam``, ``adamw`` or ``sgd``.
        lr: the learning rate, or ``auto`` for the one a learning-rate range test suggests
            (``train --lr auto``; its curve is saved in the run).
        weight_decay: L2 penalty (decoupled for AdamW).
        momentum: SGD's momentum.
        nesterov: SGD's Nesterov momentum.
    """

    name: str = "adam"
    lr: float | str = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True


@dataclass
class ScheduleSection:
    """The learning-rate schedule.

    Attributes:
        name: ``step`` (times gamma every step_size epochs), ``cosine`` (with linear warm-up, per step),
            ``onecycle``, or ``none``.
        step_size: ``step``: epochs between two decays.
        gamma: ``step``: the factor of each decay.
        warmup_epochs: ``cosine``: epochs of linear warm-up (fractions allowed).
        min_lr_ratio: ``cosine``: the last learning rate as a share of the first.
        pct_start: ``onecycle``: the share of steps spent rising.
    """

    name: str = "none"
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    pct_start: float = 0.3


@dataclass
class TrainerSection:
    """How the loop runs: length, devices, precision, speed options, what is kept as best.

    Attributes:
        epochs: the epochs to train (with ``time_budget_s``, the most).
        time_budget_s: wall seconds for the whole run: a probe times a few batches and the epochs that fit
            are planned; null trains ``epochs``.
        accelerator: Lightning's accelerator: ``auto``, ``cpu``, ``gpu``.
        devices: how many devices (or which), as Lightning reads it.
        num_nodes: machines taking part.
        strategy: Lightning's strategy (``auto``, ``ddp``, ...).
        precision: ``32-true``, ``bf16-mixed``, ``16-mixed``, or ``auto`` (bf16-mixed where the device has
            native bf16, else 32-true).
        channels_last: train in the channels-last memory format.
        compile: run the model through ``torch.compile``.
        grad_clip: clip the gradients' norm to this; null for no clipping.
        ema_decay: keep an exponential moving average of the weights with this decay (evaluated and saved
            in their place); null for none.
        monitor: the validation metric that picks the best weights.
        mode: ``max`` or ``min``: which way ``monitor`` is better.
        seed: the seed of weights, shuffling and augmentation.
        threads: torch's CPU threads; null leaves torch's default.
        progress: show Lightning's progress bar.
        calibration: ``temperature`` (temperature scaling fitted on validation after training) or ``none``.
        threshold: the operating point chosen on validation: ``youden``, ``sensitivity>=X``,
            ``specificity>=X`` or ``fixed:X``.
    """

    epochs: int = 10
    time_budget_s: float | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float | None = None
    ema_decay: float | None = None
    monitor: str = "val/auc"
    mode: str = "max"
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    calibration: str = "temperature"
    threshold: str = "youden"


@dataclass
class RunConfig:
    """Everything a training run needs.

    Attributes:
        model: which model (``model.*``).
        data: which images and how they are read, split and augmented (``data.*``).
        loss: the classification loss (``loss.*``).
        supervision: attention supervision (``supervision.*``).
        optim: the optimiser (``optim.*``).
        schedule: the learning-rate schedule (``schedule.*``).
        trainer: how the loop runs (``trainer.*``).
        run_dir: the run's folder; null picks ``runs/<model>-<time>``.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossSection = field(default_factory=LossSection)
    supervision: SupervisionSection = field(default_factory=SupervisionSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    run_dir: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        """A checked config from plain values; a missing key keeps its default."""
        if not isinstance(values, dict):
            raise ConfigError(f"a run config is a mapping of sections, got {type(values).__name__}")
        _refuse_unknown("run config", values, cls)
        sections: dict[str, Any] = {}
        for name, kind in (
            ("model", ModelSection),
            ("loss", LossSection),
            ("supervision", SupervisionSection),
            ("optim", OptimSection),
            ("schedule", ScheduleSection),
            ("trainer", TrainerSection),
        ):
            section = values.get(name) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"config section {name!r} must be a mapping, got {section!r}")
            _refuse_unknown(f"config section {name!r}", section, kind)
            sections[name] = kind(**section)
        sections["data"] = DataConfig.from_dict(values.get("data") or {})
        config = cls(**sections, run_dir=values.get("run_dir"))
        config.check()
        return config

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse values no run could use, naming the option."""
        from attnscope.engine.metrics import parse_policy

        parse_policy(self.trainer.threshold)
        choices = (
            ("optim.name", self.optim.name, OPTIMIZERS),
            ("schedule.name", self.schedule.name, SCHEDULES),
            ("loss.name", self.loss.name, LOSSES),
            ("trainer.mode", self.trainer.mode, MONITOR_MODES),
            ("trainer.calibration", self.trainer.calibration, CALIBRATIONS),
        )
        for key, value, allowed in choices:
            if value not in allowed:
                raise ConfigError(f"{key}={value!r}: use one of {', '.join(allowed)}")
        positive: tuple[tuple[str, object], ...] = (
            ("trainer.epochs", self.trainer.epochs),
            *((("optim.lr", self.optim.lr),) if self.optim.lr != "auto" else ()),
        )
        for key, number in positive:
            check_option(key, number, _number(0, low_open=True), "must be a positive number")
        check_option(
            "trainer.ema_decay",
            self.trainer.ema_decay,
            _number(0, 1, low_open=True, high_open=True, optional=True),
            "must be null or lie strictly between 0 and 1",
        )
        check_option(
            "loss.label_smoothing", self.loss.label_smoothing, _number(0, 1, high_open=True), "must lie in [0, 1)"
        )
        _check_model(self.model)
        _check_training(self)
        self.data.check()


def _check_model(section: ModelSection) -> None:
    """The model is registered and takes the options given (nothing is built)."""
    from attnscope.models.registry import MODELS

    MODELS.get(section.name)
    check_option("model.options", section.options, lambda v: isinstance(v, dict), "must be a mapping of option: value")
    MODELS.check_options(section.name, section.options, option="model.options")
    check_option(
        "model.pretrained", section.pretrained, lambda v: isinstance(v, (bool, str)), "must be true, false or a path"
    )


def _number(
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> Callable[[Any], bool]:
    """A rule: a number (an integer) in the range, or also None when ``optional``."""

    def ok(value: Any) -> bool:
        if value is None:
            return optional
        if not (is_integer(value) if integer else is_number(value)):
            return False
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)

    return ok


def _name(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _weights(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _number(0)(w) for k, w in value.items())


def _alpha(value: Any) -> bool:
    return _number(0, 1, optional=True)(value) or (isinstance(value, list) and all(map(_number(0, 1), value)))


def _devices(value: Any) -> bool:
    return _number(1, integer=True)(value) or isinstance(value, str)


# (key, rule, what the rule asks): every value of these sections is checked when a config is loaded
TRAINING_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("supervision.kind", lambda v: v in SUPERVISION_KINDS, f"is not a kind: use one of {', '.join(SUPERVISION_KINDS)}"),
    ("supervision.weights", _weights, "must map attention taps to weights >= 0, e.g. {pool3: 0.001, pool4: 0.01}"),
    ("supervision.consistency", _weights, "must map attention taps to weights >= 0, e.g. {pool3: 1.0}"),
    ("supervision.threshold", _number(0, 1, low_open=True), "must lie in (0, 1]"),
    ("supervision.ignore_th", _number(0, 1), "must lie in [0, 1]"),
    ("supervision.gamma", _number(0), "must be a number >= 0"),
    ("loss.gamma", _number(0), "must be a number >= 0"),
    ("loss.alpha", _alpha, "must be null, a number in [0, 1], or one such number per class"),
    ("loss.alpha_mode", lambda v: v in FOCAL_ALPHA_MODES, f"is not a mode: use one of {', '.join(FOCAL_ALPHA_MODES)}"),
    ("optim.weight_decay", _number(0), "must be a number >= 0"),
    ("optim.momentum", _number(0, 1, high_open=True), "must lie in [0, 1)"),
    ("schedule.step_size", _number(1, integer=True), "must be an integer >= 1"),
    ("schedule.gamma", _number(0, low_open=True), "must be a number > 0"),
    ("schedule.warmup_epochs", _number(0), "must be a number >= 0"),
    ("schedule.min_lr_ratio", _number(0, 1), "must lie in [0, 1]"),
    ("schedule.pct_start", _number(0, 1, low_open=True, high_open=True), "must lie in (0, 1)"),
    ("trainer.epochs", _number(1, integer=True), "must be an integer >= 1"),
    ("trainer.time_budget_s", _number(0, low_open=True, optional=True), "must be null or a number of seconds > 0"),
    ("trainer.num_nodes", _number(1, integer=True), "must be an integer >= 1"),
    ("trainer.devices", _devices, "must be a number of devices >= 1, or a string such as auto or 0,1"),
    ("trainer.grad_clip", _number(0, low_open=True, optional=True), "must be null or a number > 0"),
    ("trainer.threads", _number(1, integer=True, optional=True), "must be null or an integer >= 1"),
    ("trainer.seed", is_integer, "must be an integer"),
    ("trainer.accelerator", _name, "must be a non-empty name"),
    ("trainer.strategy", _name, "must be a non-empty name"),
    ("trainer.precision", _name, "must be a non-empty name"),
    ("trainer.monitor", _name, "must be a non-empty name"),
)


def _check_training(config: RunConfig) -> None:
    """Every value of the loss, supervision, optimiser, schedule and trainer sections, by its rule."""
    for key, ok, rule in TRAINING_RULES:
        section, option = key.split(".")
        check_option(key, getattr(getattr(config, section), option), ok, rule)
    if config.loss.alpha_mode == "scale" and (isinstance(config.loss.alpha, list) or config.data.class_weights):
        raise ConfigError(
            "loss.alpha_mode=scale multiplies every sample by one number: give a single loss.alpha, "
            "without data.class_weights (per-class weights need alpha_mode: class)"
        )


def _refuse_unknown(where: str, values: dict, kind: type) -> None:
    refuse_unknown(where, values, (f.name for f in dataclasses.fields(kind)))


def named_configs() -> list[str]:
    """Configs shipped with the package (``attnscope train --config NAME``)."""
    return shipped_configs()


def read_config_file(name_or_path: str | Path) -> dict:
    """The raw mapping of a YAML file, or of a shipped config when no such file exists."""
    path = Path(name_or_path)
    if path.is_file():
        text, source = _read_text(path), str(path)
    elif str(name_or_path) in named_configs():
        resource = importlib.resources.files("attnscope") / "configs" / f"{name_or_path}.yaml"
        text, source = resource.read_text(encoding="utf-8"), f"shipped config {name_or_path!r}"
    else:
        raise ConfigError(
            f"config {str(name_or_path)!r} is neither a file nor a shipped config; "
            f"shipped configs: {', '.join(named_configs())}"
        )
    values = _load_yaml(text, source)
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a run config is a mapping of sections (model:, data:, ...), not {shown(values)}")
    return values


MAX_CONFIG_DEPTH = 16  # sections, options and a value's own lists: a run config needs 4 or 5
MAX_CONFIG_VALUES = 100_000  # after YAML's aliases are expanded: a run config has a few hundred


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text, so not a YAML config (is it the file you meant?)") from error


def _load_yaml(text: str, source: str) -> Any:
    """``text`` read as YAML and bounded: at most MAX_CONFIG_DEPTH levels deep and MAX_CONFIG_VALUES values
    once aliases are expanded (an alias bomb of 160 bytes expands to billions), each a ConfigError."""
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML ({shown(str(error))})") from error
    except RecursionError as error:
        raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep") from error
    check_size(values, source)
    return values


def check_size(values: Any, source: str) -> None:
    """Refuse a value deeper than MAX_CONFIG_DEPTH or larger than MAX_CONFIG_VALUES, walked without
    recursion and stopped at the first limit, so a hostile value costs at most that many steps."""
    stack, count = [(values, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"{source}: more than {MAX_CONFIG_VALUES:,} values (YAML aliases expand to that)")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)


def parse_setting(setting: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], 0.01); the value is read as YAML."""
    key, sep, text = setting.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"setting {shown(setting)} must look like section.option=value (e.g. optim.lr=0.01)")
    value = _load_yaml(text, f"setting {shown(key)}") if text.strip() else None
    return key.strip().split("."), value


def apply_settings(values: dict, settings: list[str]) -> dict:
    """A copy of ``values`` with each dotted setting applied in order (later ones win)."""
    result = copy.deepcopy(values)
    for setting in settings:
        path, value = parse_setting(setting)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"setting {setting!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def load_config(config: str | Path | None = None, settings: list[str] | None = None) -> RunConfig:
    """The run config from a file or shipped name (or the defaults), with ``settings`` applied.

    Args:
        config: a YAML file, the name of a shipped config (``demo``, ``melanoma``, ``chest_xray``, ...), or
            None for the defaults.
        settings: dotted ``section.key=value`` settings applied in order (the value is read as YAML), as
            ``attnscope train --set`` takes them.

    Returns:
        The checked config; every key is listed in the config reference.

    Raises:
        ConfigError: an unknown file or name, an unknown key (the known ones are listed), or a value no
            run could use (the key and the rule are named)."""
    values = read_config_file(config) if config is not None else {}
    return RunConfig.from_dict(apply_settings(values, settings or []))


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (tuples become lists, so it reads back the same)."""
    return yaml.safe_dump(_plain(config.to_dict()), sort_keys=False)


def _plain(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: _plain(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [_plain(v) for v in values]
    return values
