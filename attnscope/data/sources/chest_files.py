"""The generated chest X-rays written as a radiology department would hand them over.

``write_chest_xray_set(folder)`` writes, from :mod:`attnscope.data.sources.chest`:

- ``images/00000001_000.png``: 16-bit PNGs holding the 12-bit values;
- ``dicom/patient00001/study1/view1_frontal.dcm``: the same films as DICOM (12 bits
  stored in 16, a window, every fifth one MONOCHROME1, an invented patient's name,
  id and birth date that must never reach an output);
- ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, ``train_val_list.txt`` and
  ``test_list.txt`` in NIH ChestX-ray14's layout (``csv`` source ``layout=chestxray14``);
- ``train.csv`` in CheXpert's layout (``layout=chexpert``): one column per finding, 1 /
  0 / -1 (uncertain) / empty (not mentioned), paths to the DICOM files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from attnscope.data.sources.chest import FINDINGS, MAX_VALUE, STORED_BITS, ChestXray, chest_xray_items, image_name
from attnscope.errors import DataError
from attnscope.fileio import atomic_directory, csv_text

# CheXpert's names of the four findings
CHEXPERT_NAMES = {"Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion", "Nodule": "Lung Lesion",
                  "Consolidation": "Consolidation"}  # fmt: skip
DATASET_KIND = "dataset"
NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
               "View Position"]  # fmt: skip


def dicom_path(index: int) -> str:
    """The CheXpert-like place of item ``index``'s DICOM file."""
    return f"dicom/patient{1 + index // 2:05d}/study{1 + index % 2}/view1_frontal.dcm"


def _dicom_bytes(item: ChestXray, index: int) -> bytes:
    """One film as a DICOM file (Digital X-Ray, 12 bits stored), with an invented patient."""
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.filewriter import dcmwrite
        from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
    except ImportError as error:
        raise DataError("writing DICOM files needs pydicom: pip install 'attnscope[dicom]'") from error
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage, For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"attnscope-chest-{index}"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName = f"Synthetic^Patient{item.patient:05d}"
    dataset.PatientID, dataset.PatientBirthDate = f"{item.patient:08d}", f"{1940 + item.patient % 60}0101"
    dataset.Modality, dataset.ViewPosition = "DX", "PA"
    inverted = index % 5 == 4  # MONOCHROME1: a high value is dark
    pixels = (MAX_VALUE - item.pixels) if inverted else item.pixels
    dataset.set_pixel_data(
        pixels, "MONOCHROME1" if inverted else "MONOCHROME2", STORED_BITS, generate_instance_uid=False
    )
    dataset.WindowCenter, dataset.WindowWidth = (MAX_VALUE + 1) // 2, MAX_VALUE + 1
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _png16_bytes(item: ChestXray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(item.pixels.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tables(items: list[ChestXray], test_patients: set[int]) -> dict[str, str]:
    """The CSV and list files of the set, by file name."""
    entries: list[list] = []
    boxes: list[list] = []
    chexpert: list[list] = []
    tests: list[str] = []
    trains: list[str] = []
    rng = np.random.default_rng(len(items))
    for index, item in enumerate(items):
        name = image_name(index)
        found = [f for f, present in zip(FINDINGS, item.present, strict=True) if present]
        person = np.random.default_rng((item.patient, 7))  # an invented age and sex, the same for both films
        age, sex = int(person.integers(18, 90)), "MF"[int(person.integers(2))]
        entries.append([name, "|".join(found) or "No Finding", index % 2, f"{item.patient:08d}", age, sex, "PA"])
        boxes += [[name, finding, *box, "", ""] for finding, box in item.boxes.items()]
        cells = [-1.0 if uncertain else 1.0 if present else (0.0 if rng.random() < 0.3 else "")
                 for present, uncertain in zip(item.present, item.uncertain, strict=True)]  # fmt: skip
        chexpert.append([dicom_path(index), "PA", "" if found else 1.0, *cells])
        (tests if item.patient in test_patients else trains).append(name)
    return {
        "Data_Entry_2017.csv": csv_text(NIH_COLUMNS, entries),
        "BBox_List_2017.csv": "Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + csv_text([], boxes).lstrip("\r\n"),
        "train.csv": csv_text(["Path", "AP/PA", "No Finding", *(CHEXPERT_NAMES[f] for f in FINDINGS)], chexpert),
        "test_list.txt": "".join(f"{name}\n" for name in tests),
        "train_val_list.txt": "".join(f"{name}\n" for name in trains),
    }


def write_chest_xray_set(
    folder: str | Path,
    count: int = 400,
    size: int = 256,
    seed: int = 0,
    uncertain_fraction: float = 0.1,
    test_fraction: float = 0.2,
    replace: bool = False,
    progress: bool = False,
) -> Path:
    """Write the generated chest X-rays to ``folder`` (see the module); it appears whole or not at all, and an
    existing folder is replaced only when it is such a set and ``replace`` is set."""
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction} must lie in [0, 1)")
    from tqdm.auto import tqdm

    items = chest_xray_items(count, size, seed, uncertain_fraction)
    patients = sorted({item.patient for item in items})
    chosen = np.random.default_rng(seed).permutation(len(patients))[: round(test_fraction * len(patients))]
    test_patients = {patients[i] for i in chosen}
    with atomic_directory(folder, DATASET_KIND, replace, "pass --force to replace it") as staging:
        for index, item in enumerate(tqdm(items, desc="writing films", unit="film", disable=not progress)):
            png = staging / "images" / image_name(index)
            png.parent.mkdir(exist_ok=True)
            png.write_bytes(_png16_bytes(item))
            dcm = staging / dicom_path(index)
            dcm.parent.mkdir(parents=True, exist_ok=True)
            dcm.write_bytes(_dicom_bytes(item, index))
        for name, text in _tables(items, test_patients).items():
            (staging / name).write_text(text, encoding="utf-8")
    return Path(folder)
