"""SgMg's clip pipeline (model.clip_queries, data.clip_sampling=sgmg): hypotheses shared by the frames
of a clip, matched once per clip, the best clip-averaged score at inference; SgMg's clip sampling."""

import os
import random

import pytest
import torch

from ssrvg_ext.config import load_config
from ssrvg_ext.data.clips import sgmg_frames
from ssrvg_ext.models import build_criterion, build_model
from ssrvg_ext.models.clip_queries import clip_mean, select
from ssrvg_ext.testing import random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["data.input_size=64", "data.aux_labels=[]", "model.clip_queries=3"]


def test_sgmg_frames():
    random.seed(0)
    for _ in range(200):
        n = random.randint(1, 30)
        anchor = random.randrange(n)
        f = sgmg_frames(n, 5, anchor)
        assert len(f) == 5 and f == sorted(f) and anchor in f and all(0 <= t < n for t in f)
        if n >= 8:  # a neighbour 1-3 frames before and one 1-3 after (unless clamped at the ends)
            assert any(0 < anchor - t <= 3 for t in f) or anchor == 0
            assert any(0 < t - anchor <= 3 for t in f) or anchor == n - 1
            assert len(set(f)) == 5 or anchor in (0, n - 1)  # SgMg clamps the neighbours at the ends too


def test_select_and_clip_mean():
    stacked = torch.arange(3 * 4 * 2).reshape(3, 4, 2).float()  # (N, B, 2)
    idx = torch.tensor([2, 0, 1, 1])
    assert torch.equal(select(stacked, idx, 0), torch.stack([stacked[i, b] for b, i in enumerate(idx)]))
    aux = torch.randn(3, 5, 4, 2)  # (N, L, B, 2): the batch at dim 1 of each hypothesis
    assert torch.equal(select(aux, idx, 1), torch.stack([aux[i, :, b] for b, i in enumerate(idx)], 1))
    x = torch.tensor([[1.0, 3.0, 5.0, 7.0]])
    assert torch.equal(clip_mean(x, 2), torch.tensor([[2.0, 6.0]]))
    assert torch.equal(clip_mean(x, 2, torch.tensor([True, False, True, True])), torch.tensor([[1.0, 6.0]]))


def model_and_batch(clip_len=4):
    cfg = load_config(os.path.join(ROOT, "configs/tiny_video.yaml"), SMALL)
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=50), build_criterion(cfg)
    b = random_batch(8, 64, 12, 50, "cpu")
    b["clip_len"] = clip_len
    b["box_valid"] = torch.tensor([True, True, False, True, True, True, True, True])
    return model, crit, b


def test_inference_takes_one_hypothesis_per_clip():
    model, _, b = model_and_batch()
    model.eval()
    model.clip_queries.train()  # (the part alone: it then also returns every hypothesis, the rest stays in eval)
    with torch.no_grad():
        out = full = model(b["images"], b["text_ids"], b["text_mask"], clip_len=4)
    probs = torch.sigmoid(full["clip_scores"])
    best = probs.reshape(3, 2, 4).mean(-1).argmax(0)  # per clip
    for r in range(8):
        k = int(best[r // 4])
        torch.testing.assert_close(out["boxes"][r], full["clip_hypotheses"]["boxes"][k, r])
        torch.testing.assert_close(out["clip_score"][r], probs[k, r])


def test_matching_supervises_the_matched_hypothesis():
    model, crit, b = model_and_batch()
    model.train()
    out = model(b["images"], b["text_ids"], b["text_mask"], clip_len=4)
    hyp = out["clip_hypotheses"]
    # make hypothesis 1 exact in clip 0 and hypothesis 2 exact in clip 1: they must be matched
    boxes = hyp["boxes"].detach().clone()
    boxes[1, :4] = b["boxes"][:4]
    boxes[2, 4:] = b["boxes"][4:]
    hyp["boxes"] = boxes.requires_grad_(True)
    terms = crit(out, b)
    assert torch.equal(out["boxes"][:4], b["boxes"][:4]) and torch.equal(out["boxes"][4:], b["boxes"][4:])
    assert float(terms["l1"].detach()) == 0.0 and "clip_class" in terms
    terms["total"].backward()
    g = hyp["boxes"].grad
    assert g[0].abs().sum() == 0 and g[1, 4:].abs().sum() == 0 and g[2, :4].abs().sum() == 0  # only the matched
    assert model.clip_queries.score.weight.grad.abs().sum() > 0 and model.clip_queries.embed.weight.grad is not None


def test_class_targets_follow_visibility():
    from ssrvg_ext.models.clip_queries import clip_class_loss

    model, crit, b = model_and_batch()
    model.train()
    out = model(b["images"], b["text_ids"], b["text_mask"], clip_len=4)
    scores = out["clip_scores"].detach().requires_grad_(True)
    out["clip_scores"] = scores
    from ssrvg_ext.models.criterion import LossContext, padding_valid

    ctx = LossContext(8.0, None, b["masks"], padding_valid(b["meta"], 64, "cpu"))
    loss = clip_class_loss(crit, out, b, ctx)["clip_class"]
    loss.backward()
    # the matched hypothesis is pushed up where the object is visible, every other score down
    up = scores.grad < 0
    assert up.sum(0).tolist() == [1, 1, 0, 1, 1, 1, 1, 1]


def preset_step(preset: str):
    """A training forward + criterion of a video method preset at 64 px on two random clips of 5 frames:
    (cfg, model, terms)."""
    cfg = load_config(os.path.join(ROOT, f"configs/methods/{preset}.yaml"), ["data.input_size=64", "data.aux_labels=[]"])
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=50), build_criterion(cfg)
    b = random_batch(10, 64, 12, 50, "cpu")
    b["clip_len"] = 5
    model.train()
    return cfg, model, b, crit(model(b["images"], b["text_ids"], b["text_mask"], clip_len=5), b)


def test_sgmg_video_preset_trains_and_predicts():
    cfg, model, b, terms = preset_step("sgmg_video")
    assert cfg["model"]["clip_queries"] == 5 and cfg["data"]["clip_sampling"] == "sgmg" and cfg["data"]["clip_len"] == 5
    assert {"clip_class", "mask_dice_coarse", "mask_focal_0"} <= set(terms)
    terms["total"].backward()
    model.eval()
    preds = model.predict(b)
    assert len(preds) == 10 and all(0 < p["score"] < 1 for p in preds)


@pytest.mark.parametrize("preset", ["sgmg_video", "cmpc_video"])
def test_video_method_presets_through_the_tools(tmp_path, preset):
    import subprocess
    import sys

    from ssrvg_ext.data.synthetic.videos import generate

    data = str(tmp_path / "v")
    generate(data, clips=20, frames=8, size=64, eval_clips=4)
    r = subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.train", "--config", f"configs/methods/{preset}.yaml",
                        "--out", str(tmp_path / "run"), f"data.ann_dir={data}", f"data.image_dir={data}",
                        "data.input_size=64", "data.aux_labels=[]", "train.epochs=1", "train.batch_size=2",
                        "--max-steps", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert ("train_clip_class" if preset == "sgmg_video" else "train_cmpc_bce_8") in log and "val_J&F" in log
    r = subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.eval", "--checkpoint", str(tmp_path / "run" / "last.pth"),
                        "--split", "testB", "--out", str(tmp_path / "ev.json")], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    assert json.load(open(tmp_path / "ev.json"))["metrics"]["n"] > 0


# ---- CMPC-V (model.cmpc.video) ----
def test_cmpc_v_temporal_graph_reads_its_own_clip_only():
    from ssrvg_ext.models.cmpc import TemporalGraph

    torch.manual_seed(0)
    g = TemporalGraph(16)
    m = torch.randn(6, 16, 5, 4)  # two clips of 3 frames
    a = torch.randn(6, 16)
    base = g(m, a, 3)
    other = m.clone()
    other[4] += torch.randn(16, 5, 4)  # a frame of the second clip
    out = g(other, a, 3)
    torch.testing.assert_close(out[:3], base[:3])  # the first clip does not see it
    assert not torch.allclose(out[3], base[3])  # the other frames of its clip do
    assert torch.allclose(out.norm(dim=1), torch.ones(6, 5, 4), atol=1e-5)  # L2-normalised per cell


def test_cmpc_v_word_types_and_preset():
    from ssrvg_ext.models.cmpc import WordTypes

    wt = WordTypes(16, action=True)
    words, pad = torch.randn(2, 7, 16), torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    p, q_ea, s, a = wt(words, pad)
    assert p.shape == (2, 7, 5) and a.shape == (2, 16) and float(p[1, 5:].detach().abs().sum()) == 0.0
    assert WordTypes(16)(words, pad)[3] is None  # CMPC on images: four types, no action vector
    cfg, model, _, terms = preset_step("cmpc_video")
    assert cfg["model"]["cmpc"]["video"] and cfg["model"]["temporal"]["layers"] == 0
    terms["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cmpc.temporal.parameters())
    with pytest.raises(ValueError, match="perception"):
        build_model(load_config(os.path.join(ROOT, "configs/tiny_video.yaml"),
                                ["model.cmpc.video=true", "model.cmpc.exchange_rounds=1"]), vocab_size=50)
