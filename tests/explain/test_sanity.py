"""Sanity checks of maps (Adebayo et al. 2018): the similarity measures against scipy and the formula, a cascade
that randomises from the top, a map constant by construction flagged on both counts, and a supervised model's
attention passing."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from attnscope.explain.sanity import (
    IMAGE_LIMIT,
    randomised_cascade,
    sanity_checks,
    spearman,
    ssim,
    weighted_layers,
)


def _blobs(centres, size=16):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0) for y, x in centres])


def test_spearman_is_scipys_per_image_mean_and_ssim_is_one_for_the_same_maps():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.rand(3, 8, 8, generator=generator), torch.rand(3, 8, 8, generator=generator)
    expected = np.mean(
        [stats.spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(first, second, strict=True)]
    )
    assert spearman(first, second) == pytest.approx(expected)
    assert spearman(first, first) == pytest.approx(1.0) and math.isnan(spearman(torch.zeros(1, 4, 4), first[:1]))
    assert ssim(first, first) == pytest.approx(1.0) and ssim(first, second) < 0.5


def test_a_map_that_is_the_same_for_every_image_and_every_weight_is_flagged_on_both_counts():
    constant = _blobs([(2, 2)] * 6)  # the same corner whatever the image: as an untrained gate can be
    result = sanity_checks({"gate": constant}, [{"gate": constant.clone()} for _ in range(4)]).methods["gate"]
    assert result.image_correlation == pytest.approx(1.0) and not result.depends_on_image
    assert result.spearman == pytest.approx([1.0] * 4) and not result.depends_on_weights
    assert result.flag() == "this map barely depends on the image or the weights"
    moving = _blobs([(2, 2), (12, 3), (7, 13), (13, 13), (4, 9), (9, 6)])
    scrambled = [{"gate": moving[torch.randperm(6, generator=torch.Generator().manual_seed(i))]} for i in range(4)]
    passing = sanity_checks({"gate": moving}, scrambled).methods["gate"]
    assert passing.image_correlation < IMAGE_LIMIT and passing.passed and passing.flag() == ""


def test_the_cascade_randomises_from_the_top_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    before = [layer.weight.detach().clone() for layer in weighted_layers(model)]
    steps = randomised_cascade(model, steps=4, seed=1)
    changed = [
        [not torch.equal(layer.weight, original) for layer, original in zip(weighted_layers(step), before, strict=True)]
        for step in steps
    ]
    assert changed == [[False, False, False, True], [False, False, True, True], [False, True, True, True], [True] * 4]
    assert all(
        torch.equal(layer.weight, original) for layer, original in zip(weighted_layers(model), before, strict=True)
    )


@pytest.mark.slow
def test_a_supervised_lesion_models_attention_passes_and_explain_writes_the_checks(tmp_path):
    import json

    from attnscope import cli
    from attnscope.engine.config import load_config
    from attnscope.training import train
    from tests.runs import tiny_settings

    settings = tiny_settings(tmp_path / "run", epochs=4) + [
        "data.source_options={count: 320, size: 48}", "model.options={normalize: sigmoid}", "supervision.kind=dice",
        "supervision.weights={pool3: 0.1, pool4: 0.1}", "optim.lr=0.003",
    ]  # fmt: skip
    train(load_config(None, settings))
    argv = ["explain", str(tmp_path / "run"), "--method", "attention", "--count", "8", "--sanity", "8"]
    assert cli.main([*argv, "--no-progress"]) == 0
    written = json.loads((tmp_path / "run" / "explain" / "sanity.json").read_text())
    pool3 = written["methods"]["attention:pool3"]  # the supervised tap at the finer grid
    assert pool3["depends_on_weights"] and pool3["depends_on_image"] and pool3["flag"] == ""
    assert len(pool3["spearman"]) == 4 and written["images"] == 8
    from attnscope.engine.run import Run
    from attnscope.serve import ModelService

    with Run.open(tmp_path / "run", progress=False) as run:  # the server shows the flags for these weights
        flags = ModelService(run).card()["sanity"]
        assert flags == {name: values["flag"] for name, values in written["methods"].items()}
        written["weights_sha256"] = "0" * 64
        (tmp_path / "run" / "explain" / "sanity.json").write_text(json.dumps(written))
        assert ModelService(run).card()["sanity"] == {}  # checked on other weights: not shown


def test_a_flagged_maps_overlay_title_says_so():
    from attnscope.explain.explainer import _titled

    flags = {"layercam": "this map barely depends on the weights", "gradcam": ""}
    assert _titled("layercam", flags) == "layercam\n(!) barely depends on the weights"
    assert _titled("gradcam", flags) == "gradcam" and _titled("attention:pool3", None) == "attention:pool3"
