"""Referring video segmentation: clip sampling and windows, the clip model's temporal modules,
losses on frames without the object, and the tools end to end (train, evaluate with J&F, the
Ref-YouTube-VOS submission and Ref-DAVIS result layouts, the video predictor and demo)."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ssrvg_ext.config import load_config
from ssrvg_ext.data.clips import ClipCollate, ClipDataset, box_of, windows
from ssrvg_ext.data.readers.rvos import load_ytvos, read_palette_mask
from ssrvg_ext.data.synthetic.videos import generate
from ssrvg_ext.data.tokenizer import WordTokenizer
from ssrvg_ext.evaluation.video_metrics import jf_object
from ssrvg_ext.models import build_criterion, build_model
from ssrvg_ext.models.temporal import QueryLink, TemporalEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model.d_model=32", "model.mask_dim=16", "model.text.hidden=32", "model.text.layers=1",
         "model.fusion.layers=1", "model.fusion.ffn=32", "model.decoder.layers=2", "model.decoder.ffn=32",
         "model.temporal.layers=1", "model.temporal.ffn=32", "data.input_size=64", "data.clip_len=4",
         "train.batch_size=2", "train.epochs=1", "train.warmup_steps=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synv"))
    generate(out, clips=24, eval_clips=3, frames=6, size=64, seed=5)
    return out


def small_cfg(data, *extra):
    return load_config(os.path.join(ROOT, "configs", "tiny_video.yaml"),
                       SMALL + [f"data.ann_dir={data}", f"data.image_dir={data}", *extra])


@pytest.mark.parametrize("n,clip", [(8, 8), (6, 4), (10, 4), (3, 4), (1, 1), (9, 3)])
def test_windows_cover_every_frame_in_order(n, clip):
    ws = windows(n, clip)
    assert all(w == list(range(w[0], w[0] + len(w))) for w in ws)  # consecutive
    assert all(len(w) == min(n, clip) for w in ws) and ws[-1][-1] == n - 1
    assert sorted({t for w in ws for t in w}) == list(range(n))


def test_box_of_a_mask():
    m = torch.zeros(10, 12, dtype=torch.uint8)
    m[2:5, 3:9] = 1
    assert box_of(m).tolist() == [3, 2, 9, 5]
    assert box_of(torch.zeros(4, 4)).tolist() == [0, 0, 0, 0]


def test_training_clips(data):
    recs = load_ytvos(data, "train", annotated=True)
    ds = ClipDataset(recs, 4, 64, train=True, flip=False, jitter=False)
    assert len(ds) == len(recs)
    for i in range(6):
        s = ds[i]
        f = s["meta"]["frames"]
        assert f == list(range(f[0], f[0] + 4)) and f[-1] < len(recs[i].frames)
        assert s["images"].shape == (4, 3, 64, 64) and s["masks"].shape == (4, 64, 64)
        for k, t in enumerate(f):
            gt = read_palette_mask(recs[i].anno_paths[t], recs[i].obj_id)
            assert np.array_equal(s["masks"][k].numpy().astype(bool), gt)  # 64 px frames: no resizing
            assert bool(s["present"][k]) == bool(gt.any())
            if gt.any():
                ys, xs = np.nonzero(gt)
                want = torch.tensor([(xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2,
                                     xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]) / 64
                assert torch.allclose(s["boxes"][k], want.float())


def test_flip_mirrors_every_frame_and_swaps_the_words(data):
    import random

    recs = [r for r in load_ytvos(data, "train", annotated=True) if " left" in r.text or " right" in r.text]
    if not recs:
        pytest.skip("no left/right expression in this small set")
    ds = ClipDataset(recs[:1], 4, 64, train=True, flip=True, jitter=False)
    plain = ClipDataset(recs[:1], 4, 64, train=True, flip=False, jitter=False)
    for seed in range(20):
        random.seed(seed)
        s = ds[0]
        random.seed(seed)
        p = plain[0]
        if s["text"] != p["text"]:
            assert torch.equal(s["masks"], p["masks"].flip(-1)) and torch.equal(s["images"], p["images"].flip(-1))
            assert ("left" in s["text"]) == ("right" in p["text"])
            return
    pytest.fail("no flip in 20 draws")


def test_evaluation_windows_predict_every_frame_once(data):
    recs = load_ytvos(data, "valid", annotated=True)
    ds = ClipDataset(recs, 4, 64, train=False)
    seen = {}
    for i in range(len(ds)):
        s = ds[i]
        for t, own in zip(s["meta"]["frames"], s["meta"]["own"]):
            if own:
                key = (s["meta"]["index"], t)
                assert key not in seen
                seen[key] = True
    assert len(seen) == sum(len(r.frames) for r in recs)


def test_collate_repeats_the_expression_per_frame(data):
    recs = load_ytvos(data, "train", annotated=True)[:3]
    tok = WordTokenizer.train([r.text for r in recs])
    ds = ClipDataset(recs, 4, 64, train=True, flip=False, jitter=False)
    b = ClipCollate(tok)([ds[0], ds[1], ds[2]])
    assert b["images"].shape == (12, 3, 64, 64) and b["clip_len"] == 4 and len(b["meta"]) == 12
    ids, _ = tok.encode([r.text for r in recs])
    assert torch.equal(b["text_ids"], ids.repeat_interleave(4, 0))
    assert b["box_valid"].dtype == torch.bool and b["box_valid"].shape == (12,)


def test_temporal_modules_stay_inside_each_clip():
    """Frames of one clip see each other; another clip's frames change nothing."""
    torch.manual_seed(0)
    enc, link = TemporalEncoder(16, 2, 2, 32).eval(), QueryLink(16, 2).eval()
    for p in list(enc.parameters()) + list(link.parameters()):  # zero-initialised projections too
        torch.nn.init.normal_(p, std=0.2)
    shapes = [(4, 4), (2, 2)]
    mem, words = torch.randn(6, 20, 16), torch.randn(6, 5, 16)
    pad = torch.zeros(6, 5, dtype=torch.bool)
    q = torch.randn(6, 3, 16)
    out, ql = enc(mem, shapes, words, pad, 3), link(q, 3)
    mem2, q2 = mem.clone(), q.clone()
    mem2[4], q2[4] = torch.randn(20, 16), torch.randn(3, 16)  # a frame of clip 1
    out2, ql2 = enc(mem2, shapes, words, pad, 3), link(q2, 3)
    assert torch.allclose(out[:3], out2[:3], atol=1e-6) and torch.allclose(ql[:3], ql2[:3], atol=1e-6)
    assert not torch.allclose(out[3], out2[3]) and not torch.allclose(ql[5], ql2[5])  # within clip 1: seen
    with pytest.raises(ValueError, match="whole clips"):
        enc(mem[:5], shapes, words[:5], pad[:5], 3)


def test_temporal_first_level_leaves_the_finer_levels_untouched():
    """first_level=1: the finest level passes through bit for bit, and the coarser levels are what the
    same layers make of them alone (the finest level's tokens do not reach them)."""
    torch.manual_seed(0)
    enc = TemporalEncoder(16, 2, 2, 32, first_level=1).eval()
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.2)
    full = TemporalEncoder(16, 2, 2, 32).eval()
    full.load_state_dict(enc.state_dict())
    shapes = [(4, 4), (2, 2), (1, 1)]
    mem, words = torch.randn(6, 21, 16), torch.randn(6, 5, 16)
    pad = torch.zeros(6, 5, dtype=torch.bool)
    out = enc(mem, shapes, words, pad, 3)
    assert torch.equal(out[:, :16], mem[:, :16])
    assert torch.allclose(out[:, 16:], full(mem[:, 16:], shapes[1:], words, pad, 3), atol=1e-6)
    assert not torch.allclose(out[:, 16:], mem[:, 16:])
    mem2 = mem.clone()
    mem2[:, :16] = torch.randn(6, 16, 16)
    assert torch.equal(enc(mem2, shapes, words, pad, 3)[:, 16:], out[:, 16:])
    with pytest.raises(ValueError, match="leaves none"):
        TemporalEncoder(16, 1, 2, 32, first_level=3)(mem, shapes, words, pad, 3)
    with pytest.raises(ValueError, match=">= 0"):
        TemporalEncoder(16, 1, 2, 32, first_level=-1)


def test_clip_model_trains_and_absent_frames_have_no_box_loss(data):
    cfg = small_cfg(data)
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=40), build_criterion(cfg)
    assert model.temporal is not None and model.query_link is not None
    b, t, s = 2, 4, 64
    batch = {"images": torch.randn(b * t, 3, s, s), "text_ids": torch.randint(4, 40, (b * t, 6)),
             "text_mask": torch.ones(b * t, 6, dtype=torch.bool), "boxes": torch.rand(b * t, 4) * 0.4 + 0.3,
             "masks": (torch.rand(b * t, s, s) > 0.7).to(torch.uint8),
             "box_valid": torch.tensor([True, True, False, True] * 2),
             "meta": [{"valid": (s, s)}] * (b * t)}
    model.train()
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], clip_len=t)
    losses = crit(out, batch)
    losses["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    other = dict(batch, boxes=batch["boxes"].clone())
    other["boxes"][[2, 6]] = torch.tensor([0.9, 0.1, 0.05, 0.05])  # the absent frames' boxes
    again = crit({k: v.detach() if torch.is_tensor(v) else [x.detach() for x in v] for k, v in out.items()}, other)
    for k in ("l1", "giou", "prop_l1", "prop_giou", "prop_score", "total"):
        assert torch.allclose(again[k], losses[k].detach()), k
    changed = dict(batch, box_valid=torch.ones(b * t, dtype=torch.bool), boxes=other["boxes"])
    assert not torch.allclose(crit({k: v.detach() if torch.is_tensor(v) else [x.detach() for x in v]
                                    for k, v in out.items()}, changed)["l1"], losses["l1"].detach())


@pytest.mark.parametrize("switches", [["model.fusion.spectrum=true", "model.segment_optimizer=true", "model.mask_stride=4"],
                                      ["model.cmpc.perception=true", "model.cmpc.graph_steps=1",
                                       "model.cmpc.exchange_rounds=1"], ["model.mask_stride=4"]],
                         ids=["sgmg", "cmpc", "mask_stride_4"])
def test_per_frame_method_components_run_on_clips(data, switches):
    cfg = small_cfg(data, *switches)
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=40), build_criterion(cfg)
    b, t, s = 2, 4, 64
    batch = {"images": torch.randn(b * t, 3, s, s), "text_ids": torch.randint(4, 40, (b * t, 6)),
             "text_mask": torch.ones(b * t, 6, dtype=torch.bool), "boxes": torch.rand(b * t, 4) * 0.4 + 0.3,
             "masks": (torch.rand(b * t, s, s) > 0.7).to(torch.uint8), "box_valid": torch.ones(b * t, dtype=torch.bool),
             "meta": [{"valid": (s, s)}] * (b * t)}
    losses = crit(model.train()(batch["images"], batch["text_ids"], batch["text_mask"], clip_len=t), batch)
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_without_temporal_layers_a_clip_is_its_frames(data):
    """With model.temporal off, clip_len changes nothing: the per-frame model."""
    cfg = small_cfg(data, "model.temporal.layers=0", "model.temporal.link_queries=false")
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=40).eval()
    x, ids = torch.randn(4, 3, 64, 64), torch.randint(4, 40, (4, 6))
    m = torch.ones(4, 6, dtype=torch.bool)
    with torch.no_grad():
        a, b = model(x, ids, m, clip_len=4), model(x, ids, m)
    assert torch.equal(a["mask_logits"], b["mask_logits"]) and torch.equal(a["boxes"], b["boxes"])


def test_video_tools_end_to_end(data, tmp_path):
    """ssrvg-train on clips, ssrvg-eval with J&F (checked against jf_object on the written masks), the
    Ref-YouTube-VOS submission, the Ref-DAVIS results, the shuffled control, the demo strip."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    over = SMALL + [f"data.ann_dir={data}", f"data.image_dir={data}"]

    def call(*args):
        r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    call("ssrvg_ext.cli.train", "--config", "configs/tiny_video.yaml", "--out", str(run), "--max-steps", "3", *over)
    ck = str(run / "last.pth")
    sub, dav = tmp_path / "sub", tmp_path / "davis"
    out = call("ssrvg_ext.cli.eval", "--checkpoint", ck, "--split", "valid", "--out-dir", str(run),
               "--submission", str(sub), "--davis", str(dav))
    assert "J&F" in out
    ev = json.load(open(run / "eval_valid.json"))
    recs = load_ytvos(data, "valid", annotated=True)
    assert ev["metrics"]["n"] == len(recs) == len(ev["predictions"])
    js = []
    for p, r in zip(ev["predictions"], recs):
        assert (p["video"], p["exp_id"]) == (r.video, r.exp_id)
        pngs = [np.asarray(Image.open(sub / "Annotations" / r.video / r.exp_id / (f + ".png"))) for f in r.frames]
        for a in pngs:
            assert a.dtype == np.uint8 and a.shape == (64, 64) and set(np.unique(a)) <= {0, 255}
        gt = np.stack([read_palette_mask(q, r.obj_id) for q in r.anno_paths])
        jf = jf_object(torch.from_numpy(np.stack(pngs) > 0), torch.from_numpy(gt))
        assert abs(jf["J"] - p["J"]) < 1e-9 and abs(jf["F"] - p["F"]) < 1e-9
        js.append((jf["J"] + jf["F"]) / 2)
    assert abs(ev["metrics"]["J&F"] - float(np.mean(js))) < 1e-9
    with zipfile.ZipFile(sub / "submission.zip") as z:
        names = z.namelist()
    assert all(n.startswith("Annotations/") for n in names)
    assert sum(n.endswith(".png") for n in names) == sum(len(r.frames) for r in recs)
    for r in recs:  # Ref-DAVIS: annotator exp_id % 4, value exp_id // 4 + 1
        im = Image.open(dav / f"anno_{int(r.exp_id) % 4}" / r.video / (r.frames[0] + ".png"))
        assert im.mode == "P" and np.asarray(im).max() <= int(r.exp_id) // 4 + 1
    call("ssrvg_ext.cli.eval", "--checkpoint", ck, "--split", "valid", "--control", "valid", "--out-dir", str(run))
    assert os.path.isfile(run / "eval_valid_shuffled.json")
    out = call("ssrvg_ext.cli.demo_video", "--checkpoint", ck, "--data", data, "--out", str(tmp_path / "s.png"))
    w, h = Image.open(tmp_path / "s.png").size
    assert h == 64 + 16 and w == len(recs[0].frames) * 66

    from ssrvg_ext import VideoPredictor

    vp = VideoPredictor(ck)
    frames = recs[0].frame_paths + recs[0].frame_paths[:3]  # 9 frames: windows of 4 with an overlap
    r = vp.predict(frames, recs[0].text)
    assert r["masks"].shape == (9, 64, 64) and r["boxes"].shape == (9, 4)
    with pytest.raises(ValueError, match="empty"):
        vp.predict(frames, " ")


def test_eval_refuses_video_writers_for_image_models_and_several_splits(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.eval", "--checkpoint", "x.pth", "--split", "a", "b",
                        "--submission", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "one split" in r.stderr


def test_video_config_rejects_image_only_options(data):
    from ssrvg_ext.engine.data import load_records, load_train_instances

    cfg = small_cfg(data, "data.crop=objects")
    with pytest.raises(ValueError, match="image-only"):
        load_train_instances(cfg, load_records(cfg, "train"))
    with pytest.raises(ValueError, match="clip_len"):
        ClipDataset([], 0, 64, train=True)


def test_object_labels_per_frame_and_flipped_motions(data):
    """Every frame's id map and its video's label table from meta.json; a flip mirrors the map and
    turns "left" motions into "right" ones."""
    import random

    from ssrvg_ext.data.clips import load_video_labels

    recs = load_ytvos(data, "train", annotated=True)
    labels = load_video_labels(data, "train", ["category", "motion"], {r.video for r in recs})
    meta = json.load(open(os.path.join(data, "train", "meta.json")))["videos"]
    motions = labels.classes["motion"]
    for r in recs[:5]:
        for oid, o in meta[r.video]["objects"].items():
            row = labels.tables[r.video][int(oid)]
            assert labels.classes["category"][row[0] - 1] == o["category"] and motions[row[1] - 1] == o["motion"]
    ds = ClipDataset(recs, 4, 64, train=True, flip=True, jitter=False, labels=labels)
    plain = ClipDataset(recs, 4, 64, train=True, flip=False, jitter=False, labels=labels)
    i = next(k for k, r in enumerate(recs) if any(o["motion"] in ("left", "right", "enters_left", "enters_right")
                                                  for o in meta[r.video]["objects"].values()))
    for seed in range(30):
        random.seed(seed)
        s = ds[i]
        random.seed(seed)
        p = plain[i]
        for k, t in enumerate(p["meta"]["frames"]):  # the PNG's ids (64 px frames: no resizing)
            assert np.array_equal(p["instances"][k].numpy(), np.asarray(Image.open(recs[i].anno_paths[t])))
        if torch.equal(s["instances"], p["instances"].flip(-1)) and not torch.equal(s["instances"], p["instances"]):
            for oid in range(1, p["inst_labels"].shape[0]):
                a, b = motions[p["inst_labels"][oid, 1] - 1], motions[s["inst_labels"][oid, 1] - 1]
                assert b == a.replace("left", "#").replace("right", "left").replace("#", "right")
            break
    else:
        pytest.fail("no flip in 30 draws")
    b = ClipCollate(WordTokenizer.train([r.text for r in recs]))([plain[0], plain[i]])
    assert b["instances"].shape == (8, 64, 64) and b["inst_labels"].shape[0] == 8
    assert torch.equal(b["inst_labels"][4, :plain[i]["inst_labels"].shape[0]], plain[i]["inst_labels"])


def test_bench_video_step_times_each_variant(data, load_benchmark, monkeypatch, capsys):
    """benchmarks/bench_video_step.py: one line per variant, the first at 1.000x, the others timed."""
    bench = load_benchmark("bench_video_step")
    small = ",".join(SMALL)
    monkeypatch.setattr(sys, "argv", ["bench_video_step.py", "--data", data, "--reps", "1", "--batches", "1",
                                      "--variants", small, small + ",model.mask_stride=4"])
    bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "1 alternated rounds of 1 steps" in lines[0]
    assert lines[1].endswith("1.000x") and "model.mask_stride=4" in lines[2]
    assert float(lines[2].split()[-3]) > 0  # its seconds per step
    for bad, says in ((["--reps", "0"], "--reps"), (["--data", data, "--variants", small, small + ",data.clip_len=3"],
                                                     "changes data")):
        monkeypatch.setattr(sys, "argv", ["bench_video_step.py", *bad])
        with pytest.raises(SystemExit) as e:
            bench.main()
        assert e.value.code == 2 and says in capsys.readouterr().err
