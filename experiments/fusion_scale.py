"""How much SgMg's spectrum-guided fusion scales the visual levels, here and in a stand-in of SgMg's module.

1. This library's `SpectrumFusion` on one training batch of the embedded set: the RMS of each level
   before and after it, the RMS of the fusion encoder's positions (what the encoder adds to the
   levels next), and how alike the expression's words are (mean pairwise cosine of the non-padding
   words). At initialisation, or from a checkpoint (does training restore the scale?).
2. SgMg's fusion product as its code builds it (a GroupNorm-ed visual map times
   nn.MultiheadAttention(256, 8) over LayerNorm-ed words; default initialisation) on random inputs,
   for words that are more or less alike: the same measure for the original's design.

    python experiments/fusion_scale.py [--config configs/tiny_synthetic.yaml,model.fusion.spectrum=true]
        [--checkpoint runs/claims/tiny_synthetic+model.fusion.spectrum-true_s0/last.pth] [--data data/synthetic]
"""

import argparse
import os

import torch
from torch import nn


def rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def word_similarity(words: torch.Tensor, pad: torch.Tensor) -> float:
    """Mean cosine between two different real words of an expression, over the batch."""
    vals = []
    for w, p in zip(words, pad):
        w = nn.functional.normalize(w[~p].float(), dim=-1)
        n = w.shape[0]
        if n > 1:
            c = w @ w.T
            vals.append(float((c.sum() - c.diagonal().sum()) / (n * (n - 1))))
    return sum(vals) / max(len(vals), 1)


def ours(spec: str, data: str, checkpoint: str | None) -> None:
    from ssrvg_ext.config import load_config
    from ssrvg_ext.engine.data import (label_classes, load_records, load_train_instances, make_dataset, make_loader,
                                       make_tokenizer, to_device)
    from ssrvg_ext.models import build_model

    variant, *sets = spec.split(",")
    cfg = load_config(variant, [f"data.ann_dir={data}", f"data.image_dir={os.path.join(data, 'images')}", *sets])
    recs = load_records(cfg, cfg["data"]["train_split"])
    instances = load_train_instances(cfg, recs)
    tok = make_tokenizer(cfg, [r.text for r in recs])
    torch.manual_seed(cfg["train"]["seed"])
    model = build_model(cfg, vocab_size=tok.vocab_size, aux_classes=label_classes(instances), mask_token_id=tok.mask_id)
    if checkpoint:
        from ssrvg_ext.engine import checkpoint as ck

        model.load_state_dict(ck.load(checkpoint)["model"])
    if model.fusion.spectrum is None:
        raise SystemExit(f"{spec}: the spectrum fusion is off (set model.fusion.spectrum=true)")
    seen = {}
    model.fusion.spectrum.register_forward_hook(lambda m, args, out: seen.update(maps=args[0], words=args[1],
                                                                                 pad=args[2], out=out))
    model.fusion.register_forward_hook(lambda m, args, out: seen.update(pos=args[1]))
    loader, _ = make_loader(cfg, make_dataset(cfg, recs, train=True, instances=instances), tok, train=True)
    batch = to_device(next(iter(loader)), torch.device("cpu"))
    model.eval()  # no dropout: the measure of the weights, not of one dropout draw
    with torch.no_grad():
        model(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"), batch.get("masks"))
    print(f"this library, {spec}, {'checkpoint ' + checkpoint if checkpoint else 'initialisation (train.seed)'}:")
    print(f"  words' mean pairwise cosine {word_similarity(seen['words'], seen['pad']):.2f}; "
          f"positions' RMS {rms(seen['pos']):.2f}")
    for i, (a, b) in enumerate(zip(seen["maps"], seen["out"])):
        print(f"  level {i} ({a.shape[-2]}x{a.shape[-1]}): RMS {rms(a):.3f} -> {rms(b):.3f} (x {rms(b) / rms(a):.2f})")


def sgmg_standin(similarities=(0.0, 0.5, 0.9), words: int = 10, seed: int = 0) -> None:
    torch.manual_seed(seed)
    d = 256
    mha = nn.MultiheadAttention(d, 8)
    with torch.no_grad():
        visual = nn.GroupNorm(32, d)(torch.randn(2, d, 20, 20)).flatten(2).permute(2, 0, 1)  # (HW, B, d)
    print(f"SgMg's product (GroupNorm-ed map x nn.MultiheadAttention({d}, 8) over LayerNorm-ed words), random inputs:")
    for s in similarities:
        shared = torch.randn(1, 2, d)
        with torch.no_grad():
            text = nn.LayerNorm(d)(s ** 0.5 * shared + (1 - s) ** 0.5 * torch.randn(words, 2, d))
            fused = visual * mha(visual, text, text)[0]
        cos = word_similarity(text.transpose(0, 1), torch.zeros(2, words, dtype=torch.bool))
        print(f"  words' mean pairwise cosine {cos:.2f}: RMS {rms(visual):.3f} -> {rms(fused):.3f} "
              f"(x {rms(fused) / rms(visual):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/tiny_synthetic.yaml,model.fusion.spectrum=true")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data", default="data/synthetic")
    a = ap.parse_args()
    ours(a.config, a.data, a.checkpoint)
    sgmg_standin()


if __name__ == "__main__":
    main()
