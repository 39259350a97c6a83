import itertools
import math

import pytest
import torch

from attnscope.engine.calibration import carry_threshold
from attnscope.engine.config import load_config
from attnscope.engine.inference import predict_loader
from attnscope.engine.metrics import summarize
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunPaths, load_weights, read_json, read_metrics_csv
from attnscope.errors import ConfigError
from attnscope.training.train import train
from tests.runs import tiny_settings


def test_a_run_directory_holds_everything_a_run_records(trained_run):
    paths = RunPaths(trained_run)
    for path in (
        paths.config,
        paths.data,
        paths.root / "split.csv",
        paths.best_weights,
        paths.last_weights,
        paths.last_state,
        paths.best,
        paths.metrics,
        paths.log,
    ):
        assert path.is_file(), path
    assert any(paths.tensorboard.glob("events.out.tfevents.*"))
    history = read_metrics_csv(paths.metrics)
    assert [row["epoch"] for row in history] == [0, 1, 2]
    for row in history:
        assert 0 <= row["val/auc"] <= 1 and row["train/loss"] > 0 and row["val/rows"] == 24
    assert "epoch 3/3" in paths.log.read_text()
    assert not list(paths.root.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_best_is_the_epoch_with_the_highest_val_auc_and_its_weights_reproduce_it(trained_run):
    paths = RunPaths(trained_run)
    history = read_metrics_csv(paths.metrics)
    best = read_json(paths.best)
    assert best["epoch"] == max(range(len(history)), key=lambda e: history[e]["val/auc"])
    run = Run.open(trained_run, "best", progress=False)
    probs, labels, _ = predict_loader(run, run.loader(DataSelection(split="val")))
    again = summarize(probs, labels, run.kind, run.classes)
    assert again["auc"] == pytest.approx(best["value"], abs=1e-6)
    # the threshold chosen during training, carried to the calibrated scale the run now predicts on
    assert again["threshold"] == pytest.approx(carry_threshold(best["threshold"], run.temperature), abs=1e-5)


def test_last_weights_are_the_trained_model_not_the_initial_one(trained_run):
    from attnscope.models import create_model

    fresh = create_model("attn_vgg_tiny", num_classes=1).state_dict()
    last = load_weights(RunPaths(trained_run).last_weights)
    assert set(last) == set(fresh)
    assert any(not torch.equal(last[k], fresh[k]) for k in fresh if fresh[k].is_floating_point())


def test_an_existing_run_is_not_overwritten(trained_run):
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train(load_config(None, tiny_settings(trained_run)))


@pytest.mark.slow
def test_supervision_pulls_attention_into_the_lesion(tmp_path):
    settings = tiny_settings(tmp_path / "run", epochs=3) + [
        "supervision.weights={pool3: 1.0, pool4: 1.0}",
        "supervision.kind=energy",
    ]
    train(load_config(None, settings))
    history = read_metrics_csv(RunPaths(tmp_path / "run").metrics)
    losses = [row["train/attention_loss"] for row in history]
    assert all(not math.isnan(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.slow
def test_consistency_trains_without_masks_and_makes_the_maps_follow_the_image(tmp_path):
    """Guo et al. 2019's consistency, on data whose masks are never read: its loss falls."""
    settings = tiny_settings(tmp_path / "run", epochs=2) + [
        "supervision.consistency={pool3: 1.0, pool4: 1.0}",
        "data.augment={rotation: 10, hflip: true, vflip: true, crop_scale: [0.6, 1.0], p: 1.0}",
        "data.mask_fraction=0.0",
    ]
    train(load_config(None, settings))
    history = read_metrics_csv(RunPaths(tmp_path / "run").metrics)
    losses = [row["train/consistency_loss"] for row in history]
    assert all(v > 0 and not math.isnan(v) for v in losses) and losses[-1] < losses[0]
    assert "train/attention_loss" not in history[0]


def test_self_focal_supervision_trains_without_masks_and_sharpens_the_maps(tmp_path):
    """The self-guided focal attention loss reads no mask: it trains on a source without masks, its loss
    is logged and falls as the gates concentrate on what they favour."""
    from attnscope.data.augment import AugmentConfig, BatchTransform
    from attnscope.models import create_model
    from attnscope.training.task import ClassifierTask

    config = load_config(None, ["supervision.kind=self_focal", "supervision.weights={pool3: 1.0}"])
    transform = BatchTransform(AugmentConfig(), (0.5,) * 3, (0.25,) * 3, 32, 3, with_masks=False)
    ClassifierTask(config, create_model("attn_vgg_tiny", num_classes=1), transform, "binary", ["a", "b"])
    settings = tiny_settings(tmp_path / "run", epochs=2) + [
        "supervision.kind=self_focal",
        "supervision.weights={pool3: 1.0, pool4: 1.0}",
        "supervision.ignore_th=0.0",
        "data.mask_fraction=0.0",
    ]
    train(load_config(None, settings))
    losses = [row["train/attention_loss"] for row in read_metrics_csv(RunPaths(tmp_path / "run").metrics)]
    assert all(v > 0 and not math.isnan(v) for v in losses) and losses[-1] < losses[0]


def test_supervision_without_masks_is_refused():
    from attnscope.data.augment import AugmentConfig, BatchTransform
    from attnscope.models import create_model
    from attnscope.training.task import ClassifierTask

    config = load_config(None, ["supervision.weights={pool3: 1.0}"])
    transform = BatchTransform(AugmentConfig(), (0.5,) * 3, (0.25,) * 3, 32, 3, with_masks=False)
    with pytest.raises(ConfigError, match="data have no masks"):
        ClassifierTask(config, create_model("attn_vgg_tiny", num_classes=1), transform, "binary", ["a", "b"])


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["step", "cosine", "onecycle"])
def test_schedules_and_optimizers_run(tmp_path, schedule):
    settings = tiny_settings(tmp_path / "run", epochs=1) + [
        f"schedule.name={schedule}",
        "optim.name=sgd",
        "optim.lr=0.01",
        "trainer.ema_decay=0.9",
        "trainer.grad_clip=1.0",
        "loss.name=ce",
    ]
    result = train(load_config(None, settings))
    assert result.best["epoch"] == 0 and 0 <= result.best["value"] <= 1


def test_class_weights_become_the_focal_alpha_and_bce_pos_weight():
    from attnscope.training.task import build_loss

    weights = torch.tensor([0.5, 1.5])
    focal = build_loss(load_config(None, []), "binary", weights)
    assert focal.alpha.item() == pytest.approx(0.75)
    bce = build_loss(load_config(None, ["loss.name=ce"]), "binary", weights)
    logits, target = torch.tensor([[0.3], [-1.2]]), torch.tensor([1.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target[:, None], pos_weight=torch.tensor([3.0])
    )
    torch.testing.assert_close(bce(logits, target), expected)
    multiclass = build_loss(
        load_config(None, ["loss.name=ce", "loss.label_smoothing=0.1"]), "multiclass", torch.tensor([1.0, 2.0, 3.0])
    )
    logits3, target3 = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(
        multiclass(logits3, target3),
        torch.nn.functional.cross_entropy(logits3, target3, weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.1),
    )


def test_warmup_cosine_rises_then_falls_to_the_floor():
    from attnscope.training.task import warmup_cosine

    factors = [warmup_cosine(step, 4, 20, 0.1) for step in range(20)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0) and all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_each_epoch_and_process_draws_its_own_seed():
    from attnscope.training.task import epoch_seed

    seeds = {epoch_seed(0, epoch, rank) for epoch in range(5) for rank in range(2)}
    assert len(seeds) == 10 and epoch_seed(0, 3, 1) == epoch_seed(0, 3, 1)


def test_channels_last_and_bf16_mixed_precision_train(tmp_path):
    settings = tiny_settings(tmp_path / "run", epochs=1) + [
        "trainer.channels_last=true",
        "trainer.precision=bf16-mixed",
    ]
    result = train(load_config(None, settings))
    assert 0 <= result.best["value"] <= 1
    assert all(torch.isfinite(t).all() for t in load_weights(RunPaths(tmp_path / "run").last_weights).values())


def test_with_ema_the_saved_weights_are_the_average_not_the_raw_model(tmp_path):
    train(load_config(None, tiny_settings(tmp_path / "run", epochs=1) + ["trainer.ema_decay=0.5"]))
    paths = RunPaths(tmp_path / "run")
    state = torch.load(paths.last_state, weights_only=True)["state_dict"]
    saved = load_weights(paths.last_weights)
    averaged = {k[len("ema.module.") :]: v for k, v in state.items() if k.startswith("ema.module.")}
    raw = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    assert saved.keys() == averaged.keys() == raw.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, averaged[name]), name
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
