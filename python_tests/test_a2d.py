"""A2D-Sentences and JHMDB-Sentences end to end on the tiny generated sets: video decoding (PyAV)
with its cache, annotated-frame records and clips, the criterion's unlabeled frames, and the
command-line tools under the standard protocol (train on A2D, evaluate on its test and on JHMDB)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")
h5py = pytest.importorskip("h5py")

from ssrvg_ext.data import video_io  # noqa: E402
from ssrvg_ext.data.annotated import a2d_records, centred_window, jhmdb_records  # noqa: E402
from ssrvg_ext.data.clips import ClipCollate, ClipDataset  # noqa: E402
from ssrvg_ext.data.readers.rvos import read_a2d_frame  # noqa: E402
from ssrvg_ext.data.synthetic.rvos_sets import generate_a2d, generate_jhmdb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def a2d(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("a2d"))
    generate_a2d(out, clips=8, frames=12, seed=1)
    return out


@pytest.fixture(scope="module")
def jhmdb(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("jhmdb"))
    generate_jhmdb(out, clips=4, frames=10, seed=1)
    return out


def clip(rng, t=6, h=48, w=64):
    v = (rng.random((t, h, w, 3)) * 60).astype(np.uint8)
    for k in range(t):
        v[k, 10:26, 4 + 4 * k:20 + 4 * k] = (230, 30, 30)  # a red square moving right
    return v


# ---- decoding ----
def test_video_round_trip_and_cache(tmp_path):
    rng = np.random.default_rng(0)
    v = clip(rng)
    path = video_io.write_video(v, str(tmp_path / "c.mp4"), fps=5)
    back = video_io.read_video(path)
    assert back.shape == v.shape
    centre = back[np.arange(6), 18, 12 + 4 * np.arange(6)].astype(int)  # the square's centre in every frame
    assert np.abs(centre - [230, 30, 30]).max() < 40  # lossy, but close
    frames = video_io.decode_to_cache(path, str(tmp_path / "cache" / "c"))
    assert [os.path.basename(f) for f in frames] == [f"{k:05d}.jpg" for k in range(1, 7)]
    stamp = [os.stat(f).st_mtime_ns for f in frames]
    real = video_io._frames
    try:  # a second call reads nothing
        video_io._frames = lambda p: (_ for _ in ()).throw(AssertionError("decoded again"))
        assert video_io.decode_to_cache(path, str(tmp_path / "cache" / "c")) == frames
    finally:
        video_io._frames = real
    assert [os.stat(f).st_mtime_ns for f in frames] == stamp
    video_io.write_video(v[:4], path, fps=5)  # the source changed: decoded again
    assert len(video_io.decode_to_cache(path, str(tmp_path / "cache" / "c"))) == 4


def test_bad_videos_are_errors_naming_the_file(tmp_path):
    path = video_io.write_video(clip(np.random.default_rng(1)), str(tmp_path / "c.mp4"))
    data = open(path, "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mp4").write_bytes(b"not a video at all")
    for name in ("cut.mp4", "text.mp4"):
        with pytest.raises(ValueError, match=name):
            video_io.read_video(str(tmp_path / name))
        with pytest.raises(ValueError, match=name):
            video_io.decode_to_cache(str(tmp_path / name), str(tmp_path / "cache" / name))
        assert not os.path.exists(tmp_path / "cache" / name)  # nothing that looks complete
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        video_io.read_video(str(tmp_path / "missing.mp4"))


def test_an_interrupted_decode_leaves_no_cache(tmp_path):
    path = video_io.write_video(clip(np.random.default_rng(2)), str(tmp_path / "c.mp4"))
    real = video_io._frames

    def dies(p):
        for k, f in enumerate(real(p)):
            if k == 3:
                raise KeyboardInterrupt
            yield f
    video_io._frames = dies
    try:
        with pytest.raises(KeyboardInterrupt):
            video_io.decode_to_cache(path, str(tmp_path / "cache" / "c"))
    finally:
        video_io._frames = real
    assert not os.path.exists(tmp_path / "cache" / "c") and os.listdir(tmp_path / "cache") == []
    assert len(video_io.decode_to_cache(path, str(tmp_path / "cache" / "c"))) == 6


# ---- records and clips ----
def test_a2d_records_hold_the_decoded_video_and_the_annotated_frame(a2d):
    recs = a2d_records(a2d, "train")
    assert recs and all(r.video != "a2dmissedxy" for r in recs)  # the missed video is excluded
    rows = [ln.split(",") for ln in open(os.path.join(a2d, "text_annotations", "a2d_annotation.txt")).read().splitlines()[1:]]
    assert any("(copy)" in r[1] for r in rows) and all(r.exp_id.isdigit() for r in recs)
    for r in recs:
        f = r.extra["annotated"]
        assert len(r.frames) == len(r.frame_paths) == 12 and r.frames[f] == f"{r.extra['frame']:05d}"
        assert [p is not None for p in r.anno_paths].count(True) == 1 and r.anno_paths[f].endswith(f"{f + 1:05d}.h5")
        assert r.obj_id in read_a2d_frame(r.anno_paths[f])["instances"]
    assert len({id(r.frame_paths) for r in recs if r.video == recs[0].video}) == 1  # one list per video


def test_clips_of_annotated_records(a2d):
    recs = [r for r in a2d_records(a2d, "test")]
    ds = ClipDataset(recs, clip_len=5, size=64, train=False)
    assert len(ds) == len(recs)
    for (ri, w, own), r in zip(ds.items, recs):
        f = r.extra["annotated"]
        assert w == centred_window(f, 12, 5) and len(w) == 5 and own.count(True) == 1 and w[own.index(True)] == f
    assert centred_window(0, 12, 5) == [0, 0, 0, 1, 2] and centred_window(11, 12, 4) == [9, 10, 11, 11]
    s = ds[0]
    rec = recs[0]
    gt = read_a2d_frame(rec.anno_paths[rec.extra["annotated"]])
    want = gt["masks"][gt["instances"].index(rec.obj_id)]
    k = ds.items[0][2].index(True)
    assert s["labeled"].tolist() == [w == rec.extra["annotated"] for w in ds.items[0][1]]
    assert s["labeled"][k] and int(s["masks"][k].sum()) > 0
    assert s["masks"][k].sum() == pytest.approx(want.sum() * (64 / 128) ** 2, rel=0.35)
    assert all(int(m.sum()) == 0 for m, lab in zip(s["masks"], s["labeled"]) if not lab)
    train = ClipDataset(recs, clip_len=5, size=64, train=True)
    for i in range(len(recs)):
        t = train[i]
        assert recs[i].extra["annotated"] in t["meta"]["frames"] and t["labeled"].any()


def test_jhmdb_records_are_three_frames_with_masks(jhmdb):
    recs = jhmdb_records(jhmdb)
    by_video = {}
    for r in recs:
        by_video.setdefault(r.video, []).append(r.extra["annotated"])
        assert r.anno_paths[r.extra["annotated"]].endswith("puppet_mask.mat")
    assert all(len(v) == 3 and len(set(v)) == 3 and max(v) < 9 for v in by_video.values())  # 9 masks of 10 frames
    assert [r.extra["annotated"] for r in jhmdb_records(jhmdb)] == [r.extra["annotated"] for r in recs]  # seeded


def test_unlabeled_frames_add_nothing_to_the_loss(a2d):
    from ssrvg_ext.config import load_config
    from ssrvg_ext.data import WordTokenizer
    from ssrvg_ext.models import build_criterion, build_model

    cfg = load_config(os.path.join(ROOT, "configs/tiny_a2d.yaml"), ["data.input_size=64", "model.temporal.layers=0",
                                                                     "model.temporal.link_queries=false"])
    recs = a2d_records(a2d, "train")[:4]
    tok = WordTokenizer.train([r.text for r in recs], 20)
    ds = ClipDataset(recs, clip_len=3, size=64, train=False)
    batch = ClipCollate(tok)([ds[i] for i in range(2)])
    assert "labeled" in batch and batch["num_labeled"] == 2
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=tok.vocab_size), build_criterion(cfg)
    model.train()
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], clip_len=3)
    base = crit(out, batch)
    unl = ~batch["labeled"]
    noisy = dict(out)
    for k, v in out.items():  # change every per-frame output of the unlabeled frames
        if torch.is_tensor(v) and v.is_floating_point() and v.dim() >= 1 and v.shape[0] == len(unl):
            noisy[k] = torch.where(unl.view(-1, *[1] * (v.dim() - 1)), v + torch.randn_like(v), v)
        elif torch.is_tensor(v) and v.is_floating_point() and v.dim() >= 2 and v.shape[1] == len(unl):  # (L - 1, B, ...)
            noisy[k] = torch.where(unl.view(1, -1, *[1] * (v.dim() - 2)), v + torch.randn_like(v), v)
    changed = crit(noisy, batch)
    for k in base:
        torch.testing.assert_close(changed[k], base[k], rtol=1e-5, atol=1e-6, msg=k)
    labeled_only = dict(out)
    labeled_only["mask_logits"] = torch.where(unl[:, None, None], out["mask_logits"], out["mask_logits"] + 1)
    assert not torch.allclose(crit(labeled_only, batch)["mask_dice"], base["mask_dice"])  # the labeled ones count


# ---- the tools, under the protocol ----
def run_tool(args, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def test_train_on_a2d_evaluate_on_a2d_and_jhmdb(a2d, jhmdb, tmp_path):
    small = ["data.input_size=64", "model.d_model=32", "model.mask_dim=16", "model.text.hidden=32", "model.text.layers=1",
             "model.fusion.layers=1", "model.decoder.layers=2", "model.temporal.layers=1", "train.batch_size=2"]
    out = str(tmp_path / "run")
    r = run_tool(["tools/train.py", "--config", "configs/tiny_a2d.yaml", "--out", out, f"data.ann_dir={a2d}",
                  "train.epochs=1", *small, "--max-steps", "4"])
    assert r.returncode == 0, r.stderr[-3000:]
    cache = os.path.join(a2d, "decoded_frames")
    stamps = {f: os.stat(os.path.join(cache, v, f)).st_mtime_ns for v in os.listdir(cache) for f in ["00001.jpg"]}
    r = run_tool(["-m", "ssrvg_ext.cli.eval", "--checkpoint", os.path.join(out, "last.pth"), "--split", "test",
                  "--out", str(tmp_path / "a2d.json")])
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.load(open(tmp_path / "a2d.json"))
    assert set(ev["metrics"]) >= {"n", "oIoU", "mIoU", "mAP", "AP@0.5", "AP@0.75", "Prec@0.5", "Prec@0.9"}
    assert ev["metrics"]["n"] == len(a2d_records(a2d, "test")) == len(ev["predictions"])
    assert {f: os.stat(os.path.join(cache, v, f)).st_mtime_ns for v in os.listdir(cache) for f in ["00001.jpg"]} == stamps
    r = run_tool(["-m", "ssrvg_ext.cli.eval", "--checkpoint", os.path.join(out, "last.pth"), "--split", "test",
                  "data.format=jhmdb", f"data.ann_dir={jhmdb}", "--out", str(tmp_path / "jhmdb.json")])
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.load(open(tmp_path / "jhmdb.json"))
    assert ev["metrics"]["n"] == len(jhmdb_records(jhmdb)) and "mAP" in ev["metrics"]
    assert "oIoU" in r.stdout and "mAP" in r.stdout  # the table's columns


def test_a_bad_video_or_annotation_is_named(tmp_path):
    root = str(tmp_path / "a2d")
    generate_a2d(root, clips=4, frames=12, seed=3)
    recs = a2d_records(root, "train")
    mp4 = recs[0].extra["source"]
    with open(mp4, "r+b") as f:
        f.truncate(os.path.getsize(mp4) // 3)
    with pytest.raises(ValueError, match=os.path.basename(mp4)):
        a2d_records(root, "train")
    h5 = recs[-1].extra["h5"]
    open(h5, "wb").write(b"garbage")
    with pytest.raises(ValueError, match=os.path.basename(h5)):
        read_a2d_frame(h5)


# ---- video files in, pictures out ----
@pytest.fixture(scope="module")
def video_ckpt(tmp_path_factory):
    from ssrvg_ext.config import load_config
    from ssrvg_ext.data import WordTokenizer
    from ssrvg_ext.engine import checkpoint
    from ssrvg_ext.engine.data import tokenizer_state
    from ssrvg_ext.models import build_model

    cfg = load_config(os.path.join(ROOT, "configs/tiny_video.yaml"), ["data.aux_labels=[]"])
    tok = WordTokenizer.train(["the red square moving to the right", "the circle"], cfg["data"]["max_len"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=tok.vocab_size)
    path = str(tmp_path_factory.mktemp("vckpt") / "best.pth")
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg, "tokenizer": tokenizer_state(tok),
                            "aux_classes": None, "ema": None, "epoch": 0, "step": 0}, path)
    return path


def test_predict_video_from_a_file_and_a_folder(video_ckpt, tmp_path):
    from PIL import Image

    from ssrvg_ext import VideoPredictor
    from ssrvg_ext.cli.predict_video import main

    v = clip(np.random.default_rng(4), t=10, h=64, w=80)
    mp4 = video_io.write_video(v, str(tmp_path / "clip.mp4"))
    text = "the red square moving to the right"
    main(["--checkpoint", video_ckpt, "--video", mp4, "--text", text, "--out", str(tmp_path / "o"), "--device", "cpu"])
    want = VideoPredictor(video_ckpt, device="cpu").predict(video_io.read_video(mp4), text)
    pngs = sorted(os.listdir(tmp_path / "o" / "masks"))
    assert pngs == [f"{t:05d}.png" for t in range(1, 11)]
    for t, name in enumerate(pngs):
        m = np.array(Image.open(tmp_path / "o" / "masks" / name))
        assert m.shape == (64, 80) and set(np.unique(m)) <= {0, 255}
        assert np.array_equal(m > 0, want["masks"][t].numpy().astype(bool))
    boxes = json.load(open(tmp_path / "o" / "boxes.json"))
    assert boxes["text"] == text and list(boxes["boxes"]) == [n[:-4] for n in pngs]
    assert len(video_io.read_video(str(tmp_path / "o" / "overlay.mp4"))) == 10
    # a folder of frames, masks as RLE: the frames keep their names
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(4):
        Image.fromarray(v[t]).save(folder / f"img_{t:03d}.png")
    main(["--checkpoint", video_ckpt, "--video", str(folder), "--text", text, "--out", str(tmp_path / "r"), "--rle",
          "--no-overlay", "--device", "cpu"])
    masks = json.load(open(tmp_path / "r" / "masks.json"))
    assert list(masks) == [f"img_{t:03d}" for t in range(4)] and not (tmp_path / "r" / "overlay.mp4").exists()
    want = VideoPredictor(video_ckpt, device="cpu").predict(str(folder), text)
    from ssrvg_ext.ops import rle
    for t, name in enumerate(masks):
        dec = rle.decode([{"size": masks[name]["size"], "counts": masks[name]["counts"].encode()}])[0]
        assert torch.equal(dec, want["masks"][t])
    with pytest.raises(SystemExit, match="cannot be opened"):
        (tmp_path / "bad.mp4").write_bytes(b"nope")
        main(["--checkpoint", video_ckpt, "--video", str(tmp_path / "bad.mp4"), "--text", text, "--out",
              str(tmp_path / "x")])
