"""optim.lr=auto: a range test chooses the rate before training, records its curve, and the run keeps it."""

import json
import math

import pytest
import yaml

from attnscope.engine.config import load_config
from attnscope.errors import ConfigError
from attnscope.training.lr_find import default_rate_note, minimum_rule
from attnscope.training.train import train
from tests.runs import tiny_settings


def test_the_minimum_rule_takes_a_tenth_of_the_rate_of_the_lowest_loss_inside_the_window():
    rates = [10 ** (-6 + 6 * i / 29) for i in range(30)]
    losses = [0.05] + [1.0 - 0.02 * i for i in range(1, 25)] + [0.6, 0.9, 2.0, 5.0, 0.01]
    # the first point (the smoothing's start) and the last (the divergence) are outside the window
    lowest = min(range(1, 29), key=lambda i: losses[i])
    assert minimum_rule(rates, losses, skip_begin=1, skip_end=1) == pytest.approx(rates[lowest] / 10)
    assert lowest == 24
    with_nan = losses[:]
    with_nan[24] = math.nan
    assert minimum_rule(rates, with_nan, skip_begin=1, skip_end=1) == pytest.approx(rates[23] / 10)
    assert minimum_rule(rates[:12], losses[:12]) is None  # too few points after skipping ten and one


def test_auto_is_accepted_and_anything_else_that_is_no_number_is_refused():
    assert load_config(None, ["optim.lr=auto"]).optim.lr == "auto"
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=fast"])


@pytest.mark.slow
def test_a_run_with_lr_auto_records_the_test_and_trains_at_the_rate_it_chose(tmp_path):
    config = load_config(None, [*tiny_settings(tmp_path / "run", epochs=1), "optim.lr=auto"])
    train(config)
    found = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert found["steps"] == len(found["lr"]) == len(found["loss"]) > 20
    assert found["suggested"] == pytest.approx(minimum_rule(found["lr"], found["loss"]))
    assert 1e-7 <= found["suggested"] <= 0.1
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["optim"]["lr"] == pytest.approx(found["suggested"])  # the run reproduces without the test
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert float(metrics[1].split(",")[header.index("lr")]) == pytest.approx(found["suggested"])
    assert (tmp_path / "run" / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "run").glob(".lr_find*"))  # the finder's checkpoint never lands in the run


def test_the_range_test_refuses_several_devices(tmp_path):
    config = load_config(None, [*tiny_settings(tmp_path / "run", epochs=1), "optim.lr=auto", "trainer.devices=2"])
    with pytest.raises(ConfigError, match="optim.lr=auto runs its range test on one device"):
        train(config)


def test_only_a_model_from_scratch_at_the_default_rate_gets_the_note():
    note = default_rate_note(load_config(None, []))
    assert note and "--lr auto" in note and "1e-3" in note
    assert default_rate_note(load_config(None, ["optim.lr=0.001"])) is None
    assert default_rate_note(load_config(None, ["model.pretrained=true"])) is None
    assert default_rate_note(load_config("demo", [])) is None  # the shipped recipes set their own rate
