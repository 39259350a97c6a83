"""``Run``: a trained run opened once; its model and loaders are built lazily and kept."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnscope.data import module as data_module
from attnscope.data.decode import decode_image
from attnscope.engine.calibration import carry_threshold
from attnscope.engine.inference import EvaluateOptions, evaluate, predict_loader
from attnscope.engine.metrics import summarize
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunPaths, read_json
from attnscope.errors import CheckpointError, ConfigError, DataError


def test_open_reads_the_record_and_builds_nothing_yet(trained_run):
    run = Run.open(trained_run, progress=False)
    data = read_json(RunPaths(trained_run).data)
    assert run.classes == data["classes"] == ["benign", "malignant"] and run.kind == "binary"
    recorded = read_json(RunPaths(trained_run).best)["threshold"]
    assert run.temperature is not None  # train fits temperature scaling on validation by default
    # the threshold on the calibrated scale: the same decisions as the one chosen during training
    assert run.threshold == pytest.approx(carry_threshold(recorded, run.temperature))
    assert run.binary_threshold == pytest.approx(run.threshold)
    assert run.image_size == 32 and run.channels == 3
    assert run._models == {} and run._loaders == {}  # lazy: nothing built by opening


def test_the_model_is_built_once_per_weights_and_loads_them(trained_run):
    from safetensors.torch import load_file

    run = Run.open(trained_run, progress=False)
    best, again, last = run.model(), run.model("best"), run.model("last")
    assert best is again and best is not last and not best.training
    stored = load_file(RunPaths(trained_run).last_weights)
    for name, tensor in last.state_dict().items():
        assert torch.equal(tensor, stored[name]), name


def test_splits_come_from_one_reading_of_the_data_and_loaders_are_kept(trained_run, monkeypatch):
    setups = []
    original = data_module.DataModule.setup

    def counted(self):
        setups.append(1)
        return original(self)

    monkeypatch.setattr(data_module.DataModule, "setup", counted)
    run = Run.open(trained_run, progress=False)
    test, val = run.loader(), run.loader(DataSelection(split="val"))
    assert run.loader(DataSelection(split="test")) is test
    assert len(setups) == 1  # both splits from one decoding
    with open(trained_run / "split.csv") as handle:
        recorded = [line.rsplit(",", 1)[1].strip() for line in handle.readlines()[1:]]
    assert len(test.rows) == recorded.count("test") and len(val.rows) == recorded.count("val")


def test_evaluate_equals_the_metrics_of_the_model_on_the_test_split(trained_run, tmp_path):
    run = Run.open(trained_run, progress=False)
    result = evaluate(run, EvaluateOptions(out=tmp_path / "ev"))
    probs, labels, _ = predict_loader(run, run.loader())
    expected = summarize(probs, labels, "binary", run.classes, threshold=run.threshold)
    assert result.metrics["auc"] == pytest.approx(expected["auc"]) and result.metrics["rows"] == len(labels)
    assert result.data == "test split" and result.out == tmp_path / "ev"
    assert set(result.plots) == {"roc", "pr", "confusion", "reliability"} and all(
        p.is_file() for p in result.plots.values()
    )


def test_image_files_decode_into_a_scratch_folder_that_close_removes(trained_run, tmp_path):
    for index in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * index, dtype=np.uint8)).save(tmp_path / f"x{index}.png")
    with Run.open(trained_run, progress=False) as run:
        loader = run.loader(DataSelection(images=(str(tmp_path),)))
        scratch = run._scratch.name
        assert loader.decoded.manifest.ids == ["x0.png", "x1.png"]
        assert run.loader(DataSelection(images=(str(tmp_path),))) is loader
    assert run._scratch is None and not Path(scratch).exists()


def test_bad_openings_and_selections_are_clear(trained_run, tmp_path):
    with pytest.raises(CheckpointError, match="is not a run directory"):
        Run.open(tmp_path)
    with pytest.raises(CheckpointError, match="no weights file"):
        Run.open(trained_run, weights=str(tmp_path / "none.safetensors"))
    run = Run.open(trained_run, progress=False)
    with pytest.raises(ConfigError, match="split='holdout': use one of train, val, test"):
        run.loader(DataSelection(split="holdout"))
    with pytest.raises(ConfigError, match="need a source"):
        run.loader(DataSelection(source_options={"count": 3}))
    with pytest.raises(ConfigError, match="evaluation needs labels"):
        evaluate(run, EvaluateOptions(images=(str(tmp_path),)))
    for name in ("a", "b", "c"):
        (tmp_path / "three" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "three" / name / "1.png")
    with pytest.raises(DataError, match=r"has classes \['a', 'b', 'c'\] but the run .* was trained on"):
        run.loader(DataSelection(source="folder", source_options={"root": str(tmp_path / "three")}))


@pytest.mark.slow
def test_opening_a_run_does_not_import_lightning():
    code = (
        "import sys; import attnscope.engine.run, attnscope.engine.inference, attnscope.explain, "
        "attnscope.retrieval; print('lightning' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def damaged_copy(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    return copy


@pytest.mark.parametrize("threshold", [7.5, -0.1, "abc", [0.2, 2.0], {"a": 1}])
def test_a_recorded_threshold_that_is_no_probability_is_refused(trained_run, tmp_path, threshold):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = damaged_copy(trained_run, tmp_path)
    best = RunPaths(run).best_weights
    with safe_open(best, framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    record = json.loads(metadata["best"])
    assert 0 <= record["threshold"] <= 1  # what training recorded
    save_file(tensors, str(best), {**metadata, "best": json.dumps({**record, "threshold": threshold})})
    with pytest.raises(
        CheckpointError, match=r"best.safetensors: the recorded threshold .* not a probability in \[0, 1\]"
    ):
        Run.open(run)


def test_weights_holding_nan_are_refused_not_predicted_with(trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    run = damaged_copy(trained_run, tmp_path)
    last = RunPaths(run).last_weights
    tensors = load_file(last)
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name][0] = float("nan")
    save_file(tensors, str(last))
    assert torch.isfinite(Run.open(run).model().state_dict()[name]).all()  # the best weights are whole
    with pytest.raises(
        CheckpointError, match=rf"last.safetensors: 1 tensor\(s\) hold NaN or infinite values \({name}\)"
    ):
        Run.open(run, "last").model()


def test_an_empty_run_config_is_refused_not_read_as_the_defaults(trained_run, tmp_path):
    run = damaged_copy(trained_run, tmp_path)
    (run / "config.yaml").write_text("")
    with pytest.raises(ConfigError, match="config.yaml: a run config is a mapping of sections"):
        Run.open(run)


def test_a_run_trained_before_windowing_keeps_decoding_sixteen_bit_images_divided(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "older"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("evaluation*", "explain*", "report*"))
    config = copy / "config.yaml"
    assert Run.open(copy, progress=False).config.data.window == "auto"  # recorded when it was trained
    config.write_text("".join(line for line in config.read_text().splitlines(True) if "window:" not in line))
    older = Run.open(copy, progress=False)
    assert older.config.data.window == "divide"
    wide = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "xray.png")
    size = older.image_size
    decoded = np.asarray(older.loader(DataSelection(images=[tmp_path / "xray.png"])).decoded.images[0])
    expected = decode_image(tmp_path / "xray.png", size, "L", window="divide")
    assert np.array_equal(decoded[..., 0], expected)
    assert not np.array_equal(expected, decode_image(tmp_path / "xray.png", size, "L"))  # windowing differs
