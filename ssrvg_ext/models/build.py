"""build_model(cfg) and build_criterion(cfg) from a config dict (see configs/)."""

from __future__ import annotations

from .backbone import Backbone
from .criterion import Criterion
from .decoder import QueryDecoder
from .fusion import FusionEncoder
from .heads import MaskHead, PixelDecoder
from .proposal import TokenProposals
from .ssrvg import SSRVG
from .text import TextEncoder


def build_model(cfg: dict, vocab_size: int | None = None) -> SSRVG:
    m = cfg["model"]
    d, mask_dim, levels = m["d_model"], m["mask_dim"], m.get("levels", 4)
    b, t, f, q = m["backbone"], m["text"], m["fusion"], m["decoder"]
    backbone = Backbone(b["name"], d, mask_dim, pretrained=b.get("pretrained", False), checkpoint=b.get("checkpoint"),
                        timm_kwargs=b.get("kwargs"))
    text = TextEncoder(d, t.get("name_or_path"), vocab_size or t.get("vocab_size", 1000), t.get("hidden", 128),
                       t.get("layers", 2), t.get("heads", 2), cfg.get("data", {}).get("max_len", 32), t.get("freeze", False))
    fusion = FusionEncoder(d, f["layers"], f["heads"], levels, f["points"], f["ffn"], f.get("spectrum", False),
                           f.get("global_attn", False))
    use_prop = m.get("proposals", True)
    decoder = QueryDecoder(d, q["layers"], q["heads"], levels, q["points"], q["ffn"], q.get("mask_queries", 0), use_prop)
    return SSRVG(backbone, text, fusion, decoder, PixelDecoder(d, mask_dim, levels), MaskHead(d, mask_dim), d, levels,
                 TokenProposals(d) if use_prop else None, attr_classes(cfg))


def attr_classes(cfg: dict) -> list[int] | None:
    """Classes (background + values) per auxiliary label; the trainer fills ``model.aux_classes``
    from the data (``data.aux_labels``), so the saved config rebuilds the same model."""
    aux = cfg["model"].get("aux_classes")
    if not aux or not cfg.get("loss", {}).get("attr", 1.0):
        return None  # no head without a loss to train it (DDP refuses parameters without gradients)
    return [len(v) + 1 for v in aux.values()]


def build_criterion(cfg: dict) -> Criterion:
    lc = cfg.get("loss", {})
    return Criterion(lc.get("l1", 5.0), lc.get("giou", 2.0), lc.get("aux", 0.5), lc.get("mask"),
                     lc.get("box_to_mask", False), lc.get("focal_alpha", 0.25), lc.get("focal_gamma", 2.0),
                     lc.get("proposal", 1.0), lc.get("attr", 1.0), attr_classes(cfg))
