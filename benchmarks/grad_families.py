"""Which losses drive the shared trunk: the weighted gradient of each loss family, per preset.

For a preset (a config, overrides after commas as in ablate.py) on the embedded dataset: the model
as the trainer builds it (optionally from a checkpoint), a few training batches, and for each family
of weighted loss terms the gradient of its sum with respect to the parameters every method shares
(backbone, text encoder, fusion encoder, query decoder). Printed per family: the gradient's norm, its
share of the summed norms, and its cosine with the box family's gradient (negative: the family pulls
the shared weights against the box losses). Families: box (every layer's L1 / GIoU, the proposals),
mask (every mask term, coarse and CMPC's per-level ones included), and each other term on its own (object
labels, mask grounding, alignment, ...).

    python benchmarks/grad_families.py configs/tiny_synthetic.yaml configs/methods/all.yaml [--batches 2]
        [--checkpoint runs/x/last.pth (one preset)] [--data data/synthetic]
"""

import argparse
import os
import sys

import torch

SHARED = ("backbone", "text", "fusion", "decoder")  # the model's children every preset has


def family(term: str) -> str:
    if term.startswith(("l1", "giou", "prop_")):
        return "box"
    if term.startswith(("mask_", "cmpc_")):  # CMPC's per-level masks too
        return "mask"
    return term


def families(weight_dict: dict, terms: dict) -> dict:
    """{family: the weighted sum of its terms present in terms}."""
    out = {}
    for k, w in weight_dict.items():
        if w and k in terms:
            f = family(k)
            out[f] = out.get(f, 0.0) + w * terms[k]
    return out


def measure(spec: str, data: str, batches: int, checkpoint: str | None) -> dict:
    from ssrvg_ext.config import load_config
    from ssrvg_ext.engine.data import (label_classes, load_records, load_train_instances, make_dataset, make_loader,
                                       make_tokenizer, to_device)
    from ssrvg_ext.models import build_criterion, build_model

    variant, *sets = spec.split(",")
    cfg = load_config(variant, [f"data.ann_dir={data}", f"data.image_dir={os.path.join(data, 'images')}", *sets])
    recs = load_records(cfg, cfg["data"]["train_split"])
    instances = load_train_instances(cfg, recs)
    aux = label_classes(instances)
    tok = make_tokenizer(cfg, [r.text for r in recs])
    torch.manual_seed(cfg["train"]["seed"])
    model = build_model(cfg, vocab_size=tok.vocab_size, aux_classes=aux, mask_token_id=tok.mask_id)
    if checkpoint:
        from ssrvg_ext.engine import checkpoint as ck

        model.load_state_dict(ck.load(checkpoint)["model"])
    crit = build_criterion(cfg, aux)
    shared = [p for name, child in model.named_children() if name in SHARED for p in child.parameters() if p.requires_grad]
    loader, _ = make_loader(cfg, make_dataset(cfg, recs, train=True, instances=instances), tok, train=True)
    grads: dict[str, torch.Tensor] = {}
    model.train()
    for i, batch in enumerate(loader):
        if i == batches:
            break
        batch = to_device(batch, torch.device("cpu"))
        out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"), batch.get("masks"))
        for f, v in families(crit.weight_dict, crit(out, batch)).items():
            g = torch.autograd.grad(v, shared, retain_graph=True, allow_unused=True)
            flat = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, shared)])
            grads[f] = grads.get(f, 0) + flat / batches
    return grads


def report(name: str, grads: dict) -> str:
    norms = {f: float(g.norm()) for f, g in grads.items()}
    total = sum(norms.values()) or 1.0
    box = grads.get("box")
    lines = [f"{name}", "| family | gradient norm | share | cosine with box |", "|---|---:|---:|---:|"]
    for f, g in sorted(grads.items(), key=lambda kv: -norms[kv[0]]):
        cos = float(torch.nn.functional.cosine_similarity(g, box, 0)) if box is not None else float("nan")
        lines.append(f"| {f} | {norms[f]:.4g} | {norms[f] / total:.1%} | {cos:+.3f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("presets", nargs="+")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--checkpoint", default=None, help="weights to start from (one preset only)")
    a = p.parse_args()
    if a.checkpoint and len(a.presets) != 1:
        p.error("--checkpoint goes with exactly one preset")
    if not os.path.isfile(os.path.join(a.data, "instances.json")):
        sys.exit(f"no dataset at {a.data}: make data (or ssrvg-make-synthetic --out {a.data})")
    for spec in a.presets:
        print(report(spec, measure(spec, a.data, a.batches, a.checkpoint)), flush=True)


if __name__ == "__main__":
    main()
