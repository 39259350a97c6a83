"""The generated chest X-rays from the command line, as a radiology user would meet them: written as files, trained
through NIH's layout with its boxes and test list, evaluated, reported and explained per finding, predicted from
DICOM files and served; the invented patients' names and ids never reach an output."""

import csv
import json

import pytest
from fastapi.testclient import TestClient

from attnscope import cli
from attnscope.data.sources.chest import FINDINGS
from attnscope.engine.run import Run

pytest.importorskip("pydicom")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chest")
    data = root / "films"
    assert cli.main(["generate", "chest_xrays", str(data), "--count", "64", "--size", "48", "--no-progress"]) == 0
    argv = ["train", "--config", "chest_xray_generated", "--model", "attn_vgg_tiny", "--image-size", "32"]
    for option, name in (("csv_path", "Data_Entry_2017.csv"), ("image_root", "images"),
                         ("boxes_csv", "BBox_List_2017.csv"), ("test_list", "test_list.txt"),
                         ("train_list", "train_val_list.txt")):  # fmt: skip
        argv += ["--data-option", f"{option}={data / name}"]
    argv += ["--epochs", "2", "--lr", "0.003", "--cache-dir", str(root / "cache"), "--run-dir", str(root / "run")]
    assert cli.main([*argv, "--no-progress"]) == 0
    return root


def test_the_run_holds_the_four_findings_and_the_official_test_list(generated_run):
    data = json.loads((generated_run / "run" / "data.json").read_text())
    assert data["classes"] == list(FINDINGS) and data["multilabel"]
    tests = set((generated_run / "films" / "test_list.txt").read_text().split())
    with open(generated_run / "run" / "split.csv", newline="") as handle:
        split = list(csv.DictReader(handle))
    assert {row["id"] for row in split if row["split"] == "test"} == tests


def test_evaluate_and_report_give_each_finding_its_figures_and_maps(generated_run):
    run_dir = generated_run / "run"
    argv = ["evaluate", str(run_dir), "--by", "Patient Gender", "--by", "Patient Age", "--bootstrap", "100"]
    assert cli.main([*argv, "--no-progress"]) == 0
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())["metrics"]
    by_sex, by_age = metrics["subgroups"]["Patient Gender"], metrics["subgroups"]["Patient Age"]
    assert set(by_sex) <= {"F", "M"} and sum(v["images"] for v in by_sex.values()) == metrics["rows"]
    assert sum(v["images"] for v in by_age.values()) == metrics["rows"]
    # the test list's few patients have eight ages or fewer: each is its own subgroup (more would be banded)
    assert len(by_age) <= 8 and all(name.isdigit() for name in by_age)
    assert len(metrics["sensitivity_youden_per_class"]) == 4 and len(metrics["positives_per_class"]) == 4
    page = (run_dir / "report.html").read_text()
    assert 'id="findings"' in page and "Maps of each finding: pointing game" in page
    assert 'id="subgroups"' in page and "by Patient Gender" in page
    for finding in FINDINGS:
        assert f"<h3>{finding}: " in page  # a gallery section per finding


def test_explain_per_finding_scores_the_maps_against_the_boxes(generated_run):
    run_dir = generated_run / "run"
    argv = ["explain", str(run_dir), "--target", "all", "--count", "4", "--method", "gradcam", "--no-progress"]
    assert cli.main(argv) == 0
    with open(run_dir / "explain" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 4 and sorted({row["target"] for row in rows}) == sorted(FINDINGS)  # 4 images x 4 maps
    boxed = {name for name, *_ in csv.reader(open(generated_run / "films" / "BBox_List_2017.csv"))}
    for row in rows:  # an image without a box has no localisation score, one with a box has one
        assert (row["pointing_game"] != "") == (row["id"] in boxed), row


def test_predict_reads_the_dicom_films_and_writes_no_patient(generated_run, tmp_path):
    dicom_files = sorted((generated_run / "films" / "dicom").rglob("*.dcm"))[:4]
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(generated_run / "run"), *map(str, dicom_files), "--out", str(out)]) == 0
    written = out.read_text()
    assert len(written.splitlines()) == 5 and all(f"prob_{finding}" in written for finding in FINDINGS)
    outputs = [p for p in (generated_run / "run").rglob("*") if p.is_file() and p.suffix in (".csv", ".json", ".html")]
    for path in [out, *outputs]:
        text = path.read_text(errors="replace")
        assert "Synthetic^Patient" not in text and "Synthetic" not in text, path


def test_the_served_model_card_carries_each_findings_operating_point(generated_run):
    from attnscope.serve import ModelService
    from attnscope.serve.app import create_app

    # evaluated here too: with several workers, the test that evaluates may run in another one
    assert cli.main(["evaluate", str(generated_run / "run"), "--no-report", "--bootstrap", "50", "--no-progress"]) == 0
    with Run.open(generated_run / "run", progress=False) as run:
        service = ModelService(run, None, None)
        with TestClient(create_app(service), base_url="http://localhost") as client:
            card = client.get("/v1/model").json()
    tested = card["test_metrics"]
    assert card["kind"] == "multilabel" and len(tested["threshold_per_class"]) == 4
    low, high = tested["intervals"]["auc"]  # the interval of the test AUC travels with it
    assert low <= tested["auc"] <= high and tested["interval_method"]["resamples"] == 50
    assert all(f"auc ({finding})" in tested["intervals"] for finding in FINDINGS)  # each finding's, for the page
    assert (
        tested["auc_per_class"]
        == json.loads((generated_run / "run" / "evaluation" / "metrics.json").read_text())["metrics"]["auc_per_class"]
    )


def test_the_chexpert_csv_of_dicom_films_trains_with_the_recipe_and_groups_by_dicom_patient(generated_run):
    films, run_dir = generated_run / "films", generated_run / "chexpert-run"
    names = "[Cardiomegaly, Pleural Effusion, Lung Lesion, Consolidation]"
    argv = ["train", "--config", "chest_xray_generated", "--model", "attn_vgg_tiny", "--image-size", "32"]
    argv += ["--data-option", f"csv_path={films / 'train.csv'}", "--data-option", f"image_root={films}"]
    argv += ["--data-option", "layout=chexpert", "--data-option", f"label_column={names}"]
    argv += ["--data-option", "classes=null", "--data-option", "boxes_csv=null", "--data-option", "test_list=null"]
    argv += ["--data-option", "train_list=null", "--data-option", "dicom_patient_group=true"]
    argv += ["--set", "data.test_fraction=0.2", "--epochs", "1", "--run-dir", str(run_dir), "--no-progress"]
    assert cli.main(argv) == 0  # binary cross-entropy (the recipe's) with the uncertain labels left out
    with open(run_dir / "split.csv", newline="") as handle:
        split = list(csv.DictReader(handle))
    groups = {row["group"] for row in split}
    assert all(group.startswith("patient-") for group in groups) and len(groups) == 32  # two films a patient
    by_group: dict[str, set[str]] = {}
    for row in split:
        by_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_group.values())
    assert "00000001" not in (run_dir / "split.csv").read_text()  # the DICOM Patient ID itself is never written
