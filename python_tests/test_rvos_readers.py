"""RVOS readers on small files written in the public release layouts (Ref-YouTube-VOS in both
schemas, Ref-DAVIS17 as converted by the RVOS codebases, A2D-Sentences, JHMDB-Sentences), and
their errors on malformed or missing files."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from ssrvg_ext.data.readers.rvos import (load_a2d, load_jhmdb, load_ytvos, read_a2d_frame, read_jhmdb_masks,
                                 read_palette_mask)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def palette_png(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87] + [0] * (256 - 3) * 3)
    im.save(path)


def ytvos(root, split="train", annotated=True, videos=None):
    videos = videos or {
        "0a1b2c3d4e": {"frames": ["00010", "00000", "00005"],
                       "expressions": {"0": {"exp": "A  brown dog running", "obj_id": "1"},
                                       "1": {"exp": "dog on the left", "obj_id": "1"},
                                       "2": {"exp": "a red ball", "obj_id": "2"}}},
        "ffee000111": {"frames": ["00000", "00005"], "expressions": {"0": {"exp": "the cat", "obj_id": "1"}}}}
    write_json(os.path.join(root, "meta_expressions", split, "meta_expressions.json"), {"videos": videos})
    for vid, v in videos.items():
        for k, f in enumerate(v["frames"]):
            os.makedirs(os.path.join(root, split, "JPEGImages", vid), exist_ok=True)
            Image.new("RGB", (8, 6), (k * 40, 0, 0)).save(os.path.join(root, split, "JPEGImages", vid, f + ".jpg"))
            if annotated:
                ids = np.zeros((6, 8), np.uint8)
                ids[1:3, 1 + k:3 + k] = 1
                ids[4:, 6:] = 2
                palette_png(os.path.join(root, split, "Annotations", vid, f + ".png"), ids)
    return videos


def test_ref_youtube_vos_train(tmp_path):
    root = str(tmp_path)
    ytvos(root)
    write_json(os.path.join(root, "train", "meta.json"), {"videos": {"0a1b2c3d4e": {"objects": {
        "1": {"category": "dog", "frames": ["00000"]}, "2": {"category": "sports_ball", "frames": ["00000"]}}}}})
    recs = load_ytvos(root, "train")
    assert [(r.video, r.exp_id) for r in recs] == [("0a1b2c3d4e", "0"), ("0a1b2c3d4e", "1"), ("0a1b2c3d4e", "2"),
                                                  ("ffee000111", "0")]
    r = recs[0]
    assert r.text == "a brown dog running" and r.obj_id == 1 and r.category == "dog"
    assert r.frames == ["00000", "00005", "00010"]  # sorted, from the file (never counted)
    assert r.frame_paths[1].endswith(os.path.join("train", "JPEGImages", "0a1b2c3d4e", "00005.jpg"))
    m = read_palette_mask(r.anno_paths[1], r.obj_id)
    want = np.zeros((6, 8), bool)
    want[1:3, 3:5] = True  # "00005" is the third frame listed in the file (k = 2)
    assert np.array_equal(m, want)
    assert read_palette_mask(recs[2].anno_paths[0], recs[2].obj_id).sum() == 4 and recs[2].category == "sports_ball"


def test_ref_youtube_vos_valid_excludes_test_videos(tmp_path):
    root = str(tmp_path)
    vids = {k: {"frames": ["00000"], "expressions": {"0": {"exp": f"thing {k}"}}} for k in ("v1", "v2", "v3")}
    ytvos(root, "valid", annotated=False, videos=vids)
    assert [r.video for r in load_ytvos(root, "valid")] == ["v1", "v2", "v3"]  # no test file: those with frames
    os.rename(os.path.join(root, "valid", "JPEGImages", "v3"), os.path.join(root, "v3_elsewhere"))
    assert [r.video for r in load_ytvos(root, "valid")] == ["v1", "v2"]
    write_json(os.path.join(root, "meta_expressions", "test", "meta_expressions.json"),
               {"videos": {"v2": vids["v2"]}})
    recs = load_ytvos(root, "valid")
    assert [r.video for r in recs] == ["v1", "v3"] and recs[0].obj_id is None and recs[0].anno_paths is None


def test_older_schema_and_ref_davis(tmp_path):
    root = str(tmp_path / "old")
    write_json(os.path.join(root, "meta_expressions", "train", "meta_expressions.json"), {"videos": {"abc": {"objects": {
        "2": {"category": "cat", "frames": ["00005", "00000"], "expressions": ["a cat", "the cat on a sofa"]},
        "1": {"category": "dog", "frames": ["00000"], "expressions": ["a dog"]}}}}})
    recs = load_ytvos(root, "train")
    assert [(r.exp_id, r.obj_id, r.text, r.category, r.frames) for r in recs] == [
        ("0", 1, "a dog", "dog", ["00000"]), ("1", 2, "a cat", "cat", ["00000", "00005"]),
        ("2", 2, "the cat on a sofa", "cat", ["00000", "00005"])]
    davis = str(tmp_path / "ref-davis")
    ytvos(davis, "valid")
    recs = load_ytvos(davis, "valid", annotated=True)  # Ref-DAVIS: annotated in valid too
    assert len(recs) == 4 and recs[0].obj_id == 1 and read_palette_mask(recs[0].anno_paths[0], 1).sum() == 4


@pytest.mark.parametrize("breakage,match", [
    ("missing", "no such file"),
    ("not_json", "not valid JSON"),
    ("no_exp", "expression '0' has no \"exp\""),
    ("bad_obj", "obj_id 'x' is not an integer"),
    ("no_frames", "no list of frame names"),
])
def test_ref_youtube_vos_errors_name_file_and_record(tmp_path, breakage, match):
    root = str(tmp_path)
    path = os.path.join(root, "meta_expressions", "train", "meta_expressions.json")
    if breakage != "missing":
        v = {"frames": ["00000"], "expressions": {"0": {"exp": "a dog", "obj_id": "1"}}}
        if breakage == "no_exp":
            v["expressions"]["0"] = {"obj_id": "1"}
        if breakage == "bad_obj":
            v["expressions"]["0"]["obj_id"] = "x"
        if breakage == "no_frames":
            del v["frames"]
        write_json(path, {"videos": {"vid9": v}})
        if breakage == "not_json":
            open(path, "w").write("{videos: ")
    with pytest.raises((ValueError, FileNotFoundError), match=match) as e:
        load_ytvos(root, "train")
    assert path in str(e.value)
    if breakage in ("no_exp", "bad_obj", "no_frames"):
        assert "vid9" in str(e.value)


def test_annotation_png_errors(tmp_path):
    rgb = str(tmp_path / "rgb.png")
    Image.new("RGB", (4, 4)).save(rgb)
    with pytest.raises(ValueError, match="mode RGB"):
        read_palette_mask(rgb, 1)
    with pytest.raises(FileNotFoundError, match="vid exp 0"):
        read_palette_mask(str(tmp_path / "none.png"), 1, "vid exp 0")
    junk = str(tmp_path / "junk.png")
    open(junk, "wb").write(b"\x89PNG not really")
    with pytest.raises(ValueError, match="not a readable PNG"):
        read_palette_mask(junk, 1)


def a2d(root):
    """A2D-Sentences in its release layout: 3 videos (one test, one train, one missed)."""
    import h5py

    os.makedirs(os.path.join(root, "Release"))
    with open(os.path.join(root, "Release", "videoset.csv"), "w") as f:  # no header, 9 columns
        f.write("vidTEST01,11,0,5,6,8,120,2,1\nvidTRAIN1,21,0,5,6,8,120,1,0\nvidMISSED,11,0,5,6,8,120,1,1\n")
    ta = os.path.join(root, "text_annotations")
    os.makedirs(ta)
    with open(os.path.join(ta, "a2d_annotation.txt"), "w") as f:
        f.write("video_id,instance_id,query\nvidTEST01,1,Man in red shirt jumping\nvidTEST01,2,dog running\n"
                "vidTEST01,1 (copy),a copy\nvidTRAIN1,1,a bird\nvidMISSED,1,lost\n")
    with open(os.path.join(ta, "a2d_missed_videos.txt"), "w") as f:
        f.write("vidMISSED\n")
    h, w = 6, 8
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 1:3, 1:4] = 1
    masks[1, 3:6, 5:8] = 1
    for vid, frame, inst in (("vidTEST01", 23, [1.0, 2.0]), ("vidTEST01", 40, [1.0]), ("vidTRAIN1", 7, [1.0]),
                             ("vidMISSED", 3, [1.0])):
        os.makedirs(os.path.join(ta, "a2d_annotation_with_instances", vid), exist_ok=True)
        with h5py.File(os.path.join(ta, "a2d_annotation_with_instances", vid, f"{frame:05d}.h5"), "w") as f:
            f["instance"] = np.array(inst)
            m = masks[:len(inst)].transpose(0, 2, 1)  # written MATLAB-style: (N, W, H), (W, H) when N == 1
            f["reMask"] = m[0] if len(inst) == 1 else m
            f["reBBox"] = np.array([[1, 1, 4, 3], [5, 3, 8, 6]], float)[:len(inst)].T  # (4, N)
    return masks


def test_a2d_sentences(tmp_path):
    pytest.importorskip("h5py")
    root = str(tmp_path)
    masks = a2d(root)
    recs = load_a2d(root, "test")
    got = [(r.video, r.obj_id, r.text, r.extra["frame"]) for r in recs]
    assert got == [("vidTEST01", 1, "man in red shirt jumping", 23), ("vidTEST01", 1, "man in red shirt jumping", 40),
                   ("vidTEST01", 2, "dog running", 23)]  # "1 (copy)" dropped, the missed video excluded
    frame = read_a2d_frame(recs[0].extra["h5"])
    assert frame["instances"] == [1, 2] and np.array_equal(frame["masks"], masks.astype(bool))
    assert frame["boxes"].tolist() == [[1, 1, 4, 3], [5, 3, 8, 6]]
    single = read_a2d_frame(recs[1].extra["h5"])
    assert single["masks"].shape == (1, 6, 8) and np.array_equal(single["masks"][0], masks[0].astype(bool))
    assert [r.video for r in load_a2d(root, "train")] == ["vidTRAIN1"]
    with pytest.raises(ValueError, match="train and test"):
        load_a2d(root, "val")
    with open(os.path.join(root, "Release", "videoset.csv"), "a") as f:
        f.write("broken,row\n")
    with pytest.raises(ValueError, match="videoset.csv: row 4 has 2 columns"):
        load_a2d(root, "test")


def test_a2d_frame_errors(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = str(tmp_path / "00001.h5")
    with h5py.File(path, "w") as f:
        f["instance"] = np.array([1.0])
    with pytest.raises(ValueError, match="00001.h5: missing dataset"):
        read_a2d_frame(path)
    open(path, "wb").write(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_a2d_frame(path)


def test_jhmdb_sentences(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = str(tmp_path)
    with open(os.path.join(root, "jhmdb_annotation.txt"), "w") as f:
        f.write("video_id,query\nJump_001,A man jumps over the box\n")
    folder = os.path.join(root, "Rename_Images", "jump", "Jump_001")
    os.makedirs(folder)
    for k in range(1, 5):
        Image.new("RGB", (8, 6)).save(os.path.join(folder, f"{k:05d}.png"))
    part = np.zeros((6, 8, 3), np.uint8)  # (H, W, T): 3 masks for 4 frames
    part[2:4, 1:3, :] = 1
    part[0, 0, 2] = 1
    os.makedirs(os.path.join(root, "puppet_mask", "jump", "Jump_001"))
    scipy_io.savemat(os.path.join(root, "puppet_mask", "jump", "Jump_001", "puppet_mask.mat"), {"part_mask": part})
    (r,) = load_jhmdb(root)
    assert r.video == "Jump_001" and r.text == "a man jumps over the box" and r.category == "jump"
    assert r.frames == ["00001", "00002", "00003", "00004"]
    m = read_jhmdb_masks(r.anno_paths[0])
    assert m.shape == (3, 6, 8) and m[0].sum() == 4 and m[2].sum() == 5 and m[2][0, 0]
    with open(os.path.join(root, "jhmdb_annotation.txt"), "a") as f:
        f.write("Nowhere_002,a ghost\n")
    with pytest.raises(FileNotFoundError, match="row 3: video Nowhere_002"):
        load_jhmdb(root)


def test_optional_dependencies_missing_say_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="needs h5py"):
        read_a2d_frame(str(tmp_path / "x.h5"))
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match="needs scipy"):
        read_jhmdb_masks(str(tmp_path / "x.mat"))
