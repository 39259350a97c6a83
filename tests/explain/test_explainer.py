"""``explain_batch`` and ``explain``: one captured pass gives the logits and the attention, maps match a reference."""

import pytest
import torch

from attnscope.engine.run import Run
from attnscope.explain.cam import normalise
from attnscope.explain.explainer import ExplainOptions, explain, explain_batch
from attnscope.explain.overlay import upsample
from attnscope.layers.tap import capture_attention


def test_one_forward_pass_gives_the_logits_and_the_attention(trained_run):
    run = Run.open(trained_run, progress=False)
    model = run.model()
    images_u8 = next(iter(run.loader()))["image"][:4]
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = explain_batch(run, images_u8, ["attention"])
    finally:
        handle.remove()
    assert len(calls) == 1
    inputs, _ = run.transform(images_u8)
    with torch.no_grad(), capture_attention(model) as maps:
        logits = model(inputs)
    assert torch.equal(result.targets, (torch.sigmoid(logits[:, 0]) >= 0.5).long())  # binary: the predicted class
    for tap in ("pool3", "pool4"):
        reference = normalise(upsample({tap: maps[tap].mean(1)}, (32, 32))[tap])
        torch.testing.assert_close(result.maps[f"attention:{tap}"], reference)
        torch.testing.assert_close(result.raw[f"attention:{tap}"], maps[tap][:, 0])


def test_explain_writes_one_overlay_and_one_score_row_per_image_and_method(trained_run, tmp_path):
    run = Run.open(trained_run, progress=False)
    result = explain(run, ExplainOptions(methods=("attention", "gradcam"), count=3, steps=2, out=tmp_path))
    assert result.images == 3 and len(result.overlays) == 3 and all(p.is_file() for p in result.overlays)
    assert result.methods == ["attention:pool3", "attention:pool4", "gradcam"] and result.has_masks
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3
    assert set(result.summary) == set(result.methods) and all(s["images"] == 3 for s in result.summary.values())
    scores_only = explain(
        run, ExplainOptions(methods=("attention", "gradcam"), count=3, steps=2, out=tmp_path / "s", overlays=False)
    )
    assert scores_only.overlays == [] and not list((tmp_path / "s").rglob("*.png"))
    assert scores_only.summary == result.summary and len(list((tmp_path / "s" / "maps").glob("*.npz"))) == 3


@pytest.mark.slow
def test_every_kind_of_method_is_explained_scored_and_smoothed_as_asked(trained_run, tmp_path):
    from attnscope.explain.methods import create_cam

    run = Run.open(trained_run, progress=False)
    methods = ("hirescam", "scorecam", "occlusion", "integrated_gradients")
    options = ExplainOptions(methods=methods, count=2, steps=2, eigen_smooth=True, batch_size=16, out=tmp_path)
    result = explain(run, options)
    assert result.methods == list(methods) and all(result.summary[m]["images"] == 2 for m in methods)
    assert {"pointing_game", "deletion_auc"} <= set(result.summary["occlusion"])
    images_u8 = next(iter(run.loader()))["image"][:2]
    batch = explain_batch(run, images_u8, ["scorecam", "occlusion"], map_options=options.map_options())
    inputs, _ = run.transform(images_u8)
    expected = create_cam("scorecam", run.model(), None, eigen_smooth=True).compute(inputs, batch.targets)
    torch.testing.assert_close(batch.maps["scorecam"], expected.maps)  # eigen_smooth reached the layer CAM
    assert batch.raw["occlusion"].shape == (2, 32, 32)  # and was left out of the pixel method


def test_the_maps_of_a_chosen_class_are_those_of_its_target(trained_run):
    from attnscope.explain.methods import create_cam

    run = Run.open(trained_run, progress=False)
    images_u8 = next(iter(run.loader()))["image"][:4]
    inputs, _ = run.transform(images_u8)
    for target in (0, 1):
        result = explain_batch(run, images_u8, ["gradcam"], target=target)
        assert result.targets.tolist() == [target] * 4
        reference = create_cam("gradcam", run.model(), None).compute(inputs, torch.full((4,), target)).maps
        torch.testing.assert_close(result.maps["gradcam"], reference)
        with torch.no_grad():
            positive = torch.sigmoid(run.model()(inputs)[:, 0] / run.temperature)  # calibrated
        torch.testing.assert_close(result.probabilities, positive if target == 1 else 1 - positive)


def test_explain_draws_a_map_per_class_when_asked_for_all(trained_run, tmp_path):
    run = Run.open(trained_run, progress=False)
    result = explain(run, ExplainOptions(methods=("gradcam",), count=2, steps=2, target="all", out=tmp_path))
    assert result.images == 2 and len(result.overlays) == 4
    assert sorted(p.stem.rsplit("-", 1)[1] for p in result.overlays) == ["benign", "benign", "malignant", "malignant"]
    rows = (tmp_path / "scores.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[3] for row in rows) == ["benign", "benign", "malignant", "malignant"]
    one = explain(run, ExplainOptions(methods=("gradcam",), count=2, steps=2, target="malignant", out=tmp_path / "m"))
    assert len(one.overlays) == 2 and all("-" not in p.stem for p in one.overlays)


@pytest.mark.parametrize("target", ["melanoma", "2", "-1"])
def test_a_target_that_is_no_class_is_refused_with_the_classes(trained_run, tmp_path, target):
    from attnscope.errors import ConfigError

    run = Run.open(trained_run, progress=False)
    with pytest.raises(ConfigError, match=r"is not a class of .*benign, malignant\), an index from 0 to 1, or all"):
        explain(run, ExplainOptions(count=1, target=target, out=tmp_path))
