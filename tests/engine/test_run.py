"""``Run``: a trained run opened once; its model and loaders are built lazily and kept."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnscope.data import module as data_module
from attnscope.engine.inference import EvaluateOptions, evaluate, predict_loader
from attnscope.engine.metrics import summarize
from attnscope.engine.run import DataSelection, Run
from attnscope.engine.rundir import RunPaths, read_json
from attnscope.errors import CheckpointError, ConfigError, DataError


def test_open_reads_the_record_and_builds_nothing_yet(trained_run):
    run = Run.open(trained_run, progress=False)
    data = read_json(RunPaths(trained_run).data)
    assert run.classes == data["classes"] == ["benign", "malignant"] and run.kind == "binary"
    assert run.threshold == pytest.approx(read_json(RunPaths(trained_run).best)["threshold"])
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
    assert set(result.plots) == {"roc", "pr", "confusion"} and all(p.is_file() for p in result.plots.values())


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
