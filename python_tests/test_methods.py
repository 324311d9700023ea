"""The reference methods' components (docs/methods.md): SegVG's triple alignment, MagNet's
cross-modal alignment module, mask grounding and alignment loss, SgMg's spectrum fusion and
segment-and-optimise head, CMPC's word types, entity perception, relation graph and feature
exchange -- alone and together, off = today's model, formulas by hand, the backbone stage hooks on
timm models of both layouts."""

import copy
import glob
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ssrvg_ext.config import load_config, merge
from ssrvg_ext.models import build_criterion, build_model
from ssrvg_ext.testing import random_batch
from ssrvg_ext.models.alignment_loss import alignment_loss
from ssrvg_ext.models.criterion import LossContext
from ssrvg_ext.models.grounding import mask_grounding_loss, mask_tokens

from test_model import batch_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/tiny_synthetic.yaml"
COMPONENTS = {
    "triple_alignment": {"model": {"align": {"triple": [16, 32]}}},
    "triple_fusion": {"model": {"align": {"triple_fusion": True}}},
    "cam_words": {"model": {"align": {"cam": [4, 8, 16], "cam_words": True}}},
    "cam": {"model": {"align": {"cam": [4, 8, 16, 32]}}},
    "mask_grounding": {"model": {"mask_grounding": {"enabled": True, "ratio": 0.5}}},
    "alignment_loss": {"loss": {"align": {"p2p": 1.0, "p2t": 1.0}}},
    "p2p_only": {"loss": {"align": {"p2p": 1.0}}},
    "spectrum_fusion": {"model": {"fusion": {"spectrum": True}}},
    "segment_optimizer": {"model": {"segment_optimizer": True}},
    "cmpc_perception": {"model": {"cmpc": {"perception": True}}},
    "cmpc_graph": {"model": {"cmpc": {"perception": True, "graph_steps": 2}}},
    "cmpc_exchange": {"model": {"cmpc": {"exchange_rounds": 2}}},
}
ALL = {}
for name_, sw in COMPONENTS.items():
    if name_ != "triple_fusion":  # the other placement of triple alignment: one of the two at a time
        ALL = merge(ALL, sw)
COMPONENTS["all"] = ALL
NEW = ("align.", "fusion_align.", "grounding.", "cal_text.", "fusion.spectrum.", "cmpc.", "mask_head.block")  # what they add


def build(switches, seed=0):
    cfg = merge(load_config(TINY), switches)
    torch.manual_seed(seed)
    return cfg, build_model(cfg, vocab_size=40, mask_token_id=1), build_criterion(cfg)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_component_trains_and_evaluates(name):
    """Training forward + backward: finite losses, the component's terms logged, every parameter
    (the new ones included) receives a gradient; eval mode adds no training output."""
    cfg, model, crit = build(COMPONENTS[name])
    batch = batch_for(cfg)
    out = model.train()(batch["images"], batch["text_ids"], batch["text_mask"], None, batch["masks"])
    losses = crit(out, batch)
    coarse = {"mask_dice_coarse", "mask_bce_coarse"}
    expect = {"mask_grounding": {"mg"}, "alignment_loss": {"cal_p2p", "cal_p2t"}, "p2p_only": {"cal_p2p"},
              "segment_optimizer": coarse, "all": {"mg", "cal_p2p", "cal_p2t"} | coarse}.get(name, set())
    assert expect <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    assert ("cal_p2t" in losses) == ("p2t" in str(expect))
    losses["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert any(n.startswith(NEW) for n, _ in model.named_parameters()) == (name != "p2p_only")
    with torch.no_grad():
        ev = model.eval()(batch["images"], batch["text_ids"], batch["text_mask"])
    assert not {"mg_logits", "mg_targets", "cal_pixels", "cal_text", "aux_mask_logits", "coarse_mask_logits"} & set(ev)
    s = cfg["data"]["input_size"]
    # SgMg's refined mask is at stride 1, and so is every mask the guided upsampling (mask_refine) brings to the input
    stride = 1 if cfg["model"]["segment_optimizer"] or cfg["model"]["mask_refine"]["enabled"] else 4
    assert ev["boxes"].shape == (4, 4) and ev["mask_logits"].shape == (4, s // stride, s // stride)


def test_switched_off_is_todays_model():
    """The base config (every component off) and the same keys written out as off: the same
    parameters and, in training mode with the masks given, the same outputs and loss terms."""
    off = {"model": {"align": {"triple": [], "cam": []}, "mask_grounding": {"enabled": False},
                     "fusion": {"spectrum": False}, "segment_optimizer": False,
                     "cmpc": {"perception": False, "graph_steps": 0, "exchange_rounds": 0}},
           "loss": {"align": {"p2p": 0.0, "p2t": 0.0}}}
    cfg, a, crit = build({})
    _, b, crit_b = build(off)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(k.startswith(NEW) for k in sa)
    batch = batch_for(cfg)
    torch.manual_seed(1)
    oa = a.train()(batch["images"], batch["text_ids"], batch["text_mask"])  # as before: no masks given
    torch.manual_seed(1)
    ob = b.train()(batch["images"], batch["text_ids"], batch["text_mask"], None, batch["masks"])
    assert set(oa) == set(ob) and all(torch.equal(oa[k], ob[k]) for k in oa)
    la, lb = crit(oa, batch), crit_b(ob, batch)
    assert set(la) == set(lb) and all(torch.equal(la[k], lb[k]) for k in la)


def test_triple_alignment_moves_queries_words_and_pixels():
    """The aligned queries reach the decoder, the aligned words the fusion encoder, the aligned
    pixels the next stage: each changes the output; the query start is used at every forward."""
    cfg, model, _ = build(COMPONENTS["triple_alignment"])
    model.eval()
    batch = batch_for(cfg)
    args = (batch["images"], batch["text_ids"], batch["text_mask"])
    with torch.no_grad():
        base = model(*args)["boxes"]
        for name in ("out.0", "out.1", "out.2"):  # queries, words, pixels of the stride-16 stage
            lin = model.align.triple["16"].get_submodule(name)
            saved = lin.weight.clone()
            lin.weight.mul_(3.0)
            assert not torch.allclose(model(*args)["boxes"], base), name
            lin.weight.copy_(saved)
        torch.testing.assert_close(model(*args)["boxes"], base, rtol=0, atol=0)


def test_triple_alignment_interleaved_with_the_fusion_encoder():
    """SegVG's placement (the SegVG preset): one triple alignment after every fusion-encoder layer, on
    the queries, the fused words and the stride-32 tokens; the aligned queries reach the decoder,
    the words and the tokens the next layers; both placements at once are an error."""
    cfg = load_config("configs/methods/segvg.yaml", ["data.input_size=64"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=40).eval()
    assert model.align is None and model.hook_parts["fusion_layer"] == ["fusion_align"]
    assert len(model.fusion_align.layers) == cfg["model"]["fusion"]["layers"]
    batch = batch_for(cfg)
    args = (batch["images"], batch["text_ids"], batch["text_mask"])
    with torch.no_grad():
        for head in model.decoder.box_heads:  # zero at the start: the box would be the chosen proposal's
            head[-1].weight.normal_(0, 0.1)
        base = model(*args)["boxes"]
        for name in ("query_proj", "layers.0.out.1", "layers.0.out.2"):  # queries, words, tokens
            lin = model.fusion_align.get_submodule(name)
            saved = lin.weight.clone()
            lin.weight.mul_(3.0)
            assert not torch.allclose(model(*args)["boxes"], base), name
            lin.weight.copy_(saved)
        torch.testing.assert_close(model(*args)["boxes"], base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="choose one"):
        build_model(merge(cfg, {"model": {"align": {"triple": [16]}}}), vocab_size=40)


def test_triple_alignment_is_one_joint_softmax():
    """TripleAlignment equals a hand-written single attention over the concatenated tokens, text
    padding excluded from the keys, the positions added before the Q / K projections (SegVG)."""
    from ssrvg_ext.models.align import TripleAlignment

    torch.manual_seed(0)
    d, c, h = 8, 6, 2
    m = TripleAlignment(d, c, h).double()
    q, w, p = torch.randn(2, 3, d).double(), torch.randn(2, 4, d).double(), torch.randn(2, 5, c).double()
    qpos, ppos = torch.randn(3, d).double(), torch.randn(5, c).double()
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    got = m(q, qpos, w, pad, p, ppos)
    proj = []
    for x, norm, qkv, pos in zip((q, w, p), m.norms, m.qkv, (qpos, None, ppos)):
        a, k, _ = qkv(norm(x) + (0 if pos is None else pos)).chunk(3, -1)
        v = qkv(norm(x)).chunk(3, -1)[2]
        proj.append((a, k, v))
    Q, K, V = (torch.cat([t[i] for t in proj], 1) for i in range(3))
    keep = torch.cat([torch.ones(2, 3, dtype=torch.bool), ~pad, torch.ones(2, 5, dtype=torch.bool)], 1)
    outs = []
    for head in range(h):
        sl = slice(head * d // h, (head + 1) * d // h)
        logits = Q[..., sl] @ K[..., sl].transpose(1, 2) / (d // h) ** 0.5
        outs.append(logits.masked_fill(~keep[:, None, :], float("-inf")).softmax(-1) @ V[..., sl])
    att = torch.cat(outs, -1).split([3, 4, 5], 1)
    for x, out, a, g in zip((q, w, p), m.out, att, got):
        torch.testing.assert_close(g, x + out(a))


@pytest.mark.parametrize("backbone,kwargs", [
    ("resnet18", {}),  # FeatureListNet, NCHW
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2, "embed_dim": 16, "depths": [1, 1, 1, 1],
                                      "num_heads": [1, 1, 1, 1]}),  # FeatureListNet with flattened names, NHWC
])
def test_stage_alignment_on_other_timm_backbones(backbone, kwargs):
    """The stage hooks find the stages of other features_only layouts; CAM and triple alignment
    change the features the model reads; a deep copy (EMA) computes the same as the original."""
    from ssrvg_ext.models.align import StageAlignment
    from ssrvg_ext.models.backbone import Backbone

    torch.manual_seed(0)
    bb = Backbone(backbone, 16, 16, pretrained=False, checkpoint=None, timm_kwargs=kwargs, stage_hooks=True).eval()
    align = StageAlignment(16, bb.stage_channels, 2, triple=[16, 32], cam=[4, 8, 16, 32], cam_pools=[1, 2, 3, 6],
                           num_queries=3).eval()
    images = torch.randn(2, 3, 64, 64)
    words, pad = torch.randn(2, 5, 16), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        f4, plain, _ = bb(images)
        state = align.begin(words, pad)
        g4, aligned, _ = bb(images, lambda i, x: align.stage(state, i, x))
        new_words, queries = align.end(state)
        copy_bb, copy_align = copy.deepcopy(bb), copy.deepcopy(align)
        state = copy_align.begin(words, pad)
        h4, again, _ = copy_bb(images, lambda i, x: copy_align.stage(state, i, x))
        copy_align.end(state)
    assert queries.shape == (2, 3, 16) and new_words.shape == words.shape and not torch.equal(new_words, words)
    for a, b in zip(g4 + aligned, f4 + plain):
        assert a.shape == b.shape and not torch.allclose(a, b)
    for a, b in zip(g4 + aligned, h4 + again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():  # the hooks do nothing outside an aligned forward
        torch.testing.assert_close(bb(images)[1][-1], plain[-1], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="stage_hooks"):
        Backbone(backbone, 16, 16, pretrained=False, checkpoint=None, timm_kwargs=kwargs)(images, lambda i, x: (x, x))


def test_mask_tokens_rule():
    """Only inner real tokens are chosen ([CLS], the last token and padding never); chosen tokens
    become the mask id with probability `replace`; about `ratio` of the inner tokens are chosen."""
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (400, 12))
    tm = torch.ones(400, 12, dtype=torch.bool)
    tm[::2, 8:] = False
    new, tgt = mask_tokens(ids, tm, mask_id=1, ratio=1.0, replace=1.0)
    inner = tm.clone()
    inner[:, 0] = False
    inner[::2, 7] = False
    inner[1::2, 11] = False
    assert torch.equal(tgt != -100, inner) and torch.equal(tgt[inner], ids[inner])
    assert torch.equal(new[inner], torch.ones_like(new[inner])) and torch.equal(new[~inner], ids[~inner])
    new, tgt = mask_tokens(ids, tm, mask_id=1, ratio=0.15, replace=0.9)
    chosen = tgt != -100
    assert not (chosen & ~inner).any()
    assert abs(chosen.sum().item() / inner.sum().item() - 0.15) < 0.02
    swapped = (new == 1) & chosen
    assert abs(swapped.sum().item() / chosen.sum().item() - 0.9) < 0.05
    assert torch.equal(new[chosen & ~swapped], ids[chosen & ~swapped])


def test_mask_grounding_loss_by_hand():
    _, _, crit = build(COMPONENTS["mask_grounding"])
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[-100, 3, -100, -100], [-100, 0, 6, -100]])
    want = sum(float(torch.logsumexp(logits[b, t], 0) - logits[b, t, k])
               for b, t, k in [(0, 1, 3), (1, 1, 0), (1, 2, 6)]) / 3
    assert crit.losses == ["boxes", "proposals", "mask_grounding", "masks"]
    assert abs(float(mask_grounding_loss(crit, {"mg_logits": logits, "mg_targets": targets}, {}, None)["mg"]) - want) < 1e-5
    none = mask_grounding_loss(crit, {"mg_logits": logits.requires_grad_(), "mg_targets": torch.full((2, 4), -100)}, {},
                               None)["mg"]
    none.backward()
    assert float(none.detach()) == 0 and torch.isfinite(logits.grad).all()


def test_alignment_loss_by_hand():
    """With every pixel drawn (points >= pixels), the pixel-to-text and pixel-to-pixel terms equal
    loops over the inside / outside pixels; a sample without outside pixels adds nothing."""
    _, _, crit = build(COMPONENTS["alignment_loss"])
    crit.loss_cfg["align"]["points"] = 100
    tau = crit.loss_cfg["align"]["temperature"]
    torch.manual_seed(0)
    pix, text = torch.randn(3, 5, 4, 4), torch.randn(3, 5)
    masks = torch.zeros(3, 8, 8, dtype=torch.uint8)
    masks[0, :4, :4] = 1  # 4 of 16 pixels inside
    masks[1, 2:8, 0:6] = 1  # 9 inside (pixels over half covered)
    masks[2] = 1  # no outside pixel
    valid = torch.ones(3, 8, 8, dtype=torch.bool)
    valid[1, :, 6:] = False  # the padding is neither inside nor outside
    terms = alignment_loss(crit, {"cal_pixels": pix, "cal_text": text}, {}, LossContext(3.0, None, masks, valid))
    e = F.normalize(pix.flatten(2).transpose(1, 2), dim=-1)
    t = F.normalize(text, dim=-1)
    p2t = p2p = 0.0
    for b in range(2):
        inside = F.adaptive_avg_pool2d(masks[b, None, None].float(), 4).flatten() > 0.5
        ok = F.adaptive_avg_pool2d(valid[b, None, None].float(), 4).flatten() > 0.5
        P, N = torch.nonzero(inside & ok).flatten().tolist(), torch.nonzero(~inside & ok).flatten().tolist()
        neg_t = torch.stack([e[b, n] @ t[b] / tau for n in N])
        p2t += sum(float(torch.logsumexp(torch.cat([(e[b, p] @ t[b] / tau)[None], neg_t]), 0) - e[b, p] @ t[b] / tau)
                   for p in P) / len(P)
        terms_pp = []
        for a in P:
            neg = torch.stack([e[b, a] @ e[b, n] / tau for n in N])
            for p in P:
                if p != a:
                    pos = e[b, a] @ e[b, p] / tau
                    terms_pp.append(float(torch.logsumexp(torch.cat([pos[None], neg]), 0) - pos))
        p2p += sum(terms_pp) / len(terms_pp)
    assert abs(float(terms["cal_p2t"]) - p2t / 3) < 1e-4
    assert abs(float(terms["cal_p2p"]) - p2p / 3) < 1e-4


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="exprs_per_image"):
        build_model(merge(load_config(TINY), merge(COMPONENTS["cam"], {"data": {"exprs_per_image": 2}})), vocab_size=40)
    with pytest.raises(ValueError, match="mask_token_id"):
        build_model(merge(load_config(TINY), COMPONENTS["mask_grounding"]), vocab_size=40)
    with pytest.raises(ValueError, match="model.align.triple"):
        build_model(merge(load_config(TINY), {"model": {"align": {"triple": [64]}}}), vocab_size=40)


def test_word_tokenizer_mask_id_is_unk():
    from ssrvg_ext.data.tokenizer import WordTokenizer

    tok = WordTokenizer.train(["the red square", "a blue circle"])
    assert tok.mask_id == tok.tok.token_to_id("[UNK]")
    assert tok.mask_id not in tok.encode(["the red square"])[0].tolist()[0]


@pytest.mark.parametrize("preset", sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "methods", "*.yaml"))
                                    if not p.endswith("_video.yaml")),  # (video presets: test_clip_queries.py)
                         ids=lambda p: os.path.basename(p))
def test_method_preset_trains_and_evaluates_through_the_tools(preset, tmp_path):
    """ssrvg-train then ssrvg-eval with each method preset (shrunk) on a freshly generated dataset."""
    from ssrvg_ext.data.synthetic.images import generate

    data = str(tmp_path / "data")
    generate(data, num_images=16, seed=11)
    small = ["model.d_model=32", "model.mask_dim=16", "model.text.hidden=32", "model.text.layers=1",
             "model.fusion.layers=1", "model.fusion.ffn=32", "model.decoder.layers=2", "model.decoder.ffn=32",
             "data.input_size=64", "train.batch_size=4", "train.epochs=1", "train.warmup_steps=1",
             f"data.ann_dir={data}", f"data.image_dir={os.path.join(data, 'images')}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.train", "--config", preset, "--out", str(run), *small],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.eval", "--checkpoint", str(run / "last.pth"), "--split",
                        "val", "--out", str(tmp_path / "ev.json")], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    ev = json.load(open(tmp_path / "ev.json"))
    assert ev["metrics"]["n"] > 0 and 0 <= ev["metrics"]["mIoU"] <= 1


def test_saved_configs_without_the_new_keys_are_filled_with_off_values():
    """A checkpoint saved before these keys existed loads as the model it was: with_added_keys fills
    the defaults (every method switch off) or, where the default is not what such a model did, the
    legacy value; it leaves the open sections as saved."""
    from ssrvg_ext.config import LEGACY, defaults, with_added_keys

    added = ["model.fusion.spectrum_sigma", "model.segment_optimizer", "model.cmpc", "model.decoder.mask_every_layer",
             "model.align", "model.mask_grounding", "model.temporal", "data.clip_len", "data.annotated_splits",
             "loss.segvg_factor", "loss.mask_grounding", "loss.align"]
    cfg = load_config(TINY)
    old = copy.deepcopy(cfg)
    for key in added:
        *path, last = key.split(".")
        node = old
        for p in path:
            node = node[p]
        del node[last]
    expected = copy.deepcopy(cfg)
    for key, value in LEGACY.items():  # e.g. triple alignment's positions after the projections
        *path, last = key.split(".")
        node = expected
        for p in path:
            node = node[p]
        assert node[last] != value
        node[last] = value
    old["model"].pop("mask_box_coords")
    assert with_added_keys(old) == expected
    assert with_added_keys(cfg) == cfg
    segvg = load_config("configs/methods/segvg.yaml")
    assert with_added_keys(segvg)["loss"]["mask"] == {"dice": 1.0, "bce": 0.0, "focal": 1.0} == segvg["loss"]["mask"]
    base = defaults()
    assert not base["model"]["segment_optimizer"] and not base["model"]["mask_grounding"]["enabled"]
    assert not (base["model"]["align"]["triple"] or base["model"]["align"]["cam"] or base["model"]["temporal"]["layers"])


# ---- what defines each method (read against the official code; docs/methods.md) ----
def test_cam_gate_starts_closed_and_opens():
    """MagNet's CAM: at initialisation every stage reads the plain backbone's trunk (the gate's output
    projection is zero), while the features the model reads carry language from the start; one
    backward pass reaches the gate (zeroing both projections, as MagNet's constructor writes it
    before its init_weights overwrites them, would leave both gradients zero and the gate shut)."""
    from ssrvg_ext.models.align import StageAlignment
    from ssrvg_ext.models.backbone import Backbone

    torch.manual_seed(0)
    bb = Backbone("lcnet_050", 16, 16, pretrained=False, checkpoint=None, timm_kwargs={}, stage_hooks=True).eval()
    align = StageAlignment(16, bb.stage_channels, 2, triple=[], cam=[4, 8, 16, 32], cam_pools=[1, 2, 3, 6],
                           num_queries=3)
    images, words = torch.randn(2, 3, 64, 64), torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    plain, seen = {}, {}

    def record(store, rewrite):
        def hook(i, x):
            store[i] = x
            return rewrite(i, x)
        return hook
    with torch.no_grad():
        _, plain_levels, _ = bb(images, record(plain, lambda i, x: (x, x)))
    state = align.begin(words, pad)
    _, levels, _ = bb(images, record(seen, lambda i, x: align.stage(state, i, x)))
    for i in range(4):
        torch.testing.assert_close(seen[i], plain[i], rtol=0, atol=0)
    assert not torch.allclose(levels[0], plain_levels[0])
    sum(lvl.pow(2).mean() for lvl in levels).backward()
    for s in ("4", "8", "16"):
        assert align.cam[s].gate[2].weight.grad.abs().sum() > 0
    assert align.cam["32"].gate is None  # the last stage has no next stage


def test_cam_language_side_starts_closed_and_learns():
    """MagNet's language side (model.align.cam_words): the words read each CAM stage's pixels through
    a gate closed at the start, so at initialisation they leave the backbone unchanged; the gate's
    gradient is not zero; padding words are never changed."""
    from ssrvg_ext.models.align import StageAlignment
    from ssrvg_ext.models.backbone import Backbone

    torch.manual_seed(0)
    bb = Backbone("lcnet_050", 16, 16, pretrained=False, checkpoint=None, timm_kwargs={}, stage_hooks=True).eval()
    align = StageAlignment(16, bb.stage_channels, 2, triple=[], cam=[4, 8, 16, 32], cam_pools=[1, 2, 3, 6],
                           num_queries=3, cam_words=True)
    assert sorted(align.cam_words) == ["16", "4", "8"]  # not after the last stage
    words = torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    state = align.begin(words, pad)
    _, levels, _ = bb(torch.randn(2, 3, 64, 64), lambda i, x: align.stage(state, i, x))
    out, _ = align.end(state)
    torch.testing.assert_close(out, words, rtol=0, atol=0)
    (out.pow(2).sum() + sum(lvl.pow(2).mean() for lvl in levels)).backward()
    assert all(align.cam_words[s].gate[2].weight.grad.abs().sum() > 0 for s in ("4", "8", "16"))
    with torch.no_grad():
        for s in ("4", "8", "16"):
            align.cam_words[s].gate[2].weight.normal_(0, 0.5)
        state = align.begin(words, pad)
        bb(torch.randn(2, 3, 64, 64), lambda i, x: align.stage(state, i, x))
        opened, _ = align.end(state)
    assert not torch.allclose(opened[~pad], words[~pad]) and torch.equal(opened[pad], words[pad])


def test_cam_language_side_reads_the_stage_output_not_the_trunk():
    """MagNet (``test.py``: ``forward_pwam1(i1, l1, ...)`` before ``i1 = i1_temp``): the language side
    reads the stage's output, not the trunk CAM hands the next stage (they differ once the gate opens)."""
    cfg = load_config("configs/methods/magnet.yaml", ["data.input_size=64"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=40, mask_token_id=1).eval()
    cam, side = model.align.cam["4"], model.align.cam_words["4"]
    with torch.no_grad():
        cam.gate[2].weight.normal_(0, 0.5)  # opened
    seen = {}
    cam.register_forward_hook(lambda m, args, out: seen.update(x=args[0], trunk=out[0]))
    side.register_forward_pre_hook(lambda m, args: seen.update(read=args[2]))
    b = batch_for(cfg)
    with torch.no_grad():
        model(b["images"], b["text_ids"], b["text_mask"])
    assert seen["read"] is seen["x"] and not torch.allclose(seen["x"], seen["trunk"])


def test_magnet_interleaves_the_text_encoder_with_the_stages():
    """model.align.cam_text (MagNet's ``test.py`` forward): the text encoder's chunk j, then CAM stage j on
    its hidden states (their width), then the language side, whose words the next chunk reads; gates
    closed = the words of the whole text encoder."""
    cfg = load_config("configs/methods/magnet.yaml", ["data.input_size=64", "model.align.cam_text=true",
                                                      "model.text.hidden=48", "model.text.layers=4", "model.text.heads=2"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=40, mask_token_id=1).eval()
    align = model.align
    assert align.text_chunks == {"4": (0, 1), "8": (1, 2), "16": (2, 3), "32": (3, 4)}
    assert align.cam["4"].full.key.in_features == 48 and align.cam_words["4"].query[0].in_features == 48
    order, seen = [], {}
    for j, layer in enumerate(model.text.bert.encoder.layer):
        layer.register_forward_hook(lambda *a, j=j: order.append(f"text{j}"))
        layer.register_forward_pre_hook(lambda m, args, j=j: seen.update({f"in{j}": args[0]}))
    for s in ("4", "8", "16", "32"):
        align.cam[s].register_forward_hook(lambda *a, s=s: order.append(f"cam{s}"))
    for s in ("4", "8", "16"):
        align.cam_words[s].register_forward_hook(lambda m, args, out, s=s: seen.update({f"side{s}": out}))
    model.fusion.register_forward_pre_hook(lambda m, args: seen.update(words=args[2]))
    b = batch_for(cfg)
    ids, mask = b["text_ids"], b["text_mask"]
    with torch.no_grad():
        plain = model.text(ids, mask)[0]
        order.clear()
        model(b["images"], ids, mask)
        words = seen["words"]
    assert order[:8] == ["text0", "cam4", "text1", "cam8", "text2", "cam16", "text3", "cam32"]
    assert seen["in1"] is seen["side4"] and seen["in2"] is seen["side8"]  # the language side feeds the next chunk
    torch.testing.assert_close(words[mask], plain[mask])  # closed gates: the plain text encoder's words
    with torch.no_grad():
        for s in ("4", "8", "16"):
            align.cam_words[s].gate[2].weight.normal_(0, 0.5)
        model(b["images"], ids, mask)
    assert not torch.allclose(seen["words"][mask], plain[mask])
    tiny = build_model(load_config("configs/methods/magnet.yaml", ["model.align.cam_text=true"]), vocab_size=40,
                       mask_token_id=1)
    assert tiny.align.text_chunks == {"4": (0, 1), "8": (1, 1), "16": (1, 2), "32": (2, 2)}  # 2 layers, 4 stages
    with pytest.raises(ValueError, match="model.align.cam"):
        build_model(load_config(TINY, ["model.align.cam_text=true"]), vocab_size=40)


def test_mask_grounding_cannot_read_the_masked_words():
    """MagNet preset (CAM fuses the expression into the backbone): changing the words that mask
    grounding masks out leaves its visual input unchanged (they cannot be read back from it), while
    its targets change."""
    cfg = merge(load_config("configs/methods/magnet.yaml", ["data.input_size=64"]),
                {"model": {"mask_grounding": {"ratio": 1.0, "replace": 1.0}}})  # every inner token masked
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=40, mask_token_id=1).train()
    seen = []
    model.grounding.register_forward_pre_hook(lambda m, args: seen.append(args[2].detach().clone()))
    batch = batch_for(cfg)
    other = batch["text_ids"].clone()
    inner = batch["text_mask"].clone()
    inner[:, 0] = False
    inner[torch.arange(len(inner)), batch["text_mask"].sum(1) - 1] = False
    other[inner] = (other[inner] - 4 + 7) % 36 + 4  # every maskable token replaced by another word
    outs = []
    for ids in (batch["text_ids"], other):
        torch.manual_seed(1)
        outs.append(model(batch["images"], ids, batch["text_mask"], None, batch["masks"]))
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    assert not torch.equal(outs[0]["mg_targets"], outs[1]["mg_targets"])
    assert not torch.allclose(outs[0]["boxes"], outs[1]["boxes"])  # the main pass does read the expression


@pytest.mark.parametrize("segment_optimizer", [False, True])
def test_box_to_mask_supervision_gives_the_mask_no_box_input(segment_optimizer):
    """SegVG: under box-to-mask supervision the mask branch reads the queries and the pixels only
    (the box-relative coordinates would make a rectangle target a function of the predicted box);
    without it the CondInst coordinates stay."""
    for box_to_mask in (True, False):
        cfg = merge(load_config("configs/methods/segvg.yaml", ["data.input_size=64"]),
                    {"model": {"segment_optimizer": segment_optimizer}, "loss": {"box_to_mask": box_to_mask}})
        torch.manual_seed(0)
        model = build_model(cfg, vocab_size=40)
        head, d = model.mask_head, cfg["model"]["d_model"]
        assert head.box_coords == (not box_to_mask)
        q = torch.randn(2, 3, d)
        if segment_optimizer:
            c = model.backbone.stage_channels
            feats = (torch.randn(2, d, 8, 8), torch.randn(2, c[1], 8, 8), torch.randn(2, c[0], 16, 16))
        else:
            feats = torch.randn(2, cfg["model"]["mask_dim"], 16, 16)
        a = head(q, feats, torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 2))
        b = head(q, feats, torch.tensor([[0.7, 0.6, 0.4, 0.3]] * 2))
        a, b = (a[0], b[0]) if segment_optimizer else (a, b)
        assert torch.equal(a, b) == box_to_mask


def test_sgmg_supervises_coarse_and_refined_masks_at_every_layer():
    """SgMg preset: every decoder layer's refined and coarse masks are supervised with SgMg's focal 2 +
    Dice 5, all layers alike, and each term reaches its own layer's prediction."""
    cfg = load_config("configs/methods/sgmg.yaml", ["data.input_size=64"])
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=40).train(), build_criterion(cfg)
    batch = batch_for(cfg)
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], None, batch["masks"])
    terms = crit(out, batch)
    layers = cfg["model"]["decoder"]["layers"] - 1
    for i in range(layers):
        for k, w in (("dice", 5.0), ("focal", 2.0)):
            for name in (f"mask_{k}_{i}", f"mask_{k}_coarse_{i}"):
                assert name in terms and crit.weight_dict[name] == w
    assert crit.weight_dict["mask_dice_coarse"] == 5.0 and crit.weight_dict["mask_focal"] == 2.0
    for i in range(layers):
        g = torch.autograd.grad(terms[f"mask_dice_coarse_{i}"], out["aux_coarse_mask_logits"], retain_graph=True)[0]
        assert g[i].abs().sum() > 0 and all(g[j].abs().sum() == 0 for j in range(layers) if j != i)


@pytest.mark.parametrize("placement", ["memory", "mask"])
def test_cmpc_placement_and_level_masks(placement):
    """CMPC on the memory changes the boxes (the proposals and the decoder read it); on the mask
    branch it cannot. Its per-level auxiliary masks are supervised (BCE) and train its heads."""
    cfg = merge(load_config("configs/methods/cmpc.yaml", ["data.input_size=64"]),
                {"model": {"cmpc": {"placement": placement}}})
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=40), build_criterion(cfg)
    batch = batch_for(cfg)
    args = (batch["images"], batch["text_ids"], batch["text_mask"])
    with torch.no_grad():
        model.eval()
        for head in model.decoder.box_heads:  # zero at the start: the box would be the chosen proposal's
            head[-1].weight.normal_(0, 0.1)
        base = model(*args)
        for conv in model.cmpc.merge:
            conv.weight.mul_(5.0)
        moved = model(*args)
    for key in ("boxes", "proposal_scores"):
        assert torch.equal(moved[key], base[key]) == (placement == "mask"), key
    assert not torch.equal(moved["mask_logits"], base["mask_logits"])
    out = model.train()(*args, None, batch["masks"])
    assert out["cmpc_level_logits"].shape == (3, 4, 8, 8)
    terms = crit(out, batch)
    assert {"cmpc_bce_8", "cmpc_bce_16", "cmpc_bce_32"} <= set(terms) and crit.weight_dict["cmpc_bce_16"] == 0.286
    terms["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cmpc.aux.parameters())


# ---- SgMg ----
def test_spectral_unit_by_hand():
    """The spectral unit against a NumPy version of its formula (float64): full FFT, the Gaussian
    centred on the highest frequencies of the unshifted spectrum scaled by 1 - a * G, the 1x1 convs
    over [Re; Im], the real part of the inverse FFT added to the input."""
    import numpy as np
    from ssrvg_ext.models.fusion import SpectralUnit

    torch.manual_seed(0)
    unit = SpectralUnit(4, sigma=0.2).double()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    got = unit(x)
    a = unit.strength(x).detach().numpy()[:, 0]  # (B,)
    h, w = 6, 5
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    g = np.exp(-(yy / (0.2 * h)) ** 2 / 2 - (xx / (0.2 * w)) ** 2 / 2)
    assert g.argmax() == (h // 2) * w + w // 2  # the peak is the Nyquist bin of the unshifted spectrum
    w1, b1 = unit.mix[0].weight.detach().numpy()[:, :, 0, 0], unit.mix[0].bias.detach().numpy()
    w2, b2 = unit.mix[2].weight.detach().numpy()[:, :, 0, 0], unit.mix[2].bias.detach().numpy()
    for i in range(2):
        y = np.fft.fft2(x[i].numpy()) * (1 - a[i] * g)
        z = np.concatenate([y.real, y.imag])
        z = np.einsum("oc,chw->ohw", w2, np.maximum(np.einsum("oc,chw->ohw", w1, z) + b1[:, None, None], 0)) + b2[:, None, None]
        want = x[i].numpy() + np.fft.ifft2(z[:4] + 1j * z[4:]).real
        np.testing.assert_allclose(got[i].detach().numpy(), want, rtol=1e-10, atol=1e-10)


def test_spectral_unit_runs_in_float32_under_autocast():
    from ssrvg_ext.models.fusion import SpectralUnit

    torch.manual_seed(0)
    unit = SpectralUnit(8, sigma=0.15)
    x = torch.randn(2, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = unit(x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), unit(x.bfloat16().float()), rtol=2e-2, atol=2e-2)


def test_segment_optimizer_layout():
    """With the optimiser's residual blocks zeroed, the refined mask is the sub-pixel (4 x 4) layout
    of the coarse 16 channels upsampled x2, and the coarse mask the layout of the channels
    themselves: the stride-2 / stride-1 masks come from the same 16 channels."""
    cfg, model, _ = build(COMPONENTS["segment_optimizer"])
    head = model.mask_head
    with torch.no_grad():
        for block in (head.block8, head.block4):
            block[-1].weight.zero_()
            block[-1].bias.zero_()
    torch.manual_seed(1)
    q, boxes = torch.randn(2, 3, 64), torch.rand(2, 4) * 0.5 + 0.25
    fused = [torch.randn(2, 64, 20 // 2 ** i, 20 // 2 ** i) for i in range(4)]
    raw8, raw4 = torch.randn(2, 64, 20, 20), torch.randn(2, 32, 40, 40)
    with torch.no_grad():
        refined, coarse, x4 = head(q, head.features(fused, raw8, raw4), boxes)
    assert coarse.shape == (2, 80, 80) and refined.shape == (2, 160, 160) and x4.shape == (2, 16, 40, 40)
    x8 = F.pixel_unshuffle(coarse[:, None], 4)  # back to the 16 channels at stride 8
    up = F.interpolate(x8, size=(40, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(refined, F.pixel_shuffle(up, 4)[:, 0])


# ---- CMPC ----
def test_relation_graph_equals_the_explicit_adjacency():
    """The two-product graph step equals A = softmax_words(B) softmax_nodes(B)^T built as an HW x HW
    matrix; padded words take no part."""
    from ssrvg_ext.models.cmpc import RelationGraph

    torch.manual_seed(0)
    g = RelationGraph(8, steps=1).double()
    m, words = torch.randn(2, 8, 3, 4).double(), torch.randn(2, 5, 8).double()
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    p_rel = torch.rand(2, 5).double()
    got = g(m, words, pad, p_rel)
    for b in range(2):
        real = (~pad[b]).nonzero().flatten()
        aff = (g.key(m[b:b + 1]).flatten(2)[0].T @ g.word(words[b, real]).T) / 8 ** 0.5 * p_rel[b, real]
        adj = aff.softmax(1) @ aff.softmax(0).T  # (HW, HW), rows sum to 1
        torch.testing.assert_close(adj.sum(1), torch.ones(12, dtype=torch.float64))
        x = m[b].flatten(1).T
        h = torch.relu(g.norms[0](adj @ x) + x)
        want = F.normalize(g.out(h), dim=-1).T.reshape(8, 3, 4)
        torch.testing.assert_close(got[b], want)


def test_word_types_ignore_padding_and_sum_to_one():
    from ssrvg_ext.models.cmpc import WordTypes

    torch.manual_seed(0)
    wt = WordTypes(8)
    words, pad = torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    p, q, s, a = wt(words, pad)
    assert a is None  # (the action vector is CMPC-V's)
    torch.testing.assert_close(p[~pad].sum(-1), torch.ones(int((~pad).sum())))
    assert torch.all(p[pad] == 0)
    other = words.clone()
    other[1, 3:] = torch.randn(2, 8)  # only padding changes
    _, q2, s2, _ = wt(other, pad)
    torch.testing.assert_close(q, q2, rtol=0, atol=0)
    torch.testing.assert_close(s, s2, rtol=0, atol=0)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2))


def test_feature_exchange_reads_the_other_levels():
    """Each level's update depends on the other levels (perturbing level 2 changes levels 0 and 1)
    under its gates; closed gates (sigmoid -> 0) leave L2norm(F_i) only."""
    from ssrvg_ext.models.cmpc import FeatureExchange

    torch.manual_seed(0)
    ex = FeatureExchange(8, 3, rounds=1)
    feats = [torch.randn(2, 8, 8 // 2 ** i, 8 // 2 ** i) for i in range(3)]
    s = torch.randn(2, 8)
    with torch.no_grad():
        a = ex(feats, s)
        b = ex(feats[:2] + [feats[2] + 1.0], s)
        assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
        for gate in ex.gate:
            gate.weight.zero_()
            gate.bias.fill_(-1e4)
        closed = ex(feats, s)
    for f, c in zip(feats, closed):
        torch.testing.assert_close(c, F.normalize(f, dim=1))


def test_every_switch_builds_on_a_refcoco_preset():
    """The method switches on the Swin-T RefCOCO preset (random weights): the stage hooks find the
    Swin stages (flattened timm names, NHWC) and every module is built at that preset's widths."""
    cfg = load_config("configs/refcoco_swin_t.yaml", ["model.backbone.pretrained=false", "model.text.pretrained=false"])
    cfg = merge(cfg, ALL)  # every component of test_component_trains_and_evaluates
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=30522, mask_token_id=103)
    assert model.backbone.stage_names == ["layers_0", "layers_1", "layers_2", "layers_3"] and model.backbone.nhwc
    assert model.align.cam["32"].full.vis[0].in_channels == 768 and model.cmpc is not None
    assert model.multigranularity and model.grounding.head[-1].out_features == 30522


def test_segvg_interleaves_the_text_encoder_with_the_alignment():
    """model.align.triple_text: fusion layer i, then the text encoder's chunk i, then triple alignment i
    on the text encoder's hidden states (their width, not d_model); layer by layer = the whole encoder."""
    cfg = load_config("configs/methods/segvg.yaml", ["data.input_size=64", "model.text.hidden=48",
                                                     "model.text.layers=4", "model.text.heads=2"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=60)
    fa = model.fusion_align
    assert fa.chunks == [(0, 2), (2, 4)] and fa.layers[0].norms[1].normalized_shape == (48,)
    order = []
    for i, layer in enumerate(model.fusion.layers):
        layer.register_forward_hook(lambda *a, i=i: order.append(f"fusion{i}"))
    for j, layer in enumerate(model.text.bert.encoder.layer):
        layer.register_forward_hook(lambda *a, j=j: order.append(f"text{j}"))
    for i, layer in enumerate(fa.layers):
        layer.register_forward_hook(lambda *a, i=i: order.append(f"align{i}"))
    b = random_batch(2, 64, 12, 60, "cpu")
    model.eval()
    with torch.no_grad():
        model(b["images"], b["text_ids"], b["text_mask"])
    assert order == ["fusion0", "text0", "text1", "align0", "fusion1", "text2", "text3", "align1"]
    ids, mask = b["text_ids"], b["text_mask"]
    hidden, m = model.text.embed(ids, mask)
    words, _ = model.text.finish(model.text.run_layers(model.text.run_layers(hidden, m, 0, 2), m, 2, 4), mask)
    torch.testing.assert_close(words[mask], model.text(ids, mask)[0][mask])
    with pytest.raises(ValueError, match="triple_fusion"):
        build_model(load_config("configs/tiny_synthetic.yaml", ["model.align.triple_text=true"]), vocab_size=60)
