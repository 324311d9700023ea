"""Predictor (ssrvg_ext.Predictor), the ssrvg-predict tool, and torch.export of the model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ssrvg_ext
from ssrvg_ext.config import load_config
from ssrvg_ext.data import WordTokenizer
from ssrvg_ext.testing import random_batch
from ssrvg_ext.engine import checkpoint
from ssrvg_ext.engine.data import tokenizer_state
from ssrvg_ext.models import build_model
from ssrvg_ext.ops import rle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["the red circle", "the small blue square on the left", "the green star"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint of the tiny preset's untrained model, as ssrvg-train writes them."""
    cfg = load_config(os.path.join(ROOT, "configs/tiny_synthetic.yaml"))
    tok = WordTokenizer.train(TEXTS, cfg["data"]["max_len"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=tok.vocab_size)
    path = str(tmp_path_factory.mktemp("ckpt") / "best.pth")
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg, "tokenizer": tokenizer_state(tok),
                            "aux_classes": None, "ema": None, "epoch": 0, "step": 0}, path)
    return path


def photo(rng, w=150, h=100) -> Image.Image:
    return Image.fromarray((torch.rand(h, w, 3, generator=rng) * 255).to(torch.uint8).numpy())


def test_one_image_one_expression(ckpt, rng):
    img = photo(rng)
    [r] = ssrvg_ext.Predictor(ckpt, device="cpu").predict(img, "the red circle")
    x0, y0, x1, y1 = r["box"]
    assert 0 <= x0 <= x1 <= 150 and 0 <= y0 <= y1 <= 100
    assert r["mask"].shape == (100, 150) and r["mask"].dtype == torch.uint8
    assert 0 < r["score"] < 1 and r["text"] == "the red circle"


def test_every_image_kind_gives_the_same_answer(ckpt, rng, tmp_path):
    img = photo(rng, 90, 120)
    path = str(tmp_path / "p.png")
    img.save(path)
    arr = np.array(img)
    p = ssrvg_ext.Predictor(ckpt, device="cpu")
    results = [p.predict(x, "the green star")[0] for x in (img, path, arr, torch.from_numpy(arr).permute(2, 0, 1))]
    for r in results[1:]:
        assert r["box"] == results[0]["box"] and torch.equal(r["mask"], results[0]["mask"])


def test_batches_pairs_and_rle(ckpt, rng):
    imgs = [photo(rng, 80 + 10 * i, 60 + 20 * i) for i in range(3)]
    one = ssrvg_ext.Predictor(ckpt, device="cpu", batch_size=16).predict(imgs, TEXTS)
    small = ssrvg_ext.Predictor(ckpt, device="cpu", batch_size=2).predict(imgs, TEXTS, as_rle=True)
    assert [r["text"] for r in one] == TEXTS
    for a, b, img in zip(one, small, imgs):
        assert a["mask"].shape == (img.height, img.width)
        assert b["mask"]["size"] == [img.height, img.width]
        assert torch.equal(rle.decode([b["mask"]])[0], a["mask"])
        np.testing.assert_allclose(a["box"], b["box"], atol=0.02)
    several = ssrvg_ext.Predictor(ckpt, device="cpu").predict(imgs[0], TEXTS)  # one image, three expressions
    assert len(several) == 3 and several[0]["box"] == one[0]["box"]


def test_bad_calls_raise(ckpt, rng):
    p = ssrvg_ext.Predictor(ckpt, device="cpu")
    with pytest.raises(ValueError, match="2 images but 3 expressions"):
        p.predict([photo(rng), photo(rng)], TEXTS)
    with pytest.raises(ValueError, match="empty"):
        p.predict(photo(rng), "  ")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        p.predict(np.zeros((10, 10), dtype=np.uint8), "x")
    with pytest.raises(ValueError, match="amp"):
        ssrvg_ext.Predictor(ckpt, device="cpu", amp="int8")


def test_predict_tool_jsonl(ckpt, rng, tmp_path):
    for i in range(2):
        photo(rng, 70, 50).save(tmp_path / f"im{i}.jpg")
    with open(tmp_path / "q.jsonl", "w") as f:
        f.write(json.dumps({"image": "im0.jpg", "text": "the red circle"}) + "\n\n")
        f.write(json.dumps({"image": "im1.jpg", "text": "the green star"}) + "\n")
    out = str(tmp_path / "res.json")
    r = subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.predict", "--checkpoint", ckpt, "--jsonl",
                        str(tmp_path / "q.jsonl"), "--out", out, "--device", "cpu"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(out))
    assert [x["text"] for x in res] == ["the red circle", "the green star"]
    assert all(x["mask"]["size"] == [50, 70] and isinstance(x["mask"]["counts"], str) for x in res)
    with open(tmp_path / "bad.jsonl", "w") as f:
        f.write('{"img": "im0.jpg"}\n')
    r = subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.predict", "--checkpoint", ckpt, "--jsonl",
                        str(tmp_path / "bad.jsonl"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "bad.jsonl:1" in r.stderr


def test_torch_export_matches_eager():
    """torch.export traces the whole model, custom ops included (their fake kernels); the exported
    program gives the eager outputs."""
    cfg = load_config(os.path.join(ROOT, "configs/tiny_synthetic.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=50).eval()
    b = random_batch(2, cfg["data"]["input_size"], cfg["data"]["max_len"], 50, "cpu")
    args = (b["images"], b["text_ids"], b["text_mask"])
    with torch.no_grad():
        eager = model(*args)
    program = torch.export.export(model, args)
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("ssrvg.ms_deform_attn" in n for n in names), "the custom op should stay one node"
    out = program.module()(*args)
    for k in ("boxes", "aux_boxes", "mask_logits", "proposal_scores"):
        torch.testing.assert_close(out[k], eager[k], rtol=1e-5, atol=1e-5)
