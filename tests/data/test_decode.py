import numpy as np
import pytest
from PIL import Image

from attnscope import DataError
from attnscope.data.decode import decode_image
from tests.data.conftest import write_image


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 16:40] = 255  # halved to columns 8-20, the crop's left half (crop: columns 10-30)
    array[:, 40:64] = 128  # halved to columns 20-32, the crop's right half
    Image.fromarray(array).save(tmp_path / "wide.png")
    decoded = decode_image(tmp_path / "wide.png", 20)
    assert decoded.shape == (20, 20, 3)
    assert decoded[:, :9].min() == 255 and decoded[:, 11:].max() == 128 and decoded[:, 11:].min() == 128


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    decoded = decode_image(tmp_path / "rotated.jpg", 20, mode="L")
    # displayed upright, the white half is on top
    assert decoded[:8].mean() > 200 and decoded[12:].mean() < 50


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_any_mode_becomes_rgb_or_l(tmp_path, mode):
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (base.convert(mode) if mode != "P" else base.quantize(8)).save(path)
    assert decode_image(path, 8, "RGB").shape == (8, 8, 3)
    assert decode_image(path, 8, "L").shape == (8, 8)


def test_sixteen_bit_images_divided_as_before_windowing_with_window_divide(tmp_path):
    wide = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "xray.png")
    assert decode_image(tmp_path / "xray.png", 2, "L", window="divide").tolist() == [[0, 100], [255, 200]]


def test_a_twelve_bit_radiograph_in_a_sixteen_bit_png_is_windowed_not_divided(tmp_path):
    rng = np.random.default_rng(0)
    twelve = (np.linspace(0, 4095, 256 * 256).reshape(256, 256) + rng.normal(0, 2, (256, 256))).clip(0, 4095)
    Image.fromarray(twelve.astype(np.uint16)).save(tmp_path / "chest.png")
    divided = decode_image(tmp_path / "chest.png", 256, "L", window="divide")
    windowed = decode_image(tmp_path / "chest.png", 256, "L")  # auto: the 0.5-99.5 percentiles
    assert len(np.unique(divided)) == 17 and divided.max() == 16  # nearly black: what /257 made of it
    assert len(np.unique(windowed)) == 256 and windowed.min() == 0 and windowed.max() == 255
    in_range = decode_image(tmp_path / "chest.png", 256, "L", window="range")  # 12 bits: 0-4095
    expected = np.rint(np.clip(twelve.astype(np.uint16) / 4095, 0, 1) * 255)
    assert np.abs(in_range.astype(int) - expected).max() <= 1


def test_a_window_the_file_cannot_have_is_an_error_naming_it(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match=r"a\.png: window=lut needs a DICOM file's own VOI LUT"):
        decode_image(tmp_path / "a.png", 8, "L", window="lut")


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    decoded = decode_image(tmp_path / "alpha.png", 4, "L")
    assert decoded[:2].min() == 200 and decoded[2:].max() == 0


def test_large_jpegs_are_drafted_and_agree_with_a_full_decode(tmp_path):
    write_image(tmp_path / "big.jpg", size=(512, 512), quality=95)
    drafted = decode_image(tmp_path / "big.jpg", 64).astype(float)
    with Image.open(tmp_path / "big.jpg") as image:
        full = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR, reducing_gap=2.0), float)
    assert np.abs(drafted - full).mean() < 12  # same picture, a cheaper decode


def test_masks_are_binary_and_resized_by_nearest(tmp_path):
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    decoded = decode_image(tmp_path / "mask.png", 20, mask=True)
    assert set(np.unique(decoded)) == {0, 1} and decoded.sum() == 100


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not an image Pillow can read"), (b"plain text, not an image", "not an image Pillow can read")],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        decode_image(path, 8)
    assert str(path) in str(error.value)


def test_truncated_jpeg_is_refused(tmp_path):
    path = write_image(tmp_path / "t.jpg", size=(64, 64))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated or corrupt"):
        decode_image(path, 8)


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    path = write_image(tmp_path / "big.png", size=(300, 300), mode="L")
    with pytest.raises(DataError, match=r"300 x 300 pixels is above the limit of 10,000"):
        decode_image(path, 8, pixel_limit=10_000)


def png_header(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` pixels and holds no pixel data: what
    Pillow reads to learn the size, so the limits are tested without allocating the image."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_the_documented_pixel_limit_is_the_one_that_applies(tmp_path):
    # 95 M pixels: above Pillow's own warning limit (89.5 M), below attnscope's 100 M: not refused as a bomb
    with pytest.raises(DataError, match="truncated or corrupt") as allowed:
        decode_image(png_header(tmp_path / "a.png", 9_500, 10_000), 8)
    assert "limit" not in str(allowed.value) and "too many pixels" not in str(allowed.value)
    with pytest.raises(DataError, match=r"10001 x 10000 pixels is above the limit of 100,000,000"):
        decode_image(png_header(tmp_path / "b.png", 10_001, 10_000), 8)
    # a raised limit is honoured beyond Pillow's refusal at 179 M pixels; Pillow's own setting is restored
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="truncated or corrupt"):
        decode_image(png_header(tmp_path / "c.png", 20_000, 10_000), 8, pixel_limit=300_000_000)
    assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("size", [(1, 1_000_000), (1_000_000, 1), (21, 1), (3, 200)])
def test_strips_are_refused_before_they_are_decoded(tmp_path, size):
    path = tmp_path / "strip.png"
    Image.new("L", size).save(path)  # a 1 x 1,000,000 strip is 1 KB of PNG
    with pytest.raises(DataError, match=rf"{size[0]} x {size[1]} pixels is a strip, not an image"):
        decode_image(path, 224)


def test_a_long_but_plausible_image_decodes(tmp_path):
    path = tmp_path / "panoramic.png"
    Image.new("L", (400, 20), 200).save(path)  # 20:1, a dental panoramic is about 2.5:1
    assert decode_image(path, 16, mode="L").tolist() == np.full((16, 16), 200).tolist()
