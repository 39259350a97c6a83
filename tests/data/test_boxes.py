"""Boxes as masks: NIH's box file read line by line, and a box drawn where the resized, cropped image has it."""

import numpy as np
import pytest
from PIL import Image

from attnscope.data.boxes import box_mask, read_boxes_csv
from attnscope.data.decode import resize_and_crop, stored_size
from attnscope.errors import DataError

NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def test_the_nih_box_file_reads_by_position_despite_its_header(tmp_path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(
        NIH_HEADER + "00013118_008.png,Atelectasis,225.08,547.01,86.77,79.18,,\n"
        "00013118_008.png,Nodule,10,20,30,40,,\n00014716_007.png,Effusion,686.1,131.0,185.8,313.4,,\n\n"
    )
    assert read_boxes_csv(path) == {
        "00013118_008.png": [(225.08, 547.01, 86.77, 79.18), (10.0, 20.0, 30.0, 40.0)],
        "00014716_007.png": [(686.1, 131.0, 185.8, 313.4)],
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [("a.png,Mass,1,2,3\n", "got 5 cell"), ("a.png,Mass,1,2,x,4\n", "not four numbers"),
     ("a.png,Mass,1,2,0,4\n", "positive width"), ("a.png,Mass,1,2,nan,4\n", "finite")],
)  # fmt: skip
def test_a_malformed_box_line_is_an_error_naming_the_line(tmp_path, line, message):
    path = tmp_path / "boxes.csv"
    path.write_text(NIH_HEADER + "ok.png,Mass,1,2,3,4\n" + line)
    with pytest.raises(DataError, match=f"line 3.*{message}"):
        read_boxes_csv(path)
    with pytest.raises(DataError, match="no such box file"):
        read_boxes_csv(tmp_path / "missing.csv")


@pytest.mark.parametrize(("width", "height"), [(200, 100), (100, 300), (64, 64)])
def test_a_box_mask_matches_the_box_drawn_full_size_then_resized_and_cropped(width, height):
    boxes = [(width * 0.5, height * 0.25, width * 0.25, height * 0.5), (0.0, 0.0, width * 0.125, height * 0.125)]
    full = np.zeros((height, width), np.uint8)
    for x, y, w, h in boxes:
        full[int(y) : int(y + h), int(x) : int(x + w)] = 255
    reference = np.asarray(resize_and_crop(Image.fromarray(full), 32, Image.Resampling.NEAREST)) > 127
    drawn = box_mask(boxes, (width, height), 32).astype(bool)
    assert (drawn ^ reference).sum() <= 2 * 32  # at most a line of pixels where nearest rounding differs
    assert drawn.sum() == pytest.approx(reference.sum(), rel=0.15)


def test_a_box_outside_the_crop_leaves_the_mask_empty_and_sizes_come_from_headers(tmp_path):
    assert box_mask([(0, 0, 20, 100)], (200, 100), 50).sum() == 0  # the left quarter is cropped away
    Image.new("I;16", (30, 20)).save(tmp_path / "wide.png")
    assert stored_size(tmp_path / "wide.png") == (30, 20)
    with pytest.raises(DataError, match="size cannot be read"):
        (tmp_path / "bad.png").write_bytes(b"not an image")
        stored_size(tmp_path / "bad.png")
