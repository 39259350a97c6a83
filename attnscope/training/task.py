"""The training task: a LightningModule holding model, loss, metrics and optimisation.

Batches arrive as uint8 and are augmented and normalised on the training
device (``on_after_batch_transfer``). Every epoch starts from a random state
derived from (seed, epoch, rank) alone, so an epoch run again after a resume
draws the same augmentations and dropout masks as the first time: a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MeanMetric

from attnscope.data.augment import BatchTransform, apply_geometry, sample_geometry, warp_maps
from attnscope.engine.config import RunConfig
from attnscope.engine.metrics import EpochOutputs, probabilities, scalars, summarize
from attnscope.errors import ConfigError, TrainingError
from attnscope.layers.tap import capture_attention
from attnscope.losses import AttentionConsistencyLoss, AttentionMaskLoss, FocalLoss, SelfFocalAttentionLoss

log = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One 32-bit seed per (run seed, epoch, process)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_loss(config: RunConfig, kind: str, class_weights: torch.Tensor | None) -> nn.Module:
    """Focal loss or cross-entropy for ``kind``; class weights and label smoothing where they apply."""
    section = config.loss
    if section.name == "focal":
        alpha: float | torch.Tensor | None = None
        if class_weights is not None:
            # class weights replace alpha; binary focal loss weighs the positive class by alpha and
            # the negative by 1 - alpha, so the weights become the positive's share of their sum
            alpha = class_weights[1] / class_weights.sum() if kind == "binary" else class_weights
            log.info("focal loss: alpha from data.class_weights: %s", alpha.tolist())
        elif isinstance(section.alpha, list):
            alpha = torch.tensor(section.alpha, dtype=torch.float32)
        else:
            alpha = section.alpha
        return FocalLoss(alpha=alpha, gamma=section.gamma, task=kind, alpha_mode=section.alpha_mode)
    if kind == "multiclass":
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=section.label_smoothing)
    pos_weight = None
    if class_weights is not None:
        # binary: weights are (negative, positive); the positive's relative weight is their ratio
        pos_weight = (class_weights[1:] / class_weights[0]) if kind == "binary" else class_weights
    return _SmoothedBCE(pos_weight, section.label_smoothing)


def build_supervision(config: RunConfig) -> nn.Module | None:
    """The attention supervision ``config.supervision`` asks for: against masks, self-guided, or none."""
    section = config.supervision
    if not section.weights:
        return None
    if section.kind == "self_focal":
        return SelfFocalAttentionLoss(section.weights, section.threshold, section.ignore_th, section.gamma)
    return AttentionMaskLoss(section.weights, section.kind)


class _SmoothedBCE(nn.Module):
    """BCE-with-logits whose 0/1 targets are pulled towards 1/2 by ``smoothing``; a label left out (NaN:
    uncertain, ignored) adds nothing to the loss or its mean, as in :class:`~attnscope.losses.FocalLoss`."""

    def __init__(self, pos_weight: torch.Tensor | None, smoothing: float) -> None:
        super().__init__()
        self.pos_weight: torch.Tensor | None
        self.register_buffer("pos_weight", pos_weight, persistent=False)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype).reshape(logits.shape)
        known = ~torch.isnan(target)
        target = torch.nan_to_num(target, nan=0.0) * (1 - self.smoothing) + 0.5 * self.smoothing
        loss = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), target.float(), pos_weight=self.pos_weight, reduction="none"
        )
        return (loss * known).sum() / known.sum().clamp_min(1)


class ClassifierTask(L.LightningModule):
    """Trains ``model`` (logits out) on uint8 batches; records metrics per epoch on train and val."""

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        transform: BatchTransform,
        kind: str,
        classes: list[str],
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config, self.model, self.transform, self.kind, self.classes = config, model, transform, kind, classes
        self.criterion = build_loss(config, kind, class_weights)
        self.supervision = build_supervision(config)
        if isinstance(self.supervision, AttentionMaskLoss) and not transform.with_masks:
            raise ConfigError(
                f"supervision.weights is set with kind {config.supervision.kind}, but the data have no masks; "
                "use a source with masks (csv mask_column, synthetic_lesions, cluttered), or kind self_focal"
            )
        consistency = config.supervision.consistency
        self.consistency = AttentionConsistencyLoss(consistency) if consistency else None
        self.ema = None
        if config.trainer.ema_decay is not None:
            self.ema = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(config.trainer.ema_decay), use_buffers=True
            )
        self.attention_loss = MeanMetric()
        self.consistency_loss = MeanMetric()
        self.train_outputs = EpochOutputs()
        self.val_outputs = EpochOutputs()
        self.epoch_metrics: dict[str, float] = {}
        self.val_threshold: float | list[float] | None = None
        if config.trainer.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept: the EMA average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def configure_model(self) -> None:
        if self.config.trainer.compile:
            self.model.compile()

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        training = self.trainer is not None and self.trainer.training
        images, masks = self.transform(batch["image"], batch.get("mask"), train=training)
        if self.config.trainer.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        batch = dict(batch, image=images)
        if masks is not None:
            batch["mask"] = masks
        return batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _targets(self, batch: dict) -> torch.Tensor:
        return batch["label"].float() if self.kind != "multiclass" else batch["label"]

    def _loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        target = self._targets(batch)
        if self.kind == "binary":
            logits = logits.reshape(-1)
        return self.criterion(logits, target)

    def on_train_epoch_start(self) -> None:
        seed_all(epoch_seed(self.config.trainer.seed, self.current_epoch, self.global_rank))

    def _forward_with_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with capture_attention(self.model) as maps:
            logits = self.model(images)
        return logits, dict(maps)

    def _consistent_step(
        self, batch: dict, consistency: AttentionConsistencyLoss
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Guo et al. 2019: the batch and a moved copy in one pass; the classification loss of both
        views, and the consistency of their maps. Returns (loss, logits of the batch, its maps)."""
        images = batch["image"]
        count = images.shape[0]
        geometry = sample_geometry(count, self.transform.config, images.device)
        moved, _ = apply_geometry(images, None, geometry)
        both = torch.cat([images, moved.to(images.dtype)])
        if self.config.trainer.channels_last:
            both = both.contiguous(memory_format=torch.channels_last)
        logits, maps = self._forward_with_maps(both)
        first = {name: value[:count] for name, value in maps.items()}
        second = {name: value[count:] for name, value in maps.items()}
        loss = (self._loss(logits[:count], batch) + self._loss(logits[count:], batch)) / 2
        disagreement = consistency(first, second, lambda m: warp_maps(m, geometry))
        self.consistency_loss.update(disagreement.detach())
        return loss + disagreement, logits[:count], first

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.consistency is not None:
            loss, logits, maps = self._consistent_step(batch, self.consistency)
        elif self.supervision is not None:
            logits, maps = self._forward_with_maps(batch["image"])
            loss = self._loss(logits, batch)
        else:
            logits = self.model(batch["image"])
            loss = self._loss(logits, batch)
        if self.supervision is not None:
            attention_loss = self.supervision(maps, batch.get("mask"))
            self.attention_loss.update(attention_loss.detach())
            loss = loss + attention_loss
        if not torch.isfinite(loss):
            raise TrainingError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, "
                f"batch {batch_idx}; lower optim.lr or set trainer.grad_clip"
            )
        self.train_outputs.update(probabilities(logits.detach(), self.kind), batch["label"], loss)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.eval_model(batch["image"])
        loss = self._loss(logits, batch)
        self.val_outputs.update(probabilities(logits, self.kind), batch["label"], loss)

    def _summarize(self, outputs: EpochOutputs, split: str) -> dict[str, float]:
        probs, targets, loss = outputs.compute()
        outputs.reset()
        if len(targets) == 0:
            return {}
        summary = summarize(probs, targets, self.kind, self.classes, split=split, policy=self.config.trainer.threshold)
        if split == "val":
            self.val_threshold = summary.get("threshold")
        values = scalars(summary, split, self.classes)
        values[f"{split}/loss"] = loss
        return values

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_outputs.reset()
            return
        values = self._summarize(self.val_outputs, "val")
        self.epoch_metrics.update(values)
        # already gathered from every process by EpochOutputs: no second reduction
        self.log_dict({k: v for k, v in values.items() if not math.isnan(v)}, sync_dist=False)

    def finish_train_epoch(self) -> None:
        """Training metrics of the epoch; the run recorder calls it first thing at the epoch's end
        (Lightning calls callbacks' ``on_train_epoch_end`` before the module's)."""
        values = self._summarize(self.train_outputs, "train")
        if self.supervision is not None:
            values["train/attention_loss"] = float(self.attention_loss.compute())
            self.attention_loss.reset()
        if self.consistency is not None:
            values["train/consistency_loss"] = float(self.consistency_loss.compute())
            self.consistency_loss.reset()
        self.epoch_metrics.update(values)
        self.log_dict({k: v for k, v in values.items() if not math.isnan(v)}, sync_dist=False)

    def configure_optimizers(self):
        optim, schedule = self.config.optim, self.config.schedule
        if not isinstance(optim.lr, int | float):  # "auto" is resolved by train() before any optimiser is built
            raise TrainingError(f"optim.lr={optim.lr!r} reached the optimiser unresolved")
        lr = float(optim.lr)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
        if optim.name == "sgd":
            optimizer = torch.optim.SGD(
                parameters,
                lr=lr,
                momentum=optim.momentum,
                nesterov=optim.nesterov,
                weight_decay=optim.weight_decay,
            )
        elif optim.name == "adamw":
            optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=optim.weight_decay)
        else:
            optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=optim.weight_decay)
        if schedule.name == "none":
            return optimizer
        if schedule.name == "step":
            step = torch.optim.lr_scheduler.StepLR(optimizer, schedule.step_size, schedule.gamma)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": step, "interval": "epoch"}}
        scheduler: torch.optim.lr_scheduler.LRScheduler
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if schedule.name == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=lr, total_steps=total, pct_start=schedule.pct_start
            )
        else:
            steps_per_epoch = total / self.config.trainer.epochs
            warmup = int(schedule.warmup_epochs * steps_per_epoch)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, schedule.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class WarmupCosine:
    """:func:`warmup_cosine` as an object, so that its horizon travels in the training state and a
    time budget can shorten it mid-run (:mod:`~attnscope.training.budget`)."""

    warmup: int
    total: int
    floor: float = 0.0

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.warmup, self.total, self.floor)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """Learning-rate factor: linear from 0 over ``warmup`` steps, then cosine down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
