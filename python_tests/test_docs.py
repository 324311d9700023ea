"""Every Python block of the README and of docs/*.md runs as written, in a folder that holds what
the blocks name: a checkpoint of the tiny image preset at runs/tiny/best.pth and of the video
preset at runs/tiny_video/best.pth (untrained, as ssrvg-train writes them), photos, video frames."""

import glob
import os
import re
import textwrap

import pytest
import torch
from PIL import Image

from ssrvg_ext.config import load_config
from ssrvg_ext.data import WordTokenizer
from ssrvg_ext.engine import checkpoint
from ssrvg_ext.engine.data import tokenizer_state
from ssrvg_ext.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
SMALL = ["model.d_model=32", "model.mask_dim=16", "model.text.hidden=32", "model.text.layers=1", "model.fusion.layers=1",
         "model.fusion.ffn=32", "model.decoder.layers=2", "model.decoder.ffn=32", "data.input_size=64"]


def python_blocks():
    """(file:line, code) of every ```python block (indented ones too, e.g. inside a list)."""
    out = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        text = open(path).read()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{os.path.relpath(path, ROOT)}:{line}", textwrap.dedent(m.group("code"))))
    return out


BLOCKS = python_blocks()


def save_checkpoint(config: str, path: str, texts: list[str], extra=()):
    cfg = load_config(os.path.join(ROOT, "configs", config), SMALL + list(extra))
    tok = WordTokenizer.train(texts, cfg["data"]["max_len"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=tok.vocab_size, mask_token_id=tok.mask_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg, "tokenizer": tokenizer_state(tok),
                            "aux_classes": None, "ema": None, "epoch": 0, "step": 0}, path)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    texts = ["the dog on the left", "the red car", "the tallest man", "the square moving to the left"]
    save_checkpoint("tiny_synthetic.yaml", str(d / "runs" / "tiny" / "best.pth"), texts)
    save_checkpoint("tiny_video.yaml", str(d / "runs" / "tiny_video" / "best.pth"), texts,
                    ["model.temporal.layers=1", "model.temporal.ffn=32", "data.clip_len=4"])
    g = torch.Generator().manual_seed(0)

    def picture(path, w, h):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)
    for name, (w, h) in {"photo.jpg": (120, 90), "a.jpg": (80, 60), "b.jpg": (64, 96)}.items():
        picture(str(d / name), w, h)
    for t in range(6):
        picture(str(d / "data" / "synthetic_video" / "valid" / "JPEGImages" / "v0" / f"{t:05d}.jpg"), 64, 64)
    return d


def test_the_docs_have_python_blocks():
    where = {w.split(":")[0] for w, _ in BLOCKS}
    assert {"README.md", "docs/video.md", "docs/design.md"} <= where


@pytest.mark.parametrize("where,code", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_python_block_runs_as_written(where, code, sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})
