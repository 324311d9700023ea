"""build_model(cfg) and build_criterion(cfg) from a config dict (see configs/).

Every default lives in ``configs/base.yaml``: each builder hands a config section to its module as
keyword arguments, and the modules built here have no defaults of their own. What comes from the
data rather than from a config (the vocabulary size, the object-label classes) is an argument,
stored in the checkpoint by the trainer.
"""

from __future__ import annotations

from .align import StageAlignment
from .backbone import Backbone
from .cmpc import ProgressiveComprehension
from .criterion import Criterion
from .decoder import QueryDecoder
from .fusion import FusionEncoder
from .grounding import MaskGrounding
from .heads import MaskHead, PixelDecoder
from .multigranularity import MultiGranularityHead
from .proposal import TokenProposals
from .ssrvg import SSRVG
from .temporal import QueryLink, TemporalEncoder
from .text import TextEncoder


def build_model(cfg: dict, vocab_size: int, aux_classes: dict | None = None,
                mask_token_id: int | None = None) -> SSRVG:
    """``vocab_size``: the tokenizer's; ``aux_classes``: {label: [values]} of the dense object-label
    loss (the trainer reads them from the data; a checkpoint keeps them); ``mask_token_id``: the
    tokenizer's mask token (needed by mask grounding)."""
    m = cfg["model"]
    d, levels = m["d_model"], m["levels"]
    b, a = m["backbone"], m["align"]
    in_backbone = bool(a["triple"] or a["cam"])
    if in_backbone and cfg["data"]["exprs_per_image"] != 1:
        raise ValueError("model.align puts language inside the backbone, which then runs once per expression: "
                         f"set data.exprs_per_image=1 (it is {cfg['data']['exprs_per_image']})")
    backbone = Backbone(b["name"], d, None if m["segment_optimizer"] else m["mask_dim"], pretrained=b["pretrained"], checkpoint=b["checkpoint"],
                        timm_kwargs=b["kwargs"], stage_hooks=in_backbone)
    text = TextEncoder(d, vocab_size=vocab_size, max_len=cfg["data"]["max_len"], **m["text"])
    fusion = FusionEncoder(d, levels=levels, **m["fusion"])
    q = dict(m["decoder"])
    mask_every_layer = q.pop("mask_every_layer")
    decoder = QueryDecoder(d, levels=levels, proposals=m["proposals"], **q)
    heads = m["fusion"]["heads"]
    align = StageAlignment(d, backbone.stage_channels, heads, a["triple"], a["cam"], a["cam_pools"],
                           decoder.num_queries) if in_backbone else None
    g = m["mask_grounding"]
    if g["enabled"] and mask_token_id is None:
        raise ValueError("model.mask_grounding needs the tokenizer's mask token: build_model(..., mask_token_id=tok.mask_id)")
    grounding = MaskGrounding(d, heads, vocab_size, mask_token_id, g["ratio"], g["replace"]) if g["enabled"] else None
    cal = {k: bool(cfg["loss"]["align"][k]) for k in ("p2p", "p2t")}
    if m["segment_optimizer"]:  # SgMg: kernels on the fusion memory, refined with the raw backbone maps
        pixel_decoder, mask_head = None, MultiGranularityHead(d, backbone.stage_channels[1], backbone.stage_channels[0])
    else:
        pixel_decoder, mask_head = PixelDecoder(d, m["mask_dim"], levels), MaskHead(d, m["mask_dim"])
    c = m["cmpc"]
    cmpc = ProgressiveComprehension(d, **c) if c["perception"] or c["exchange_rounds"] else None
    tm = m["temporal"]  # clips only (docs/video.md)
    temporal = TemporalEncoder(d, tm["layers"], tm["heads"], tm["ffn"]) if tm["layers"] else None
    return SSRVG(backbone, text, fusion, decoder, pixel_decoder, mask_head, d,
                 levels, TokenProposals(d) if m["proposals"] else None, attr_classes(cfg, aux_classes), mask_every_layer,
                 align, grounding, cal, cmpc, temporal, QueryLink(d, tm["heads"]) if tm["link_queries"] else None)


def attr_classes(cfg: dict, aux_classes: dict | None) -> list[int] | None:
    """Classes (background + values) per auxiliary label, or None when there is no such loss."""
    if not aux_classes or not cfg["loss"]["attr"]:
        return None  # no head without a loss to train it (DDP refuses parameters without gradients)
    return [len(v) + 1 for v in aux_classes.values()]


def build_criterion(cfg: dict, aux_classes: dict | None = None) -> Criterion:
    return Criterion(**cfg["loss"], attr_classes=attr_classes(cfg, aux_classes))
