"""DICOM files written by the tests with pydicom, and the real ones its wheel ships."""

from pathlib import Path

import numpy as np

pydicom = __import__("pytest").importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage  # noqa: E402

PATIENT_NAME = "Doe^Jane"


def shipped(name: str) -> Path:
    """A DICOM file bundled in pydicom's wheel (never one it would download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with this pydicom"
    return Path(path)


def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **elements
) -> Path:
    """A DICOM file of ``pixels`` (frames first when 3-D and grey) with a patient's name, id and birth date;
    ``elements`` are set as they are (e.g. ``WindowCenter=...``, ``RescaleSlope=...``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = PATIENT_NAME, "P-0042", "19700101"
    dataset.Modality = "DX"
    dataset.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8, generate_instance_uid=False)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def voi_lut_item(lut: np.ndarray, bits: int, first: int = 0) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, bits]
    item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUT Data
    return item
