import subprocess
import sys

import pytest

import attnscope
from attnscope import ConfigError, cli


def test_version_answers_without_importing_torch():
    code = (
        "import sys; from attnscope.cli import main\ntry:\n main(['--version'])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [f"attnscope {attnscope.__version__}", "False"]


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "attnscope", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "layers" in result.stdout and "--version" in result.stdout


def test_layers_lists_every_attention_layer(capsys):
    assert cli.main(["layers", "--options"]) == 0
    out = capsys.readouterr().out
    for name in attnscope.list_attn():
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert "rd_ratio" in out and "kernel_size" in out


def test_no_verb_prints_usage_and_fails(capsys):
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: attnscope" in capsys.readouterr().err


def test_a_library_error_is_one_line_without_traceback(monkeypatch, capsys):
    def broken(_args):
        raise ConfigError("option --foo: bad value; use 1 or 2")

    monkeypatch.setattr(cli, "_cmd_layers", broken)
    assert cli.main(["layers"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err == "attnscope: error: option --foo: bad value; use 1 or 2\n"


def test_model_option_pretrained_is_the_model_sections_pretrained(tmp_path, capsys):
    """The path the offline error names (--model-option pretrained=PATH) reaches the weight loader."""
    missing = tmp_path / "vgg16_bn-6c64b313.pth"
    args = ["train", "--model", "vgg_tiny", "--model-option", f"pretrained={missing}", "--model-option", "dropout=0.1"]
    args += ["--data-option", "count=40", "--epochs", "1", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(args) == cli.EXIT_ERROR
    assert f"{missing}: no such weight file" in capsys.readouterr().err


@pytest.mark.slow
def test_models_lists_every_model_with_its_size(capsys):
    assert cli.main(["models", "--num-classes", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert sorted(rows) == attnscope.list_models()
    assert rows["resnet50"][1] == "25.56M" and rows["resnet50"][2] == "3x224x224"
    assert rows["attn_vgg16_bn"][3] == "2"  # two attention taps: pool3 and pool4
    assert lines[-1] == "(parameters with a 1000-class head)"


# --- train -> evaluate -> predict, in process, on a tiny generated set ---------------------------------

import csv  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from tests.runs import TINY  # noqa: E402


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A run trained through the CLI from a config file plus overriding flags."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "run.yaml"
    config.write_text("trainer: {epochs: 1, seed: 3}\noptim: {name: sgd, lr: 0.5}\ndata: {batch_size: 8}\n")
    run_dir = folder / "run"
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(config),
                *TINY,
                "--epochs",
                "2",
                "--time-budget",
                "100000",
                "--set",
                "trainer.seed=5",
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    return run_dir


def test_train_writes_the_resolved_config_with_flags_over_the_file(cli_run, capsys):
    resolved = yaml.safe_load((cli_run / "config.yaml").read_text())
    assert resolved["trainer"]["epochs"] == 2  # flag over file; the budget fits both epochs
    assert resolved["trainer"]["time_budget_s"] == 100000
    assert resolved["trainer"]["seed"] == 5  # --set over file
    assert resolved["optim"] == {
        "name": "sgd",
        "lr": 0.001,
        "weight_decay": 0.0,
        "momentum": 0.9,
        "nesterov": True,
    }  # --lr over file, the rest from the file and defaults
    assert resolved["data"]["batch_size"] == 16 and resolved["run_dir"] == str(cli_run)


@pytest.mark.e2e
def test_evaluate_writes_metrics_and_plots(cli_run, capsys):
    assert cli.main(["evaluate", str(cli_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test split (24 images, binary)" in out and "auc" in out
    metrics = json.loads((cli_run / "evaluation" / "metrics.json").read_text())
    assert metrics["metrics"]["rows"] == 24 and 0 <= metrics["metrics"]["auc"] <= 1
    calibration = json.loads((cli_run / "calibration.json").read_text())
    assert metrics["metrics"]["threshold"] == pytest.approx(calibration["threshold"])  # chosen on validation
    assert metrics["metrics"]["temperature"] == pytest.approx(calibration["temperature"])
    assert set(metrics["metrics"]["calibration"]) >= {"ece", "ece_equal_mass", "mce", "brier"}
    for name in ("roc.png", "pr.png", "confusion.png", "reliability.png"):
        with Image.open(cli_run / "evaluation" / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100


def test_evaluate_with_tta_keeps_its_own_folder_and_leaves_the_report_alone(cli_run, capsys):
    report = cli_run / "report.html"
    before = report.read_bytes() if report.exists() else None
    assert cli.main(["evaluate", str(cli_run), "--tta", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test split (24 images, binary, averaged over none, hflip, vflip, hvflip)" in out
    metrics = json.loads((cli_run / "evaluation-tta" / "metrics.json").read_text())
    assert metrics["metrics"]["tta"] == ["none", "hflip", "vflip", "hvflip"]
    assert (report.read_bytes() if report.exists() else None) == before


def test_evaluate_on_another_source(cli_run, tmp_path, capsys):
    out = tmp_path / "other"
    assert (
        cli.main(
            [
                "evaluate",
                str(cli_run),
                "--data",
                "synthetic_lesions",
                "--data-option",
                "count=40",
                "--data-option",
                "size=32",
                "--data-option",
                "seed=9",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["metrics"]["rows"] == 40


def write_images(folder, count, size=40):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_writes_probabilities_per_class(cli_run, tmp_path, capsys):
    images = write_images(tmp_path, 3)
    listing = tmp_path / "list.csv"
    listing.write_text("path\nimg_1.png\nimg_2\n")  # a name without its extension is found
    out = tmp_path / "predictions.csv"
    assert (
        cli.main(["predict", str(cli_run), str(images[0]), "--csv", str(listing), "--out", str(out), "--no-progress"])
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["img_0.png", "img_1.png", "img_2.png"]
    folder_out = tmp_path / "folder.csv"
    assert cli.main(["predict", str(cli_run), str(tmp_path), "--out", str(folder_out), "--no-progress"]) == 0
    from_folder = list(csv.DictReader(folder_out.open()))
    assert [r["id"] for r in from_folder] == ["img_0.png", "img_1.png", "img_2.png"]
    assert [r["prob_malignant"] for r in from_folder] == [r["prob_malignant"] for r in rows]
    for row in rows:
        benign, malignant = float(row["prob_benign"]), float(row["prob_malignant"])
        assert benign + malignant == pytest.approx(1, abs=1e-5)
        threshold = json.loads((cli_run / "calibration.json").read_text())["threshold"]  # the calibrated scale
        assert row["predicted"] == ("malignant" if malignant >= threshold else "benign")


def test_predict_matches_the_model_on_the_same_pixels(cli_run, tmp_path):
    """The CSV's probability is the model's output on the decoded, normalised image."""
    import torch

    from attnscope.data.decode import decode_image
    from attnscope.engine.run import Run

    (path,) = write_images(tmp_path, 1)
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(cli_run), str(path), "--out", str(out), "--no-progress"]) == 0
    run = Run.open(cli_run)
    pixels = torch.from_numpy(np.array(decode_image(path, 32))).permute(2, 0, 1)[None]
    with torch.no_grad():
        temperature = json.loads((cli_run / "calibration.json").read_text())["temperature"]
        expected = torch.sigmoid(run.model()(run.transform(pixels)[0]) / temperature)[0, 0].item()
    assert float(next(csv.DictReader(out.open()))["prob_malignant"]) == pytest.approx(expected, abs=1e-5)


def test_predict_stops_on_a_bad_image_unless_skip_bad(cli_run, tmp_path, capsys):
    good = write_images(tmp_path, 1)[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(cli_run), str(good), str(broken), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "--skip-bad" in err and "Traceback" not in err
    assert (
        cli.main(["predict", str(cli_run), str(good), str(broken), "--out", str(out), "--skip-bad", "--no-progress"])
        == 0
    )
    assert "1 image(s) left out" in capsys.readouterr().out
    assert len(list(csv.DictReader(out.open()))) == 1
    assert "broken.jpg" in (tmp_path / "p.bad_rows.csv").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--set", "optim.lr=-1"], "optim.lr=-1 must be a positive number"),
        (
            [
                "train",
                "--model",
                "no_such_model",
                "--data",
                "synthetic_lesions",
                "--data-option",
                "count=20",
                "--data-option",
                "size=32",
                "--epochs",
                "1",
                "--no-progress",
            ],
            "no_such_model",
        ),
        (["train", "--config", "missing.yaml"], "neither a file nor a shipped config"),
        (["evaluate", "/nonexistent/run"], "is not a run directory"),
        (["train", "--precision", "fp13", *TINY], "precision='fp13') are refused by Lightning: Precision 'fp13'"),
        (["predict", "/nonexistent/run", "x.png"], "is not a run directory"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.rglob("config.yaml"))  # a failed start leaves no run behind


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        cli.main(["--debug", "train", "--set", "optim.lr=-1"])


def write_kaggle_layout(folder, count=60, missing=()):
    """marking.csv (image_id,target,patient_id) and train/<id>.jpg of generated lesions."""
    from attnscope.data.sources.synthetic import render_lesion

    rows = ["image_id,target,patient_id"]
    for i in range(count):
        target = i % 2
        rng = np.random.default_rng((7, i))
        image, _ = render_lesion(rng, rng.normal(2.2 * target, 1.0), 48)
        if i not in missing:
            (folder / "train").mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / "train" / f"ISIC_{i:04d}.jpg", quality=90)
        rows.append(f"ISIC_{i:04d},{target},P{i // 2}")
    (folder / "marking.csv").write_text("\n".join(rows) + "\n")
    return folder / "marking.csv"


def test_own_data_with_the_melanoma_recipe_and_bad_rows(tmp_path, capsys):
    marking = write_kaggle_layout(tmp_path, missing=(5,))
    argv = [
        "train",
        "--config",
        "melanoma",
        "--data-option",
        f"csv_path={marking}",
        "--data-option",
        f"image_root={tmp_path / 'train'}",
        "--model",
        "attn_vgg_tiny",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--set",
        "data.undersample={benign: 20}",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert cli.main([*argv, "--run-dir", str(tmp_path / "stopped")]) == 1
    err = capsys.readouterr().err
    assert "ISIC_0005" in err and "row 7" in err and "--skip-bad" in err
    assert cli.main([*argv, "--run-dir", str(tmp_path / "run"), "--skip-bad"]) == 0
    assert "ISIC_0005" in (tmp_path / "run" / "bad_rows.csv").read_text()
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["classes"] == ["benign", "malignant"] and data["rows"] == 59
    assert data["counts"]["train"]["per_class"][0] <= 20  # undersampled as configured
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "run"), "--no-progress"]) == 1
    assert "has no test split" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "run"), "--split", "val", "--no-progress"]) == 0
    assert "val split" in capsys.readouterr().out


def test_the_tutorial_recipe_samples_before_splitting_and_accounts_for_every_row(tmp_path, capsys):
    marking = write_kaggle_layout(tmp_path)
    argv = ["train", "--config", "melanoma_tutorial", "--data-option", f"csv_path={marking}"]
    argv += ["--data-option", f"image_root={tmp_path / 'train'}", "--model", "attn_vgg_tiny"]
    argv += ["--model-option", "pretrained=false", "--image-size", "32", "--epochs", "1", "--no-progress"]
    argv += ["--set", "data.undersample={benign: 20}", "--cache-dir", str(tmp_path / "cache")]
    assert cli.main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    benign = data["counts"]["train"]["per_class"][0] + data["counts"]["val"]["per_class"][0]
    assert benign == 20  # sampled before the 80/20 split, as the tutorial does
    splits = [row["split"] for row in csv.DictReader((tmp_path / "run" / "split.csv").open())]
    assert splits.count("unused") == data["rows"] - 20 - sum(
        data["counts"][s]["per_class"][1] for s in ("train", "val")
    )


@pytest.mark.e2e
def test_agcnn_trains_in_stages_resumes_and_evaluates_every_branch(tmp_path, capsys):
    root = tmp_path / "agcnn"
    argv = ["train", "--model", "agcnn_tiny", "--data-option", "count=80", "--data-option", "size=64"]
    argv += ["--image-size", "64", "--batch-size", "16", "--no-progress", "--run-dir", str(root)]
    argv += ["--stages", "global,local,fusion", "--stage-epochs", "1,1,1", "--stage-lr", "0.002,0.002,0.001"]
    assert cli.main(argv) == 0
    assert f"staged run: {root} (last stage: stage3-fusion)" in capsys.readouterr().out
    assert cli.main(["train", "--resume", str(root)]) == 0  # every stage done: nothing to train
    assert cli.main(["evaluate", str(root), "--no-progress", "--no-report"]) == 0
    printed = capsys.readouterr().out
    for name in ("global", "local", "fusion"):
        assert f"{name} branch AUC" in printed
    assert cli.main(["train", "--model", "vgg_tiny", "--stage-epochs", "1,1"]) == cli.EXIT_ERROR
    assert "--stage-epochs and --stage-lr go with --stages" in capsys.readouterr().err


@pytest.mark.e2e
def test_explain_draws_and_scores_attention_and_cams(cli_run, tmp_path, capsys):
    out = tmp_path / "explain"
    assert cli.main(["explain", str(cli_run), "--count", "5", "--out", str(out), "--steps", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "5 image(s)" in printed and "pointing_game" in printed
    rows = list(csv.DictReader((out / "scores.csv").open()))
    methods = {"attention:pool3", "attention:pool4", "gradcam", "gradcam++", "xgradcam", "layercam"}
    assert {r["method"] for r in rows} == methods and len(rows) == 5 * 6
    for row in rows:
        assert row["pointing_game"] in ("0.0", "1.0")  # the test split of generated lesions has masks
        assert 0 <= float(row["energy"]) <= 1 and 0 <= float(row["jaccard"]) <= 1
        assert 0 <= float(row["deletion_auc"]) <= 1 and 0 <= float(row["insertion_auc"]) <= 1
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 5
    raw = np.load(sorted((out / "maps").glob("*.npz"))[0])
    assert set(raw.files) == {"attention_pool3", "attention_pool4", "gradcam", "gradcampp", "xgradcam", "layercam"}
    # raw attention keeps its own grid and normalisation: a softmax map over pool-4 (2x2 at 32 px)
    assert raw["attention_pool4"].shape == (2, 2) and raw["attention_pool4"].sum() == pytest.approx(1.0, abs=1e-5)
    assert raw["gradcam"].min() >= 0 and raw["gradcam"].shape == (2, 2)  # the CAM layer's own grid


def test_explain_image_files_without_masks_scores_faithfulness_only(cli_run, tmp_path, capsys):
    images = write_images(tmp_path, 2)
    out = tmp_path / "explain"
    assert (
        cli.main(
            [
                "explain",
                str(cli_run),
                *map(str, images),
                "--method",
                "gradcam",
                "--method",
                "attention",
                "--out",
                str(out),
                "--steps",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    header = (out / "scores.csv").read_text().splitlines()[0]
    faithfulness = "deletion_auc,insertion_auc,drop_in_confidence,increase_in_confidence"  # ROAD when asked
    assert header == f"id,path,truth,target,probability,method,{faithfulness}"
    assert "no masks" in capsys.readouterr().out
    assert cli.main(["explain", str(cli_run), "--method", "scorecam9", "--no-progress"]) == 1
    assert "unknown explanation method(s) ['scorecam9']" in capsys.readouterr().err
    assert cli.main(["explain", str(cli_run), "--cmap", "nocolours", "--no-progress"]) == 1
    assert "unknown colour map 'nocolours'" in capsys.readouterr().err


def write_medmnist(path, multilabel, count=90, size=28):
    """A MedMNIST-style .npz: each class (or label) lights its own corner square."""
    rng = np.random.default_rng(1)
    corners = [(2, 2), (2, size - 10), (size - 10, 2)]
    images = (rng.random((count, size, size)) * 60).astype(np.uint8)
    if multilabel:
        labels = (rng.random((count, 3)) < 0.5).astype(np.uint8)
        labels[labels.sum(1) == 0, 0] = 1
    else:
        labels = (np.arange(count) % 3)[:, None]
    for index in range(count):
        on = np.flatnonzero(labels[index]) if multilabel else [int(labels[index, 0])]
        for label in on:
            top, left = corners[label]
            images[index, top : top + 8, left : left + 8] = 220
    thirds = count // 3
    arrays = {}
    for name, part in (
        ("train", slice(0, thirds)),
        ("val", slice(thirds, 2 * thirds)),
        ("test", slice(2 * thirds, None)),
    ):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = images[part], labels[part]
    np.savez(path, **arrays)
    return path


@pytest.mark.e2e
@pytest.mark.parametrize("multilabel", [False, True], ids=["multiclass", "multilabel"])
def test_multiclass_and_multilabel_runs_go_end_to_end(multilabel, tmp_path, capsys):
    data = write_medmnist(tmp_path / "set.npz", multilabel)
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--model",
                "attn_resnet_tiny",
                "--model-option",
                "stem=small",
                "--data",
                "medmnist",
                "--data-option",
                f"path={data}",
                "--data-option",
                "split=all",
                "--data-option",
                "classes=[a, b, c]",
                "--set",
                "data.mode=L",
                "--image-size",
                "28",
                "--batch-size",
                "10",
                "--set",
                "data.augment={rotation: 0, hflip: false, vflip: false}",  # flips would swap corners
                "--epochs",
                "3",
                "--lr",
                "0.003",
                "--run-dir",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert cli.main(["evaluate", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["metrics"]
    assert len(metrics["auc_per_class"]) == 3 and metrics["rows"] == 30
    assert metrics["auc"] > 0.7  # each class lights its own corner: easy to learn
    if multilabel:
        assert len(metrics["threshold"]) == 3 and len(metrics["confusion_per_class"]) == 3
    else:
        assert np.array(metrics["confusion"]).shape == (3, 3)
    assert (run / "report.html").stat().st_size > 10_000
    out = tmp_path / "p.csv"
    picture = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(picture)
    assert cli.main(["predict", str(run), str(picture), "--out", str(out), "--no-progress"]) == 0
    row = next(csv.DictReader(out.open()))
    probabilities = [float(row[f"prob_{c}"]) for c in "abc"]
    if not multilabel:
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
    assert (
        cli.main(["explain", str(run), "--count", "3", "--steps", "2", "--out", str(tmp_path / "e"), "--no-progress"])
        == 0
    )
    assert {r["method"] for r in csv.DictReader((tmp_path / "e" / "scores.csv").open())} >= {
        "attention:attn_layer2",
        "attention:attn_layer3",
        "gradcam",
    }


@pytest.mark.e2e
def test_explain_a_model_without_spatial_attention(tmp_path, capsys):
    run = tmp_path / "plain"
    assert cli.main(["train", *TINY, "--model", "resnet_tiny", "--epochs", "1", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert (
        cli.main(["explain", str(run), "--method", "attention", "--method", "gradcam", "--count", "2", "--no-progress"])
        == 1
    )
    assert "no spatial attention maps to show" in capsys.readouterr().err
    out = tmp_path / "all"
    assert cli.main(["explain", str(run), "--count", "2", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    assert {r["method"] for r in csv.DictReader((out / "scores.csv").open())} == {
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
    }  # "all" shows what there is


def test_index_then_search_prints_writes_csv_and_page(cli_run, tmp_path, capsys):
    index = tmp_path / "gallery"
    assert (
        cli.main(
            [
                "index",
                str(cli_run),
                "--out",
                str(index),
                "--kind",
                "ivf",
                "--param",
                "nlist=2",
                "--attention-pooling",
                "--pca",
                "16",
                "--fp16",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"in {index} (ivf, nlist=2, nprobe=16, 16-d vectors)" in printed
    (tmp_path / "queries").mkdir()
    images = write_images(tmp_path / "queries", 2)
    out, page = tmp_path / "neighbours.csv", tmp_path / "neighbours.html"
    assert (
        cli.main(
            [
                "search",
                str(index),
                *map(str, images),
                "-k",
                "3",
                "--out",
                str(out),
                "--html",
                str(page),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [(r["query"], r["rank"]) for r in rows] == [(f"img_{q}.png", str(k)) for q in range(2) for k in (1, 2, 3)]
    for query in ("img_0.png", "img_1.png"):
        similarities = [float(r["similarity"]) for r in rows if r["query"] == query]
        assert similarities == sorted(similarities, reverse=True) and all(-1 <= s <= 1.0001 for s in similarities)
        assert f"{query}:" in printed
    assert all(r["label"] in ("benign", "malignant") for r in rows)
    assert page.read_text().count("<img") == 2 * (1 + 3)


def test_index_trains_a_reranker_and_search_reorders_with_it(cli_run, tmp_path, capsys):
    index = tmp_path / "gallery"
    argv = ["index", str(cli_run), "--out", str(index), "--train-reranker", "--reranker-epochs", "1", "--no-progress"]
    assert cli.main(argv) == 0
    (tmp_path / "queries").mkdir()
    images = write_images(tmp_path / "queries", 2)
    out = tmp_path / "neighbours.csv"
    search = ["search", str(index), *map(str, images), "-k", "3", "--rerank", "8", "--out", str(out), "--no-progress"]
    assert cli.main(search) == 0
    printed = capsys.readouterr().out
    assert printed.count("  re-ranker ") == 2 * 3  # each neighbour shows its re-ranker score
    rows = list(csv.DictReader(out.open()))
    for query in ("img_0.png", "img_1.png"):
        scores = [float(r["rerank_score"]) for r in rows if r["query"] == query]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_search_with_a_folder_that_is_no_index_is_one_clear_line(tmp_path, capsys):
    image = write_images(tmp_path, 1)[0]
    assert cli.main(["search", str(tmp_path), str(image)]) == 1
    assert "is not an attnscope index (no index.json); build one with attnscope index" in capsys.readouterr().err


@pytest.mark.e2e
def test_demo_trains_evaluates_explains_reports_and_indexes(tmp_path, capsys):
    """The demo's whole job on a tiny config (the real one takes minutes; make demo runs it)."""
    from tests.runs import tiny_settings

    tiny = [flag for setting in tiny_settings(tmp_path / "demo", epochs=1)[1:] for flag in ("--set", setting)]
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), *tiny, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    demo = tmp_path / "demo"
    for name in ("attention.png", "report.html", "evaluation/metrics.json", "index/index.json", "similar.html"):
        assert (demo / name).is_file(), name
    train_rows = sum(1 for line in (demo / "split.csv").read_text().splitlines() if line.endswith(",train"))
    assert f"similarity index of the {train_rows} training images" in printed
    assert f"serve {demo} --index {demo / 'index'}   (then open http://127.0.0.1:8000/)" in printed
    page = (demo / "similar.html").read_text()
    assert page.count("<img") == 6 * (1 + 8) and page.count("truth: <b>") == 6
    # the demo's attention is supervised by a seeded tenth of the masks, and its report says so
    with_masks = json.loads((demo / "data.json").read_text())["train_rows_with_masks"]
    assert with_masks == round(0.1 * train_rows)
    report = (demo / "report.html").read_text()
    assert f"the masks of {with_masks} of {train_rows} training images (data.mask_fraction 0.1)" in report


def test_index_and_demo_never_replace_what_they_did_not_make(cli_run, capsys):
    """Regression: `index --out RUN` deleted the run, `index --out runs` every run, `demo --out RUN` a run."""
    weights = (cli_run / "checkpoints" / "best.safetensors").read_bytes()
    for out in (cli_run, cli_run.parent):
        assert cli.main(["index", str(cli_run), "--out", str(out), "--no-progress"]) == cli.EXIT_ERROR
        err = capsys.readouterr().err
        assert f"{out} exists and is not an attnscope index" in err and "Traceback" not in err
    assert cli.main(["demo", "--out", str(cli_run), "--no-progress"]) == cli.EXIT_ERROR
    assert "is not a demo run attnscope made" in capsys.readouterr().err
    assert (cli_run / "checkpoints" / "best.safetensors").read_bytes() == weights
    assert (cli_run / "config.yaml").is_file() and (cli_run.parent / "run.yaml").is_file()


def test_the_demo_replaces_its_own_earlier_run(tmp_path):
    from attnscope.demo import _start_afresh
    from attnscope.fileio import read_marker

    demo = tmp_path / "demo"
    _start_afresh(demo)
    (demo / "old.txt").write_text("from the last demo")
    _start_afresh(demo)
    assert [p.name for p in demo.iterdir()] == [".attnscope"] and read_marker(demo) == {"kind": "run", "demo": True}


@pytest.mark.e2e
def test_file_names_that_look_like_formulas_are_neutralised_in_every_csv(cli_run, tmp_path, capsys):
    """Regression: ids and names starting with = + - @ went raw into the CSVs clinicians open in a spreadsheet."""
    folder = tmp_path / "q"
    folder.mkdir()
    for name in ("=HYPERLINK(1).png", "+b.png", "@c.png"):
        Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(folder / name)
    (folder / "-broken.png").write_bytes(b"not an image")
    expected = ["'+b.png", "'=HYPERLINK(1).png", "'@c.png"]
    assert (
        cli.main(
            ["predict", str(cli_run), str(folder), "--out", str(tmp_path / "p.csv"), "--skip-bad", "--no-progress"]
        )
        == 0
    )
    assert sorted(r["id"] for r in csv.DictReader((tmp_path / "p.csv").open())) == expected
    assert next(csv.DictReader((tmp_path / "p.bad_rows.csv").open()))["id"] == "'-broken.png"
    (folder / "-broken.png").unlink()
    assert (
        cli.main(
            [
                "explain",
                str(cli_run),
                str(folder),
                "--method",
                "gradcam",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "e"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(r["id"] for r in csv.DictReader((tmp_path / "e" / "scores.csv").open())) == expected
    assert cli.main(["index", str(cli_run), "--out", str(tmp_path / "idx"), "--no-progress"]) == 0
    assert (
        cli.main(
            ["search", str(tmp_path / "idx"), str(folder), "-k", "1", "--out", str(tmp_path / "s.csv"), "--no-progress"]
        )
        == 0
    )
    assert sorted(r["query"] for r in csv.DictReader((tmp_path / "s.csv").open())) == expected


def test_a_split_with_formula_like_ids_is_recognised_when_read_back(tmp_path):
    from types import SimpleNamespace

    from attnscope.data.manifest import Manifest
    from attnscope.engine.run import check_same_split
    from attnscope.engine.rundir import RunPaths

    manifest = Manifest(
        "s", ["=a", "b"], np.array([0, 1]), ["x", "y"], paths=["a.png", "b.png"], splits=["train", "test"]
    )
    manifest.write_csv(tmp_path / "split.csv")
    assert "'=a" in (tmp_path / "split.csv").read_text()
    data = SimpleNamespace(manifest=manifest, split_names=lambda: ["train", "test"])
    check_same_split(data, RunPaths(tmp_path))  # the same split: no error
    data = SimpleNamespace(manifest=manifest, split_names=lambda: ["test", "test"])
    with pytest.raises(attnscope.DataError, match="changed since training"):
        check_same_split(data, RunPaths(tmp_path))


def test_a_value_no_run_could_use_is_refused_before_any_image_is_decoded(tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = [
        "train",
        *TINY,
        "--cache-dir",
        str(cache),
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "supervision.kind=bogus",
    ]
    assert cli.main(argv) == cli.EXIT_ERROR
    assert "supervision.kind='bogus' is not a kind: use one of dice, energy" in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "run").exists()


def test_serve_refuses_to_listen_beyond_this_machine_without_a_token(cli_run, capsys, monkeypatch):
    monkeypatch.delenv("ATTNSCOPE_TOKEN", raising=False)
    assert cli.main(["serve", str(cli_run), "--host", "0.0.0.0"]) == cli.EXIT_ERROR
    assert "--host 0.0.0.0 lets other machines reach the API: give --token" in capsys.readouterr().err
    assert cli.main(["serve", str(cli_run), "--token", "short"]) == cli.EXIT_ERROR
    assert "--token must be at least 16 characters" in capsys.readouterr().err


@pytest.mark.e2e
def test_explain_takes_every_method_and_the_smoothing_flags(cli_run, tmp_path, capsys):
    argv = ["explain", str(cli_run), "--method", "eigengradcam", "--method", "smoothgrad", "--aug-smooth"]
    assert (
        cli.main([*argv, "--eigen-smooth", "--batch-size", "8", "--count", "2", "--road", "--out", str(tmp_path)]) == 0
    )
    printed = capsys.readouterr().out
    assert "methods: eigengradcam, smoothgrad" in printed and "road_morf" in printed and "road_lerf" in printed
    assert cli.main(["explain", str(cli_run), "--method", "saliency", "--out", str(tmp_path)]) == cli.EXIT_ERROR
    assert (
        "unknown explanation method(s) ['saliency']; known: all, default, attention, gradcam" in capsys.readouterr().err
    )


def test_search_sets_the_query_itself_apart_unless_asked_to_keep_it(cli_run, tmp_path, capsys):
    from tests.retrieval.test_service import write_queries

    index = tmp_path / "gallery"
    assert cli.main(["index", str(cli_run), "--out", str(index), "--no-progress"]) == 0
    ids = write_queries(cli_run, tmp_path / "queries", count=2)  # training images, so indexed ones
    capsys.readouterr()
    for extra, expected_first in (([], False), (["--include-same"], True)):
        out = tmp_path / f"found{len(extra)}.csv"
        search = ["search", str(index), str(tmp_path / "queries"), "-k", "3", "--out", str(out), "--no-progress"]
        assert cli.main([*search, *extra]) == 0
        rows = list(csv.DictReader(out.open()))
        for name in ids:
            neighbours = [r["id"] for r in rows if r["query"] == f"{name}.png"]
            assert len(neighbours) == 3
            assert (neighbours[0] == name) is expected_first and (name in neighbours) is expected_first


def test_train_lr_takes_a_number_or_auto_and_names_anything_else(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--lr", "auto"]).lr == "auto"
    assert parser.parse_args(["train", "--lr", "3e-4"]).lr == pytest.approx(3e-4)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--lr", "fast"])
    assert "'fast' is neither a number nor auto" in capsys.readouterr().err
