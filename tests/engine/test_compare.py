"""Two runs compared: DeLong's paired test against the structural components written out, McNemar's counts, a
paired bootstrap, images matched by id, and the verb end to end on a run against itself."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from attnscope import cli
from attnscope.engine.compare import aligned, check_comparable, compare_column, mcnemar, paired_delong
from attnscope.engine.intervals import BootstrapOptions
from attnscope.errors import ConfigError, DataError


def _psi(scores, truth):
    positive, negative = scores[truth], scores[~truth]
    return (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])


def test_paired_delong_is_the_covariance_of_the_structural_components_written_out():
    rng = np.random.default_rng(0)
    truth = rng.random(80) < 0.4
    a = np.round(rng.normal(size=80) + 1.2 * truth, 1)
    b = np.round(0.6 * a + rng.normal(size=80) * 0.8, 1)  # correlated with a, as two models on the same images
    psi_a, psi_b = _psi(a, truth), _psi(b, truth)
    v10 = np.vstack([psi_a.mean(1), psi_b.mean(1)])
    v01 = np.vstack([psi_a.mean(0), psi_b.mean(0)])
    variance = (np.cov(v10)[0, 0] + np.cov(v10)[1, 1] - 2 * np.cov(v10)[0, 1]) / v10.shape[1] + (
        np.cov(v01)[0, 0] + np.cov(v01)[1, 1] - 2 * np.cov(v01)[0, 1]
    ) / v01.shape[1]
    difference = psi_a.mean() - psi_b.mean()
    found = paired_delong(a, b, truth)
    assert found["auc_a"] == pytest.approx(psi_a.mean()) and found["difference"] == pytest.approx(difference)
    assert found["se"] == pytest.approx(math.sqrt(variance))
    assert found["p"] == pytest.approx(2 * stats.norm.sf(abs(difference) / math.sqrt(variance)))
    same = paired_delong(a, a, truth)
    assert same["difference"] == 0 and same["p"] == 1.0


def test_mcnemar_counts_the_discordant_images_and_tests_them_exactly():
    right_a = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 1], bool)
    right_b = np.array([1, 0, 0, 0, 1, 0, 1, 0, 1, 0], bool)
    found = mcnemar(right_a, right_b)
    assert (found["only_a"], found["only_b"]) == (5, 1)
    assert found["p"] == pytest.approx(stats.binomtest(5, 6, 0.5).pvalue)
    assert mcnemar(right_a, right_a)["p"] == 1.0


def test_a_run_against_itself_differs_by_nothing_in_every_resample():
    rng = np.random.default_rng(1)
    targets = (rng.random(60) < 0.5).astype(float)
    targets[:5] = np.nan  # left out
    scores = rng.random(60)
    column = compare_column("x", (scores, scores), targets, (0.5, 0.5), None, BootstrapOptions(100))
    assert column.rows == 55 and column.intervals["auc"] == [0.0, 0.0] and column.mcnemar["p"] == 1.0
    assert column.sensitivity[0] == column.sensitivity[1]


def test_images_are_matched_by_id_and_different_images_are_refused():
    order_a, order_b = aligned(["x", "y", "z"], ["z", "x", "y"])
    assert order_a.tolist() == [0, 1, 2] and order_b.tolist() == [1, 2, 0]
    with pytest.raises(DataError, match="different images"):
        aligned(["x", "y"], ["x", "w"])
    with pytest.raises(ConfigError, match="same classes"):
        check_comparable(["a", "b"], ["a", "c"], "binary", "binary")


@pytest.mark.slow
def test_the_compare_verb_writes_its_page_and_numbers(trained_run, tmp_path, capsys):
    out = tmp_path / "comparison"
    argv = ["compare", str(trained_run), str(trained_run), "--out", str(out), "--bootstrap", "50", "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    written = json.loads((out / "comparison.json").read_text())
    (column,) = written["columns"]
    assert column["name"] == "malignant" and column["delong"]["difference"] == 0 and column["mcnemar"]["p"] == 1.0
    assert "DeLong p 1.0000" in printed
    page = (out / "comparison.html").read_text()
    assert "For research use only" in page and "McNemar" in page
