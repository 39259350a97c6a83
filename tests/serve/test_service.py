"""The server's computations, without the web: each equal to the library function a user would run."""

import base64
import csv
import io
import json

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from attnscope.data.decode import decode_image
from attnscope.engine.inference import EvaluateOptions, PredictOptions, evaluate, predict
from attnscope.engine.run import DataSelection, Run
from attnscope.errors import ConfigError, DataError, RetrievalError
from attnscope.explain.cam import normalise, predicted_classes
from attnscope.explain.methods import create_cam
from attnscope.explain.overlay import upsample
from attnscope.layers.tap import capture_attention, native_maps
from attnscope.retrieval.index import SimilarityIndex
from attnscope.retrieval.service import SearchOptions, search_loader
from attnscope.serve import ModelService, Upload


def decoded(service, paths):
    return [service.decode(Upload(path.name, path.read_bytes())) for path in paths]


def png_pixels(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_an_upload_decodes_exactly_as_the_same_file_does_for_training(service, image_files):
    size = service.run.image_size
    for path, pixels in zip(image_files, decoded(service, image_files), strict=True):
        assert pixels.shape == (3, size, size) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels.transpose(1, 2, 0), decode_image(path, size, "RGB"))


def test_predictions_equal_those_of_attnscope_predict_on_the_same_files(service, image_files, tmp_path):
    answers = service.predict(decoded(service, image_files))
    with Run.open(service.run.root, progress=False) as run:
        written = predict(run, PredictOptions(images=tuple(image_files), out=tmp_path / "p.csv"))
    with open(written.out, newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    for path, answer in zip(image_files, answers, strict=True):
        row = rows[path.name]
        assert answer["predicted"] == row["predicted"]
        for name in service.run.classes:
            assert answer["probabilities"][name] == pytest.approx(float(row[f"prob_{name}"]), abs=1e-6)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_explanations_hold_every_tap_and_the_cam_as_the_model_computes_them(service, image_files):
    images = decoded(service, image_files)
    answers = service.explain(images, "gradcam")
    inputs, _ = service.run.transform(torch.from_numpy(np.stack(images)))
    with torch.no_grad(), capture_attention(service.model, detach=True) as captured:
        logits = service.model(inputs)
    reference = {f"attention:{tap}": values for tap, values in native_maps(captured).items()}
    reference["gradcam"] = next(
        iter(create_cam("gradcam", service.model).compute(inputs, predicted_classes(logits)).raw.values())
    )
    size = service.run.image_size
    for position, answer in enumerate(answers):
        assert [entry["name"] for entry in answer["maps"]] == ["attention:pool3", "attention:pool4", "gradcam"]
        np.testing.assert_array_equal(png_pixels(answer["input"]), images[position].transpose(1, 2, 0))
        for entry in answer["maps"]:
            expected = reference[entry["name"]][position]
            raw = np.asarray(entry["raw"]["values"]).reshape(entry["raw"]["shape"])
            np.testing.assert_allclose(raw, expected.numpy(), atol=1e-6)
            shown = normalise(upsample({"m": expected[None]}, (size, size))["m"])[0].numpy()
            colours = np.rint(colormaps["jet"](shown) * 255)
            np.testing.assert_allclose(png_pixels(entry["heatmap"]), colours, atol=1)
            assert png_pixels(entry["overlay"]).shape == (size, size, 3)
        assert answer["target"] in service.run.classes and 0 <= answer["probability"] <= 1


def test_an_unknown_cam_method_is_refused_with_the_known_ones(service, image_files):
    with pytest.raises(
        ConfigError, match="method='gradcam-9' is not a CAM, pixel or transformer method; use one of gradcam"
    ):
        service.explain(decoded(service, image_files[:1]), "gradcam-9")


def test_similar_cases_equal_attnscope_search_on_the_same_files(service, image_files):
    answers = service.similar(decoded(service, image_files), k=4)
    with Run.open(service.run.root, progress=False) as run:
        found = search_loader(
            service.index, run, run.loader(DataSelection(images=tuple(image_files))), SearchOptions(k=4)
        )
    for answer, positions, similarities in zip(answers, found.positions, found.similarities, strict=True):
        assert [n["id"] for n in answer["neighbours"]] == [service.index.rows[p]["id"] for p in positions]
        np.testing.assert_allclose([n["similarity"] for n in answer["neighbours"]], similarities, atol=1e-6)
        assert [n["rank"] for n in answer["neighbours"]] == [1, 2, 3, 4]
        labels = {row["id"]: row["label"] for row in service.index.rows}
        assert all(n["label"] == labels[n["id"]] for n in answer["neighbours"])
        assert png_pixels(answer["neighbours"][0]["thumbnail"]).shape[:2] == service.index.thumbs.shape[1:3]


def test_the_operating_point_is_the_test_splits_once_the_run_is_evaluated_else_validations(served_run, service):
    validation = service.run.best["metrics"]
    assert service.operating_point() == {
        "split": "val",
        "sensitivity": validation["val/sensitivity_youden"],
        "specificity": validation["val/specificity_youden"],
        "policy": "youden",
    }
    assert service.card()["test_metrics"] is None
    tested = evaluate(service.run, EvaluateOptions()).metrics
    service = ModelService(Run.open(served_run, progress=False))  # the evaluation is read when a server starts
    assert service.operating_point() == {
        "split": "test",
        "sensitivity": tested["sensitivity_at_threshold"],
        "specificity": tested["specificity_at_threshold"],
        "policy": "youden",
    }
    assert service.card()["test_metrics"]["auc"] == tested["auc"]
    # an evaluation written before the names said what they are still gives the test split's operating point
    metrics_path = served_run / "evaluation" / "metrics.json"
    recorded = json.loads(metrics_path.read_text())
    older = {k: v for k, v in recorded["metrics"].items() if "_at_threshold" not in k}
    metrics_path.write_text(json.dumps({**recorded, "metrics": older}))
    service = ModelService(Run.open(served_run, progress=False))
    assert service.operating_point()["sensitivity"] == tested["sensitivity_youden"]
    # weights trained again under the same name: the evaluation scored other weights, and is not shown
    metrics_path = served_run / "evaluation" / "metrics.json"
    recorded = json.loads(metrics_path.read_text())
    assert recorded["weights_sha256"] == service.weights_sha256
    metrics_path.write_text(json.dumps({**recorded, "weights_sha256": "0" * 64}))
    service = ModelService(Run.open(served_run, progress=False))
    assert service.card()["test_metrics"] is None and service.operating_point()["split"] == "val"


def test_bad_uploads_are_data_errors_that_name_the_upload(service):
    with pytest.raises(DataError, match="^scan.png: an empty file$"):
        service.decode(Upload("scan.png", b""))
    with pytest.raises(DataError, match="^notes.txt: not an image Pillow can read"):
        service.decode(Upload("notes.txt", b"these are not pixels"))


def test_the_card_names_the_model_and_a_similar_request_without_an_index_is_refused(served_run, service):
    card = service.card()
    assert card["model"] == "attn_vgg_tiny" and card["classes"] == service.run.classes
    assert card["attention_taps"] == ["pool3", "pool4"] and card["index"]["images"] == len(service.index)
    assert card["weights_sha256"] == service.run.weights_sha256()
    bare = ModelService(Run.open(served_run, progress=False))
    with pytest.raises(RetrievalError, match="no similarity index; start it with --index"):
        bare.similar([np.zeros((3, 32, 32), np.uint8)], 3)


def test_an_index_of_other_weights_is_refused(served_run):
    index = SimilarityIndex.load(served_run.parent / "index")
    index.meta["weights_sha256"] = "0" * 64
    with pytest.raises(RetrievalError, match="embeddings of other weights cannot be compared"):
        ModelService(Run.open(served_run, progress=False), index, served_run.parent / "index")
