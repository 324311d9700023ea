"""The ReSC / TransVG / SegVG split-file reader, on small files written in the public format."""

import os

import pytest
import torch
from PIL import Image

from ssrvg_ext.data.readers.splitfile import load_split_file
from ssrvg_ext.evaluation import grounding_metrics
from ssrvg_ext.ops import rle

PARSE = [("r1", ["man"]), ("r2", ["none"]), ("r3", ["none"]), ("r4", ["left"]),
         ("r5", ["none"]), ("r6", ["none"]), ("r7", ["none"]), ("r8", ["none"])]


def image(path, w, h, orientation=None):
    im = Image.new("RGB", (w, h), (10, 20, 30))
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)
    else:
        im.save(path)


def write(root, ds, split, records):
    os.makedirs(os.path.join(root, ds), exist_ok=True)
    torch.save(records, os.path.join(root, ds, f"{ds}_{split}.pth"))


@pytest.fixture
def layout(tmp_path):
    imgs = tmp_path / "images"
    imgs.mkdir()
    image(imgs / "COCO_train2014_000000000123.jpg", 64, 48)
    image(imgs / "1000.jpg", 40, 30)
    image(imgs / "rot.jpg", 40, 30, orientation=6)  # shown rotated by 90 degrees: 30 wide, 40 high
    root = tmp_path / "splits"
    write(root, "unc", "val", [("COCO_train2014_000000000123.jpg", "456789.pth", [12.5, 10.0, 20.25, 8.0],
                                "The Man on the LEFT", PARSE)])
    write(root, "unc", "train", [("COCO_train2014_000000000123.jpg", "1.pth", [0, 0, 64, 48], "everything", PARSE)])
    write(root, "referit", "test", [("1000.jpg", "2.pth", [5, 6, 25, 16], "sky", PARSE),
                                    ("rot.jpg", "3.pth", [1, 2, 11, 32], "tall thing", PARSE)])
    write(root, "flickr", "test", [("1000.jpg", [0, 0, 10, 10], "a young boy")])
    return str(root), str(imgs)


def test_coco_based_records(layout):
    root, imgs = layout
    [r] = load_split_file(root, "unc", "val", imgs)
    assert r.box_xyxy == (12.5, 10.0, 32.75, 18.0)  # x, y, w, h -> x1, y1, x2, y2, continuous
    assert r.text == "the man on the left" and r.orig_size == (48, 64) and r.image_id == 123 and r.box_only
    mask = rle.decode([r.rle])[0]
    assert mask.shape == (48, 64)
    # the pixels whose centres lie in the box: columns 12..32 (12.5 <= c + 0.5 <= 32.75), rows 10..17
    expected = torch.zeros(48, 64, dtype=torch.uint8)
    expected[10:18, 12:33] = 1
    assert torch.equal(mask, expected)


def test_xyxy_sets_exif_and_trainval(layout):
    root, imgs = layout
    a, b = load_split_file(root, "referit", "test", imgs)
    assert a.box_xyxy == (5.0, 6.0, 25.0, 16.0) and a.orig_size == (30, 40)
    assert b.orig_size == (40, 30)  # EXIF orientation 6: read as read_image shows it
    [f] = load_split_file(root, "flickr", "test", imgs)
    assert f.box_xyxy == (0.0, 0.0, 10.0, 10.0) and f.text == "a young boy"
    both = load_split_file(root, "unc", "trainval", imgs)
    assert [r.text for r in both] == ["everything", "the man on the left"]
    with pytest.raises(ValueError, match="has no split 'testC'"):
        load_split_file(root, "unc", "testC", imgs)
    with pytest.raises(ValueError, match="unknown split-file dataset"):
        load_split_file(root, "refclef", "val", imgs)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("bad,match", [
    ([("COCO_train2014_000000000123.jpg", "x.pth", [1, 2, 3], "p", PARSE)], "record 0: the box must be 4 finite"),
    ([("COCO_train2014_000000000123.jpg", "x.pth", [1, 2, 3, float("nan")], "p", PARSE)], "record 0: the box"),
    ([("COCO_train2014_000000000123.jpg", "x.pth", [1, 2, 3, 4], "  ", PARSE)], "record 0: the phrase is empty"),
    ([("COCO_train2014_000000000123.jpg", "x.pth", [1, 2, 3, 4])], "record 0: expected a 5-tuple"),
    ([("COCO_train2014_000000000123.jpg", "x.pth", [1, 2, -3, 4], "p", PARSE)], "negative width"),
    ([("../../etc/passwd", "x.pth", [1, 2, 3, 4], "p", PARSE)], "outside the image folder"),
    ({"not": "a list"}, "expected a list of records"),
])
def test_malformed_files_name_file_and_record(layout, bad, match):
    root, imgs = layout
    write(root, "unc", "testB", bad)
    with pytest.raises(ValueError, match=match) as e:
        load_split_file(root, "unc", "testB", imgs)
    assert "unc_testB.pth" in str(e.value)


def test_objects_in_the_pickle_are_refused(layout):
    root, imgs = layout
    write(root, "unc", "testA", [Evil()])
    with pytest.raises(ValueError, match="refused"):
        load_split_file(root, "unc", "testA", imgs)


def test_missing_image_and_file(layout):
    root, imgs = layout
    write(root, "unc", "testA", [("COCO_train2014_000000000999.jpg", "x.pth", [1, 2, 3, 4], "p", PARSE)])
    with pytest.raises(FileNotFoundError, match="record 0: image file .*000999.jpg is missing"):
        load_split_file(root, "unc", "testA", imgs)
    with pytest.raises(FileNotFoundError, match="gref_umd_test.pth not found"):
        load_split_file(root, "gref_umd", "test", imgs)


def test_box_only_results_report_rec_metrics_only():
    boxes_only = [{"box_iou": 0.7, "inter": None, "union": None}, {"box_iou": 0.2, "inter": None, "union": None}]
    m = grounding_metrics(boxes_only)
    assert m == {"n": 2, "Acc@0.5": 0.5}
    mixed = boxes_only + [{"box_iou": 0.9, "inter": 5, "union": 10}]
    m = grounding_metrics(mixed)
    assert m["n"] == 3 and m["n_masks"] == 1 and m["mIoU"] == 0.5 and abs(m["Acc@0.5"] - 2 / 3) < 1e-12
