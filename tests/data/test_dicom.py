"""DICOM decoding: the real files pydicom's wheel ships and files written here, each against the standard's
transform computed in the test."""

import io
import shutil

import numpy as np
import pytest

from attnscope.data.decode import decode_image, decode_image_bytes
from attnscope.data.dicom import looks_like_dicom
from attnscope.data.sources.files import from_folder
from attnscope.errors import DataError
from tests.data.dicom_files import pydicom, shipped, voi_lut_item, write_dicom


def stretched(values, low, high):
    return np.rint(np.clip((np.asarray(values, np.float64) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_a_ct_slice_is_rescaled_then_windowed_by_its_percentiles():
    path = shipped("CT_small.dcm")  # int16, Rescale Intercept -1024, no window
    dataset = pydicom.dcmread(path)
    hounsfield = dataset.pixel_array.astype(np.float64) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    low, high = np.percentile(hounsfield, (0.5, 99.5))
    assert np.array_equal(decode_image(path, 128, "L"), stretched(hounsfield, low, high))


def test_an_mr_slice_uses_its_own_window():
    path = shipped("MR_small.dcm")  # Window Center 600, Width 1600
    values = pydicom.dcmread(path).pixel_array.astype(np.float64)
    low, high = 600 - 0.5 - (1600 - 1) / 2, 600 - 0.5 + (1600 - 1) / 2  # PS3.3 C.11.2.1.2.1, LINEAR
    expected = stretched(values, low, high)
    assert np.abs(decode_image(path, 64, "L").astype(int) - expected).max() <= 1
    assert np.array_equal(decode_image(path, 64, "L", window="minmax"), stretched(values, values.min(), values.max()))


def test_a_real_rgb_file_keeps_its_colours():
    path = shipped("SC_rgb_small_odd.dcm")
    expected = pydicom.dcmread(path).pixel_array
    assert np.array_equal(decode_image(path, 3, "RGB"), expected)


def test_monochrome1_is_inverted(tmp_path):
    values = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16
    normal = write_dicom(tmp_path / "normal.dcm", values, bits_stored=12)
    inverted = write_dicom(tmp_path / "inverted.dcm", values, "MONOCHROME1", bits_stored=12)
    assert np.array_equal(decode_image(inverted, 16, "L"), 255 - decode_image(normal, 16, "L"))


def test_a_voi_lut_is_applied_and_scaled_from_its_bit_depth(tmp_path):
    values = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 4) % 4096
    table = np.sqrt(np.arange(4096) / 4095) * 1023  # a 10-bit LUT
    write_dicom(tmp_path / "lut.dcm", values, bits_stored=12, VOILUTSequence=[voi_lut_item(table.astype(int), 10)])
    expected = stretched(table.astype(int)[values], 0, 1023)
    assert np.array_equal(decode_image(tmp_path / "lut.dcm", 32, "L"), expected)  # auto prefers the LUT
    with pytest.raises(DataError, match="lut.dcm: data.window=window, but the file has no Window Center"):
        decode_image(tmp_path / "lut.dcm", 32, "L", window="window")


def test_twelve_bits_stored_in_sixteen_use_the_stored_range(tmp_path):
    values = np.linspace(0, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = write_dicom(tmp_path / "twelve.dcm", values, bits_stored=12)
    assert np.array_equal(decode_image(path, 64, "L", window="range"), stretched(values, 0, 4095))


def test_a_multi_frame_file_gives_its_middle_frame(tmp_path):
    frames = np.stack([np.full((8, 8), level, np.uint16) for level in (100, 2000, 4000)])
    frames[:, 0, 0] = 0  # a dark corner on every frame, so that min-max has a range
    path = write_dicom(tmp_path / "frames.dcm", frames, bits_stored=12)
    decoded = decode_image(path, 8, "L", window="range")
    assert decoded[4, 4] == stretched(2000, 0, 4095) and decoded[0, 0] == 0


@pytest.mark.parametrize(
    "name, message",
    [
        ("rtplan.dcm", "a DICOM file without pixel data"),
        ("MR_truncated.dcm", "cannot be decoded here"),
        ("JPEGLSNearLossless_16.dcm", "JPEG-LS Lossy"),
    ],
)
def test_files_that_hold_no_image_or_cannot_be_decoded_are_one_clear_error(name, message):
    with pytest.raises(DataError, match=message) as caught:
        decode_image(shipped(name), 16, "L")
    assert name in str(caught.value)


def test_a_dicom_file_without_an_extension_is_known_by_its_preamble(tmp_path):
    for label in ("normal", "effusion"):
        (tmp_path / label).mkdir()
        write_dicom(tmp_path / label / "IM0001", np.full((8, 8), 100 if label == "normal" else 3000, np.uint16))
    (tmp_path / "normal" / "notes").write_text("not an image")
    assert looks_like_dicom(tmp_path / "normal" / "IM0001") and not looks_like_dicom(tmp_path / "normal" / "notes")
    manifest = from_folder(tmp_path)
    assert manifest.ids == ["effusion/IM0001", "normal/IM0001"]
    assert decode_image(manifest.paths[0], 8, "L").shape == (8, 8)


def test_an_uploaded_dicom_decodes_as_the_file_does(tmp_path):
    path = shutil.copy(shipped("MR_small.dcm"), tmp_path / "upload")  # an upload's name may carry no extension
    data = open(path, "rb").read()
    assert np.array_equal(decode_image_bytes(data, "upload", 32, "L"), decode_image(shipped("MR_small.dcm"), 32, "L"))
    assert looks_like_dicom("upload", io.BytesIO(data))


def test_the_pixel_limit_is_checked_from_the_header(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((100, 100), np.uint16))
    with pytest.raises(DataError, match="big.dcm: 100 x 100 pixels is above the limit of 5,000"):
        decode_image(path, 8, "L", pixel_limit=5000)
