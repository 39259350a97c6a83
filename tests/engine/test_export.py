"""ONNX export: the graph computes what the run's model computes on uint8 images, for any batch size."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from attnscope import cli
from attnscope.engine.export import ExportOptions, export
from attnscope.engine.run import Run
from attnscope.errors import CheckpointError, ConfigError
from attnscope.layers.tap import capture_attention, native_maps


@pytest.mark.slow
def test_the_exported_graph_equals_the_model_with_its_normalisation_and_maps(trained_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli.main(["export", str(trained_run), "--with-maps", "--check-images", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "checked with onnxruntime on 8 images" in printed and "8 of 8 same class" in printed
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits", "attention_pool3", "attention_pool4"]
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))
    logits, pool3, pool4 = session.run(None, {"image": images.numpy()})  # a batch size never exported
    with Run.open(trained_run, progress=False) as run:  # the reference: the run's own transform and model
        model = run.model()
        with torch.no_grad(), capture_attention(model) as captured:
            expected = model(run.transform(images)[0])
        maps = native_maps(captured)
        # the graph's logits are divided by the run's temperature: their sigmoid is the calibrated probability
        np.testing.assert_allclose(logits, (expected / run.temperature).numpy(), atol=1e-4)
        np.testing.assert_allclose(pool3, maps["pool3"].numpy(), atol=1e-5)
        np.testing.assert_allclose(pool4, maps["pool4"].numpy(), atol=1e-5)
        metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(metadata["classes"]) == run.classes
        assert json.loads(metadata["threshold"]) == pytest.approx(run.threshold)
        assert json.loads(metadata["temperature"]) == pytest.approx(run.temperature)
        assert metadata["weights_sha256"] == run.weights_sha256() and metadata["kind"] == "binary"


@pytest.mark.slow
def test_a_disagreeing_export_is_refused_and_nothing_is_written(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    run_outputs = onnxruntime.InferenceSession.run

    def off_by_a_little(self, names, feeds, *args):  # a runtime that computes slightly differently
        return [values + 1e-3 for values in run_outputs(self, names, feeds, *args)]

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", off_by_a_little)
    with Run.open(trained_run, progress=False) as run:
        with pytest.raises(ConfigError, match="opset=7 must be 18 to"):
            export(run, ExportOptions(opset=7, out=out))
        with pytest.raises(CheckpointError, match=r"disagrees with PyTorch: largest logit difference 1.0\de-03"):
            export(run, ExportOptions(out=out, check_images=4))
    assert not out.exists() and list(tmp_path.iterdir()) == []
