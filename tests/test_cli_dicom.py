"""A folder of DICOM files from the command line: trained, predicted and explained with no conversion by hand,
and no patient's name or date in anything the tool writes."""

import numpy as np
import pytest

from attnscope import cli
from tests.data.dicom_files import PATIENT_NAME, write_dicom

pytestmark = pytest.mark.e2e


def dicom_folder(root, per_class=24):
    """Radiograph-like 12-bit images: 'effusion' has a bright lower band that 'normal' lacks; half the files
    carry no extension, as a PACS export names them."""
    rng = np.random.default_rng(0)
    for label in ("normal", "effusion"):
        (root / label).mkdir(parents=True)
        for number in range(per_class):
            image = rng.normal(1200, 150, (40, 40))
            if label == "effusion":
                image[26:, :] += 1800
            name = f"IM{number:04d}" + (".dcm" if number % 2 else "")
            write_dicom(root / label / name, image.clip(0, 4095).astype(np.uint16), "MONOCHROME2", 12)
    return root


def test_a_dicom_folder_trains_predicts_and_explains_without_leaking_the_patient(tmp_path, capsys):
    data = dicom_folder(tmp_path / "dicom")
    argv = ["train", "--model", "attn_vgg_tiny", "--data", "folder", "--data-option", f"root={data}"]
    argv += ["--image-size", "32", "--batch-size", "8", "--epochs", "2", "--lr", "0.001"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(argv) == 0
    assert "window: auto" in (tmp_path / "run" / "config.yaml").read_text()  # recorded: predict decodes alike
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(tmp_path / "run"), str(data), "--out", str(out), "--no-progress"]) == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 48 and "IM0000" in out.read_text()
    assert cli.main(["explain", str(tmp_path / "run"), "--no-progress", "--count", "4"]) == 0
    written = [path for path in tmp_path.rglob("*") if path.is_file() and "dicom" not in path.parts]
    for path in written:
        content = path.read_bytes()
        assert PATIENT_NAME.encode() not in content and b"P-0042" not in content and b"19700101" not in content
