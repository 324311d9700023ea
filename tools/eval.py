"""Evaluate a checkpoint: REC Acc@0.5, RES mIoU / oIoU / Prec@0.5:0.9 at original resolution.

    python tools/eval.py --checkpoint runs/tiny/best.pth [--config CFG] --split val [--shuffle-text] [--out metrics.json]

Writes a JSON with the metrics and every expression's prediction (box + RLE mask).
--shuffle-text pairs each image with another expression of the split: a model that uses the
expression must score far lower then.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from ssrvg_ext.config import load_config  # noqa: E402
from ssrvg_ext.engine import checkpoint, dist  # noqa: E402
from ssrvg_ext.engine.loops import (amp_setup, evaluate, load_records, make_dataset, make_loader,  # noqa: E402
                                   make_tokenizer)
from ssrvg_ext.models import build_model  # noqa: E402


def run(ckpt_path, split, config=None, overrides=(), shuffle_text=False, out=None, ema=False) -> dict:
    _, _, device = dist.init_from_env()
    ckpt = checkpoint.load(ckpt_path)
    cfg = load_config(config, list(overrides)) if config else ckpt["config"]
    # the label classes came from the training data, not from a config file: keep the checkpoint's
    cfg["model"].setdefault("aux_classes", ckpt["config"]["model"].get("aux_classes"))
    tok = make_tokenizer(cfg, state=ckpt["tokenizer"])
    model = build_model(cfg, vocab_size=tok.vocab_size)
    model.load_state_dict(ckpt["ema"] if ema and ckpt.get("ema") else ckpt["model"])
    model.to(device)
    loader, _ = make_loader(cfg, make_dataset(cfg, load_records(cfg, split, shuffle_text), train=False), tok, train=False)
    metrics, preds = evaluate(model, loader, device, amp_setup(cfg, device)[0], desc=f"eval {split}")
    if dist.is_main():
        print(json.dumps({"split": split, "shuffle_text": shuffle_text, **metrics}, indent=1))
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump({"split": split, "checkpoint": ckpt_path, "shuffle_text": shuffle_text, "metrics": metrics,
                           "predictions": preds}, f)
    dist.cleanup()
    return metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", default=None, help="default: the config stored in the checkpoint")
    p.add_argument("--split", default="val")
    p.add_argument("--shuffle-text", action="store_true")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights when the checkpoint has them")
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    with torch.inference_mode():
        run(a.checkpoint, a.split, a.config, a.overrides, a.shuffle_text, a.out, a.ema)


if __name__ == "__main__":
    main()
