"""How often does the training crop change what an expression refers to? (synthetic set only)

A crop that keeps only the referent's box can cut away an object that the expression counts or
relates to: "the second square from the top" loses the top square, "the circle left of the green
square" loses its landmark. This script replays the training crop (`RandomCropKeepBox`, both modes)
on the synthetic training split, re-reads each expression as a program of the generator's grammar
and resolves it on the objects whose centre is still inside the crop (the referent always stays).
It prints, per expression kind, the share of crops that cut an object and the share whose
expression no longer resolves to the referent (a wrong training label).

    python experiments/crop_label_noise.py [--data data/synthetic] [--crops 5]
"""

import argparse
import json
import os
import random


from ssrvg_ext.data import RefDataset, load_refer
from ssrvg_ext.data.readers.refer import load_instance_labels
from ssrvg_ext.data.synthetic.images import COLORS, SHAPES, SIZES, Obj, resolve
from ssrvg_ext.data.transforms import RandomCropKeepBox

_SUP = {"leftmost": "left", "rightmost": "right", "topmost": "top", "bottommost": "bottom"}
_RELS = ("left of", "right of", "above", "below")


def _desc(words: list[str]) -> dict:
    keys = {**{w: "size" for w in SIZES}, **{w: "color" for w in COLORS}, **{w: "shape" for w in SHAPES}}
    return {keys[w]: w for w in words if w in keys}


def parse(text: str) -> dict:
    """The program of a synthetic expression (the inverse of synthetic.render)."""
    for rel in _RELS:
        if f" {rel} " in text:
            subject, landmark = text.split(f" {rel} ")
            return {"kind": "rel", "desc": _desc(subject.split()), "rel": rel, "landmark": _desc(landmark.split())}
    w = text.split()
    if w[1] in _SUP:
        return {"kind": "ordinal", "desc": _desc(w[2:]), "side": _SUP[w[1]], "ordinal": "first"}
    if "from" in w:
        return {"kind": "ordinal", "desc": _desc(w[2:w.index("from")]), "side": w[-1], "ordinal": w[1]}
    return {"kind": "attr", "desc": _desc(w[1:])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--crops", type=int, default=5, help="random crops per expression")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with open(os.path.join(args.data, "instances.json")) as f:
        inst = json.load(f)
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    by_image = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    recs = load_refer(args.data, os.path.join(args.data, "images"), splits=["train"])
    ds = RefDataset(recs, lambda s: s, instances=load_instance_labels(args.data, []))
    random.seed(args.seed)
    stats = {}  # (mode, kind) -> [crops, crops cutting an object, wrong labels]
    for i, r in enumerate(recs):
        s = ds[i]
        objs = [Obj(cats[a["category_id"]], a["attributes"]["color"], a["attributes"]["size"],
                    *a["attributes"]["center"], mask=None) for a in by_image[r.image_id]]
        target = [a["id"] for a in by_image[r.image_id]].index(r.ann_id)
        prog = parse(r.text)
        if resolve(prog, objs) != [target]:
            raise SystemExit(f"could not read {r.text!r} as the generator's grammar")
        for keep in (False, True):
            crop = RandomCropKeepBox(p=1.0, keep_objects=keep)
            for _ in range(args.crops):
                c = crop(s)
                left, top = (s["box"][:2] - c["box"][:2]).tolist()
                h, w = c["image"].shape[-2:]
                kept = [j for j, o in enumerate(objs) if j == target or (left <= o.cx < left + w and top <= o.cy < top + h)]
                wrong = resolve(prog, [objs[j] for j in kept]) != [kept.index(target)]
                st = stats.setdefault(("objects" if keep else "referent", prog["kind"]), [0, 0, 0])
                st[0] += 1
                st[1] += len(kept) < len(objs)
                st[2] += wrong
    print(f"{len(recs)} training expressions of {args.data}, {args.crops} crops each")
    print("| crop keeps | expression kind | share of expressions | crops cutting an object | wrong label |")
    print("|---|---|---:|---:|---:|")
    for mode in ("referent", "objects"):
        rows = {k: v for (m, k), v in stats.items() if m == mode}
        n = sum(v[0] for v in rows.values())
        for kind, (c, cut, wrong) in sorted(rows.items()):
            print(f"| {mode} | {kind} | {c / n:.1%} | {cut / c:.1%} | {wrong / c:.1%} |")
        print(f"| {mode} | all | 100% | {sum(v[1] for v in rows.values()) / n:.1%} | "
              f"{sum(v[2] for v in rows.values()) / n:.1%} |")


if __name__ == "__main__":
    main()
