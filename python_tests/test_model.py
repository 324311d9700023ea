"""The SSRVG-REC model: forward/backward of presets and switches, compiled vs reference ops."""

import time

import pytest
import torch

from ssrvg_ext import extension
from ssrvg_ext.config import load_config, merge
from ssrvg_ext.testing import random_batch
from ssrvg_ext.models import build_criterion, build_model

TINY = "configs/tiny_synthetic.yaml"


def batch_for(cfg, b=4, t=9, vocab=40, seed=0, with_labels=False):
    g = torch.Generator().manual_seed(seed)
    s = cfg["data"]["input_size"]
    valid = [(s, s - 8 * (i % 3)) for i in range(b)]
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 6:] = False
    boxes = torch.cat([torch.rand(b, 2, generator=g) * 0.4 + 0.3, torch.rand(b, 2, generator=g) * 0.3 + 0.1], 1)
    return {"images": torch.randn(b, 3, s, s, generator=g), "text_ids": torch.randint(4, vocab, (b, t), generator=g),
            "text_mask": mask, "boxes": boxes, "masks": (torch.rand(b, s, s, generator=g) < 0.3).to(torch.uint8),
            "meta": [{"valid": v, "input_size": s, "scale": (1.0, 1.0), "orig_size": v} for v in valid],
            **({"instances": torch.randint(0, 4, (b, s, s), generator=g).to(torch.uint8),
                "inst_labels": torch.cat([torch.zeros(b, 1, 2, dtype=torch.long), torch.randint(1, 3, (b, 3, 2), generator=g)], 1)}
               if with_labels else {})}


SWITCHES = {
    "tiny": {},
    "spectrum_fusion": {"model": {"fusion": {"spectrum": True}}},
    "global_attn_on": {"model": {"fusion": {"global_attn": True}}},
    "global_attn_off": {"model": {"fusion": {"global_attn": False}}},
    "box_to_mask": {"loss": {"box_to_mask": True}},
    "focal_mask_loss": {"loss": {"mask": {"dice": 1.0, "focal": 5.0}}},
    "no_mask_queries": {"model": {"decoder": {"mask_queries": 0}}},
    "no_proposals": {"model": {"proposals": False}},
    "segvg": {"model": {"decoder": {"mask_every_layer": True}},
              "loss": {"segvg_factor": True, "box_to_mask": True, "mask": {"dice": 1.0, "focal": 1.0}}},
    "mask_every_layer": {"model": {"decoder": {"mask_every_layer": True}}},
    "object_labels": {},
    "object_labels_weight_0": {"loss": {"attr": 0.0}},
    "mask_stride_2": {"model": {"mask_stride": 2}},
}
# object-label classes come from the data (the trainer passes them; checkpoints keep them)
AUX = {"object_labels": {"category": ["a", "b"], "color": ["x", "y", "z"]},
       "object_labels_weight_0": {"category": ["a", "b"]}}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_forward_backward_every_switch(name):
    cfg = merge(load_config(TINY), SWITCHES[name])
    torch.manual_seed(0)
    aux = AUX.get(name)
    model, crit = build_model(cfg, vocab_size=40, aux_classes=aux), build_criterion(cfg, aux)
    batch = batch_for(cfg, with_labels=aux is not None)
    out = model(batch["images"], batch["text_ids"], batch["text_mask"])
    s = cfg["data"]["input_size"]
    r = s // cfg["model"]["mask_stride"]
    assert out["boxes"].shape == (4, 4) and out["mask_logits"].shape == (4, r, r)
    assert out["aux_boxes"].shape == (cfg["model"]["decoder"]["layers"] - 1, 4, 4)
    losses = crit(out, batch)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without a gradient: {unused}"


def test_object_label_loss_by_hand():
    """Token centres read the instance map; cross-entropy per label, object and background tokens
    averaged apart and weighted half each, averaged over the labels; unknown labels are skipped."""
    from ssrvg_ext.models.criterion import loss_attr

    crit = build_criterion(load_config(TINY)); crit.attr_classes = [3, 2]
    logits = torch.randn(1, 3, 5)
    inst = torch.zeros(1, 8, 8, dtype=torch.uint8)
    inst[0, :4, :4] = 1  # object 1 fills the top-left quadrant
    table = torch.tensor([[[0, 0], [2, -100]]])  # object 1: class 2 of label 0, label 1 unknown
    points = torch.tensor([[0.25, 0.25], [0.75, 0.75], [0.75, 0.25]])  # object, background, background
    got = loss_attr(crit, {"attr_logits": logits, "attr_points": points}, {"instances": inst, "inst_labels": table},
                    None)["attr"]

    def ce(t, sl, k):
        v = logits[0, t, sl]
        return float(torch.logsumexp(v, 0) - v[k])
    lab0 = 0.5 * ce(0, slice(0, 3), 2) + 0.5 * (ce(1, slice(0, 3), 0) + ce(2, slice(0, 3), 0)) / 2
    lab1 = 0.5 * (ce(1, slice(3, 5), 0) + ce(2, slice(3, 5), 0)) / 2  # no known object token
    assert abs(float(got) - (lab0 + lab1) / 2) < 1e-5


def test_compiled_ops_equal_reference_ops():
    if not extension.AVAILABLE:
        pytest.skip("compiled ops not built")
    cfg = load_config(TINY)
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=40).eval(), build_criterion(cfg)
    batch = batch_for(cfg)
    out = model(batch["images"], batch["text_ids"], batch["text_mask"])
    loss = crit(out, batch)["total"]
    with extension.force_reference():  # one switch flips every op to its pure-PyTorch reference
        out_ref = model(batch["images"], batch["text_ids"], batch["text_mask"])
        loss_ref = crit(out_ref, batch)["total"]
    for k in ("boxes", "mask_logits"):
        torch.testing.assert_close(out[k], out_ref[k], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_deform_attn_module_sampling_locations_by_formula(ref_dim):
    """MSDeformAttn's sampling locations (computed densely for point references) equal Deformable
    DETR's formula: ref + offset / (W, H) per level for points, ref_xy + offset / P * ref_wh / 2 for
    boxes; values and gradients, in float64."""
    from ssrvg_ext.models.ms_deform_attn import MSDeformAttn
    from ssrvg_ext.ops import reference

    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=2, n_points=3).double()
    with torch.no_grad():  # non-trivial offsets and weights (the init zeroes the weights)
        for lin in (attn.sampling_offsets, attn.attention_weights):
            lin.weight.normal_(0, 0.5)
            lin.bias.normal_(0, 0.5)
    shapes = torch.tensor([[6, 5], [3, 3], [2, 1]])
    starts = torch.tensor([0, 30, 39])
    n, lq = 2, 4
    query = torch.randn(n, lq, 16, dtype=torch.float64, requires_grad=True)
    value = torch.randn(n, 41, 16, dtype=torch.float64)
    ref = torch.rand(n, lq, 3, ref_dim, dtype=torch.float64).requires_grad_()

    def by_formula(q, r):
        off = attn.sampling_offsets(q).view(n, lq, 2, 3, 3, 2)
        w = attn.attention_weights(q).view(n, lq, 2, 9).softmax(-1).view(n, lq, 2, 3, 3)
        if ref_dim == 2:
            wh = torch.stack([shapes[:, 1], shapes[:, 0]], -1).double()
            loc = r[:, :, None, :, None, :] + off / wh[None, None, None, :, None, :]
        else:
            rr = r[:, :, None, :, None, :]
            loc = rr[..., :2] + off / 3 * rr[..., 2:] * 0.5
        v = attn.value_proj(value).view(n, 41, 2, 8)
        return attn.output_proj(reference.ms_deform_attn(v, shapes, starts, loc, w))

    with extension.force_reference():
        out = attn(query, ref, value, shapes, starts)
        expected = by_formula(query, ref)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (query, ref), g)
        expected_grads = torch.autograd.grad(expected, (query, ref), g)
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_shared_backbone_equals_repeated_images():
    """image_index runs the backbone once per image: the outputs equal those of the model given each
    expression's image repeated; in training the label head has one row per image and all gets gradients."""
    cfg, aux = load_config(TINY), AUX["object_labels"]
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=40, aux_classes=aux).eval(), build_criterion(cfg, aux)
    batch = batch_for(cfg, b=5, with_labels=True)
    images = batch["images"][:3]
    index = torch.tensor([0, 0, 1, 2, 2])
    shared = model(images, batch["text_ids"], batch["text_mask"], index)
    repeated = model(images[index], batch["text_ids"], batch["text_mask"])
    for k in ("boxes", "mask_logits", "proposal_scores"):
        torch.testing.assert_close(shared[k], repeated[k], rtol=1e-5, atol=1e-5)
    model.train()
    batch.update(images=images, image_index=index, instances=batch["instances"][:3], inst_labels=batch["inst_labels"][:3])
    out = model(images, batch["text_ids"], batch["text_mask"], index)
    assert out["boxes"].shape == (5, 4) and out["attr_logits"].shape[0] == 3
    crit(out, batch)["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("mask_stride", [4, 2])
def test_predict_maps_back_to_original_size(mask_stride):
    cfg = load_config(TINY, [f"model.mask_stride={mask_stride}"])
    model = build_model(cfg, vocab_size=40).eval()
    batch = batch_for(cfg)
    batch["meta"] = [dict(m, scale=(0.5, 0.5), orig_size=(2 * m["valid"][0], 2 * m["valid"][1])) for m in batch["meta"]]
    res = model.predict(batch)
    for r, m in zip(res, batch["meta"]):
        h, w = m["orig_size"]
        assert r["mask"].shape == (h, w) and r["mask"].dtype == torch.uint8
        x0, y0, x1, y1 = r["box"].tolist()
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h


def test_torch_compile_forward_smoke():
    cfg = load_config(TINY)
    model = build_model(cfg, vocab_size=40).eval()
    batch = batch_for(cfg, b=2)
    eager = model(batch["images"], batch["text_ids"], batch["text_mask"])
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(batch["images"], batch["text_ids"], batch["text_mask"])
    torch.testing.assert_close(out["boxes"], eager["boxes"], rtol=1e-4, atol=1e-4)


def test_tiny_step_time_and_parameter_counts(capsys):
    cfg = load_config(TINY)
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=40), build_criterion(cfg)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    batch = batch_for(cfg, b=8)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        loss = crit(model(batch["images"], batch["text_ids"], batch["text_mask"]), batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step = sorted(times[2:])[2]  # median after two warm-up steps
    counts = {"tiny_synthetic": sum(p.numel() for p in model.parameters())}
    for preset in ("refcoco_swin_t", "refcoco_swin_b"):
        pc = load_config(f"configs/{preset}.yaml", ["model.backbone.pretrained=false",  # same architecture, random init
                                                    "model.text.pretrained=false"])
        counts[preset] = sum(p.numel() for p in build_model(pc, vocab_size=30522).parameters())
    with capsys.disabled():
        print(f"\n[model] tiny preset forward+backward+step at batch 8: {step * 1e3:.0f} ms on "
              f"{torch.get_num_threads()} threads")
        for k, v in counts.items():
            print(f"[model] parameters {k}: {v / 1e6:.2f} M")
    assert counts["refcoco_swin_b"] > counts["refcoco_swin_t"] > 100 * counts["tiny_synthetic"] / 10


@pytest.mark.parametrize("shared_kv,padded", [(True, True), (False, True), (False, False)])
def test_attention_equals_multihead_attention(shared_kv, padded):
    """Same seed -> same weights and state_dict keys as nn.MultiheadAttention(batch_first=True); same
    outputs and gradients (float64), with and without a key padding mask, keys shared with values or not."""
    from ssrvg_ext.models.attention import Attention

    torch.manual_seed(3)
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).double()
    torch.manual_seed(3)
    ours = Attention(16, 4).double()
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    assert list(sd_ref) == list(sd_ours) and all(torch.equal(sd_ref[k], sd_ours[k]) for k in sd_ref)
    torch.manual_seed(4)
    ours.load_state_dict({k: torch.randn_like(v) for k, v in sd_ref.items()})  # non-zero biases too
    ref.load_state_dict(ours.state_dict())
    q = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    v = k if shared_kv else torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 4:] = True
    pad[2, 1:] = True  # one key left
    pad = pad if padded else None
    got = ours(q, k, v, key_padding_mask=pad)
    want = ref(q, k, v, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(got)
    grads_ours = torch.autograd.grad(got, [q, k, *([] if shared_kv else [v]), *ours.parameters()], g)
    grads_ref = torch.autograd.grad(want, [q, k, *([] if shared_kv else [v]), *ref.parameters()], g)
    for a, b in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_giou_loss_equals_torchvision(rng):
    """The criterion's GIoU (no boolean indexing: no host sync on a GPU) is torchvision's."""
    from torchvision.ops import generalized_box_iou_loss

    from ssrvg_ext.models.criterion import giou_loss

    xy = torch.rand(400, 2, generator=rng, dtype=torch.float64)
    wh = torch.rand(400, 2, generator=rng, dtype=torch.float64) * 0.5
    a = torch.cat([xy, xy + wh], 1)
    b = a.flip(0).clone()
    b[:50] = a[:50]                    # identical boxes
    b[50:100, :2] = a[50:100, 2:] + 0.1  # disjoint boxes
    b[50:100, 2:] = b[50:100, :2] + 0.2
    a.requires_grad_(True), b.requires_grad_(True)
    ours, ref = giou_loss(a, b), generalized_box_iou_loss(a, b, reduction="none")
    torch.testing.assert_close(ours, ref)
    w = torch.rand(400, generator=rng, dtype=torch.float64)
    for g, r in zip(torch.autograd.grad((ours * w).sum(), (a, b)), torch.autograd.grad((ref * w).sum(), (a, b))):
        torch.testing.assert_close(g, r)


def test_text_encoder_4d_mask_equals_2d_mask(rng):
    """Under transformers >= 5 the text encoder hands BERT a prepared 4-D mask (no host sync); it
    must mean what the 2-D padding mask means."""
    from ssrvg_ext.models.text import TextEncoder

    torch.manual_seed(0)
    enc = TextEncoder(32, None, vocab_size=50, hidden=32, layers=2, heads=2, max_len=9, freeze=False,
                      pretrained=False).eval()
    ids = torch.randint(1, 50, (3, 9), generator=rng)
    mask = torch.arange(9)[None] < torch.tensor([[9], [4], [1]])
    use_4d = enc.mask_4d
    if not use_4d:
        pytest.skip("transformers < 5 or no SDPA: the 2-D mask is used")
    a = enc(ids, mask)
    enc.mask_4d = not use_4d
    b = enc(ids, mask)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    enc.mask_4d = use_4d
    unmasked = enc(ids, torch.ones_like(mask))[0]
    assert not torch.allclose(unmasked[1, :4], a[0][1, :4], atol=1e-4)  # the padding really is masked


def test_criterion_terms_are_unweighted_and_total_uses_the_weight_dict(rng):
    """Every term comes back unweighted, one per decoder layer for the boxes; total is the weight
    dict applied to them, so doubling a weight adds that term once more; the losses computed are
    the ones the config switched on when the criterion was built."""
    cfg = load_config("configs/tiny_synthetic.yaml", ["loss.attr=0"])
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=50).eval()
    batch = random_batch(2, cfg["data"]["input_size"], cfg["data"]["max_len"], 50, "cpu")
    with torch.no_grad():
        out = model(batch["images"], batch["text_ids"], batch["text_mask"])
    crit = build_criterion(cfg)
    terms = crit(out, batch)
    layers = len(out["aux_boxes"])
    assert layers == cfg["model"]["decoder"]["layers"] - 1
    expected = {"l1", "giou", "prop_score", "prop_l1", "prop_giou", "mask_dice", "mask_bce", "total"}
    expected |= {f"{k}_{i}" for i in range(layers) for k in ("l1", "giou")}
    assert set(terms) == expected
    assert crit.losses == ["boxes", "proposals", "masks"]
    weights = dict(crit.weight_dict)
    torch.testing.assert_close(terms["total"], sum(weights[k] * v for k, v in terms.items() if k != "total"))
    crit.weight_dict["mask_dice"] *= 2
    torch.testing.assert_close(crit(out, batch)["total"], terms["total"] + weights["mask_dice"] * terms["mask_dice"])


def test_segvg_factor_scales_dice_and_box_losses_by_hand():
    """f = 1 + (1 - sum(p t) / sum(t))^2 per sample, from the upsampled mask; dice x f, L1 / GIoU x f."""
    from ssrvg_ext.models.criterion import giou_loss, cxcywh_to_xyxy
    from ssrvg_ext.ops import reference

    cfg = merge(load_config(TINY), merge(SWITCHES["segvg"], {"model": {"proposals": False}}))
    crit = build_criterion(cfg)  # the outputs below have no proposals: the criterion built without their loss
    g = torch.Generator().manual_seed(0)
    b, s = 3, cfg["data"]["input_size"]
    batch = batch_for(cfg, b=b)
    out = {"boxes": torch.rand(b, 4, generator=g) * 0.3 + 0.3, "aux_boxes": torch.rand(1, b, 4, generator=g) * 0.3 + 0.3,
           "mask_logits": torch.randn(b, s // 4, s // 4, generator=g),
           "aux_mask_logits": torch.randn(1, b, s // 4, s // 4, generator=g)}
    terms = crit(out, batch)
    from ssrvg_ext.models.criterion import box_to_mask, padding_valid
    targets = box_to_mask(batch["boxes"], s)
    valid = padding_valid(batch["meta"], s, "cpu")
    sums = reference.upsampled_mask_sums(out["mask_logits"].double(), targets, valid, 0.25, 2.0)
    f = 1 + (1 - sums[:, 0] / sums[:, 2].clamp_min(1)) ** 2
    dice = 1 - (2 * sums[:, 0] + 1) / (sums[:, 1] + sums[:, 2] + 1)
    torch.testing.assert_close(terms["mask_dice"].double(), (dice * f).sum() / b, rtol=1e-5, atol=1e-6)
    l1 = ((out["boxes"] - batch["boxes"]).abs().sum(-1).double() * f).sum() / b
    torch.testing.assert_close(terms["l1"].double(), l1, rtol=1e-5, atol=1e-6)
    giou = (giou_loss(cxcywh_to_xyxy(out["boxes"]), cxcywh_to_xyxy(batch["boxes"])).double() * f).sum() / b
    torch.testing.assert_close(terms["giou"].double(), giou, rtol=1e-5, atol=1e-6)
    assert {"mask_dice_0", "mask_focal_0", "l1_0", "giou_0"} <= set(terms)
    assert crit.weight_dict["mask_dice_0"] == cfg["loss"]["aux"] * cfg["loss"]["mask"]["dice"]


def test_switches_off_are_todays_model():
    """mask_every_layer / segvg_factor off: the same parameters and the same outputs and loss terms
    as a model built without the keys' effects (they add no parameter; eval mode adds no output)."""
    cfg = load_config(TINY)
    on = merge(cfg, {"model": {"decoder": {"mask_every_layer": True}}})
    torch.manual_seed(0)
    a = build_model(cfg, vocab_size=40).eval()
    torch.manual_seed(0)
    b = build_model(on, vocab_size=40).eval()
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    batch = batch_for(cfg)
    with torch.no_grad():
        oa, ob = a(batch["images"], batch["text_ids"], batch["text_mask"]), b(batch["images"], batch["text_ids"], batch["text_mask"])
    assert set(oa) == set(ob)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


def test_mask_stride_2_reads_the_stride_2_map():
    """model.mask_stride=2: masks at half the input's resolution that depend on the backbone's stride-2
    projection; backbones without a stride-2 map, or SgMg's head, are refused clearly. (The guided
    upsampling to the input's size, model.mask_refine, is off: the mask head's own logits are looked at.)"""
    cfg = merge(load_config(TINY, ["model.mask_refine.enabled=false"]), {"model": {"mask_stride": 2}})
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=40).eval()
    batch = batch_for(cfg)
    args = (batch["images"], batch["text_ids"], batch["text_mask"])
    bb = model.backbone
    with torch.no_grad():
        base = model(*args)["mask_logits"]
        ref_proj2 = bb.proj2[0].weight.clone()
        bb.proj2[0].weight.add_(0.5)  # only the stride-2 projection changes
        moved = model(*args)["mask_logits"]
        bb.proj2[0].weight.copy_(ref_proj2)
    assert base.shape[-1] == cfg["data"]["input_size"] // 2 and not torch.allclose(base, moved)
    with pytest.raises(ValueError, match="stride-2 feature map"):
        build_model(merge(cfg, {"model": {"backbone": {"name": "swin_tiny_patch4_window7_224"}}}), vocab_size=40)
    with pytest.raises(ValueError, match="segment_optimizer"):
        build_model(merge(cfg, {"model": {"segment_optimizer": True}}), vocab_size=40)
    with pytest.raises(ValueError, match="4 or 2"):
        build_model(merge(cfg, {"model": {"mask_stride": 8}}), vocab_size=40)


def test_channels_last_backbone_equals_the_default_layout():
    """model.backbone.channels_last: the body's convolutions from the first with >= 16 input channels hold
    channels-last weights, so its features come out channels-last; the model's outputs, loss and every
    gradient equal those of the default layout up to float rounding (the same seed builds the same weights).
    A body that is NHWC already (Swin) is left as it is."""
    cfg = merge(load_config(TINY), {"model": {"mask_stride": 2}})
    outs, grads = [], []
    for cl in (False, True):
        torch.manual_seed(0)
        model = build_model(merge(cfg, {"model": {"backbone": {"channels_last": cl}}}), vocab_size=40,
                            aux_classes=AUX["object_labels"]).train()
        convs = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.Conv2d)]
        assert any(m.in_channels < 16 for m in convs) and any(m.in_channels >= 16 for m in convs)
        for m in convs:  # the weight's strides are those of its layout
            w = m.weight
            want = torch.channels_last if cl and m.in_channels >= 16 else torch.contiguous_format
            assert w.stride() == torch.empty(w.shape, memory_format=want).stride(), m
        batch = batch_for(cfg, with_labels=True)
        fine, levels, _ = model.backbone(batch["images"])
        assert all(f.is_contiguous(memory_format=torch.channels_last) == cl for f in levels[:1] + fine[:1])
        out = model(batch["images"], batch["text_ids"], batch["text_mask"])
        loss = build_criterion(cfg, AUX["object_labels"])(out, batch)["total"]
        loss.backward()
        outs.append({k: out[k].detach() for k in ("boxes", "mask_logits")} | {"loss": loss.detach()})
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for k in outs[0]:
        torch.testing.assert_close(outs[1][k], outs[0][k], rtol=1e-4, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        # to the gradient's own scale (the keys' biases get none: rounding alone there)
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=2e-3 * float(grads[0][n].abs().max()) + 1e-7,
                                   msg=n)
    swin = build_model(merge(load_config(TINY), {"model": {"backbone": {"name": "swin_tiny_patch4_window7_224",
                                                                        "channels_last": True}}}), vocab_size=40)
    assert all(m.weight.is_contiguous() for m in swin.backbone.body.modules() if isinstance(m, torch.nn.Conv2d))
