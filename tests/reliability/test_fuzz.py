"""The fuzz suite: a seeded sample of the robustness benchmark's generated inputs (images, CSV files,
settings), each of which must work or be one clear error; and the harness that tells them apart."""

import time

import pytest

from attnscope.errors import DataError
from benchmarks import robustness


@pytest.fixture(scope="module")
def sample():
    return {r["kind"]: r for r in robustness.measure(scale=0.05, seed=1, kinds=list(robustness.KINDS))}


@pytest.mark.slow
@pytest.mark.parametrize("kind", robustness.KINDS)
def test_every_generated_input_works_or_is_one_clear_error(sample, kind):
    record = sample[kind]
    assert record["traceback"] == record["hang"] == record["data_lost"] == record["unclear_error"] == 0, record
    assert record["ok"] > 0 and record["clear_error"] > 0  # the generator reaches both sides
    assert record["inputs"] == record["ok"] + record["clear_error"] >= 75


def test_the_harness_tells_every_outcome_apart(monkeypatch):
    tally = robustness.Tally("t")
    monkeypatch.setattr(robustness, "TIME_LIMIT_S", 0.2)
    robustness.attempt(tally, lambda: 1, ["a.png"], lambda result: None)

    def bad(message):
        raise DataError(message)

    robustness.attempt(tally, lambda: bad("a.png: corrupt"), ["a.png"], lambda result: None)
    robustness.attempt(tally, lambda: bad("corrupt"), ["a.png"], lambda result: None)
    robustness.attempt(tally, lambda: {}["missing"], ["a.png"], lambda result: None)
    robustness.attempt(tally, lambda: time.sleep(5), ["a.png"], lambda result: None)
    robustness.attempt(tally, lambda: 1, ["a.png"], lambda result: "row 3 neither kept nor listed")
    assert tally.record()["inputs"] == 6
    assert {k: v for k, v in tally.outcomes.items()} == dict.fromkeys(robustness.OUTCOMES, 1)
    assert tally.examples["traceback"] == ["['a.png']: KeyError: 'missing'"]
