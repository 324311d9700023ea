"""The embedded video dataset: Ref-YouTube-VOS layout read by the project's reader, expressions
that mean what they say (parsed back from the text and checked against motions re-derived from the
written annotation PNGs), motion expressions that need time, determinism."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from ssrvg_ext.data.readers.rvos import load_ytvos, read_palette_mask
from ssrvg_ext.data.synthetic.images import COLORS, SHAPES, SIZES
from ssrvg_ext.data.synthetic.videos import PHRASES, generate, holds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synv"))
    counts = generate(out, clips=40, eval_clips=8, seed=3)
    return out, counts


def parse(text):
    """The program a rendered expression says: appearance words and a motion phrase."""
    words = text.split()
    assert words[0] == "the"
    motion = None
    for m, phrases in PHRASES.items():
        for ph in phrases:
            if text.endswith(" " + ph):
                motion, text = m, text[: -len(ph) - 1]
    desc = {}
    for w in text.split()[1:]:
        if w in SHAPES:
            desc["shape"] = w
        elif w in COLORS:
            desc["color"] = w
        elif w in SIZES:
            desc["size"] = w
        else:
            assert w == "shape", text
    return desc, motion


def test_layout_reader_and_expressions_pick_one_object(data):
    out, counts = data
    kinds = {"appearance": 0, "motion": 0}
    for split in ("train", "valid", "testB"):
        recs = load_ytvos(out, split, annotated=True)
        assert recs, split
        meta = json.load(open(os.path.join(out, split, "meta.json")))["videos"]
        mexp = json.load(open(os.path.join(out, "meta_expressions", split, "meta_expressions.json")))["videos"]
        for r in recs:
            objs = meta[r.video]["objects"]
            masks = np.stack([np.asarray(Image.open(p)) for p in r.anno_paths])
            assert np.array_equal(read_palette_mask(r.anno_paths[0], r.obj_id), masks[0] == r.obj_id)
            derived = {}
            for oid, o in objs.items():  # motions re-derived from the PNGs' visible areas and the centres
                vis = (masks == int(oid)).reshape(len(masks), -1).sum(1).astype(float)
                derived[oid] = {m for m in PHRASES if holds(m, np.array(o["centers"]), vis, max(vis.max(), 1.0))}
            desc, motion = parse(r.text)
            fits = [oid for oid, o in objs.items()
                    if all(o["category" if k == "shape" else k] == v for k, v in desc.items())
                    and (motion is None or motion in set(o["holds"]))]
            assert fits == [str(r.obj_id)], (r.video, r.text, fits)
            assert motion is None or motion in derived[str(r.obj_id)], (r.video, r.text)
            kind = mexp[r.video]["expressions"][r.exp_id]["kind"]
            by_look = [oid for oid, o in objs.items()
                       if all(o["category" if k == "shape" else k] == v for k, v in desc.items())]
            assert (kind == "motion") == (motion is not None and len(by_look) > 1)
            kinds[kind] += 1
            assert (masks == r.obj_id).any()  # the referent is visible in some frame
    assert kinds["motion"] > 10 and kinds["appearance"] > 5
    assert sum(counts.values()) == sum(kinds.values())


def test_deterministic(tmp_path, data):
    out, _ = data
    again = str(tmp_path / "again")
    generate(again, clips=40, eval_clips=8, seed=3)

    def digest(root):
        h = hashlib.sha256()
        for dirpath, _, files in sorted(os.walk(root)):
            for f in sorted(files):
                h.update(os.path.relpath(os.path.join(dirpath, f), root).encode())
                h.update(open(os.path.join(dirpath, f), "rb").read())
        return h.hexdigest()
    assert digest(out) == digest(again)
