"""build_model(cfg) and build_criterion(cfg): every part and every loss registered in one place.

Every default lives in ``ssrvg_ext/defaults.yaml``; each part builds itself from its config section
(``from_config(cfg, ctx)``, returning None when the config switches it off) and has no defaults of
its own. What comes from the data rather than from a config (the vocabulary size, the object-label
classes, the mask token) is in the :class:`~.registry.BuildContext`, stored in the checkpoint by
the trainer.

Adding a method (docs/design.md, "Adding a method"): its module with a ``from_config`` and the
hooks it joins the forward through, its keys in ``ssrvg_ext/defaults.yaml``, one line in
:data:`PARTS` (and one in :data:`LOSS_SPECS` when it has a loss).
"""

from __future__ import annotations

from .align import FusionTripleAlignment, StageAlignment
from .alignment_loss import AlignmentOutputs, alignment_loss
from .backbone import Backbone
from .clip_queries import ClipQueries, clip_class_loss
from .cmpc import ProgressiveComprehension, cmpc_enabled, cmpc_level_loss
from .criterion import (Criterion, LossSpec, loss_attr, loss_boxes, loss_coarse_masks, loss_masks, loss_proposals,
                        weights_boxes)
from .decoder import QueryDecoder
from .fusion import FusionEncoder
from .grounding import MaskGrounding, mask_grounding_loss
from .heads import PixelDecoder
from .multigranularity import mask_head_from_config
from .proposal import TokenProposals
from .refine import MaskRefiner
from .registry import COMPONENTS, LOSSES, BuildContext
from .ssrvg import SSRVG, attr_classes, attr_head_from_config, level_embed_from_config
from .temporal import QueryLink, TemporalEncoder
from .text import TextEncoder

# The model's parts, built in this order: the order their parameters are initialised in (appending
# keeps every existing model's initial weights) and in which a builder may read the parts before it.
PARTS = [
    ("backbone", Backbone.from_config),
    ("text", TextEncoder.from_config),
    ("fusion", FusionEncoder.from_config),
    ("decoder", QueryDecoder.from_config),
    ("align", StageAlignment.from_config),              # SegVG's triple alignment, MagNet's CAM
    ("grounding", MaskGrounding.from_config),           # MagNet's mask grounding
    ("pixel_decoder", PixelDecoder.from_config),
    ("mask_head", mask_head_from_config),               # or SgMg's segment-and-optimise head
    ("cmpc", ProgressiveComprehension.from_config),     # CMPC
    ("temporal", TemporalEncoder.from_config),          # clips
    ("proposals", TokenProposals.from_config),
    ("query_link", QueryLink.from_config),              # clips
    ("level_embed", level_embed_from_config),
    ("attr_head", attr_head_from_config),
    ("cal_text", AlignmentOutputs.from_config),         # MagNet's alignment loss
    ("fusion_align", FusionTripleAlignment.from_config),  # SegVG's triple alignment, interleaved
    ("clip_queries", ClipQueries.from_config),          # SgMg's clip-level queries (videos)
    ("mask_refine", MaskRefiner.from_config),           # the final mask refined at full resolution from the image
]


def on(*path):
    """enabled(cfg) of a loss switched on by the config value at ``path`` (truthy)."""
    def enabled(cfg):
        node = cfg
        for p in path:
            node = node[p]
        return bool(node)
    return enabled


# The losses, in the order their terms are summed into ``total`` (and computed: SgMg's clip matching
# first, since it picks the hypothesis the box and mask losses supervise).
LOSS_SPECS = [
    ("clip_match", LossSpec(clip_class_loss, on("model", "clip_queries"),
                            lambda cfg: {"clip_class": cfg["loss"]["clip_class"]}, needs_masks=True)),
    ("boxes", LossSpec(loss_boxes, lambda cfg: True, weights_boxes)),
    ("proposals", LossSpec(loss_proposals, lambda cfg: bool(cfg["model"]["proposals"] and cfg["loss"]["proposal"]),
                           lambda cfg: {"prop_score": cfg["loss"]["proposal"],
                                        "prop_l1": cfg["loss"]["proposal"] * cfg["loss"]["l1"],
                                        "prop_giou": cfg["loss"]["proposal"] * cfg["loss"]["giou"]})),
    ("attr", LossSpec(loss_attr, on("loss", "attr"), lambda cfg: {"attr": cfg["loss"]["attr"]})),
    ("mask_grounding", LossSpec(mask_grounding_loss, on("model", "mask_grounding", "enabled"),
                                lambda cfg: {"mg": cfg["loss"]["mask_grounding"]})),
    ("alignment", LossSpec(alignment_loss, lambda cfg: bool(cfg["loss"]["align"]["p2p"] or cfg["loss"]["align"]["p2t"]),
                           lambda cfg: {"cal_p2t": cfg["loss"]["align"]["p2t"], "cal_p2p": cfg["loss"]["align"]["p2p"]},
                           needs_masks=True)),
    ("masks", LossSpec(loss_masks, on("loss", "mask"),
                       lambda cfg: {f"mask_{k}": w for k, w in cfg["loss"]["mask"].items()})),
    ("coarse_masks", LossSpec(loss_coarse_masks, lambda cfg: bool(cfg["model"]["segment_optimizer"] and cfg["loss"]["mask"]),
                              lambda cfg: {f"mask_{k}_coarse": w for k, w in cfg["loss"]["mask"].items()})),
    ("cmpc_levels", LossSpec(cmpc_level_loss, lambda cfg: bool(cmpc_enabled(cfg) and cfg["model"]["cmpc"]["aux_masks"]),
                             lambda cfg: {f"cmpc_bce_{s}": cfg["loss"]["cmpc_aux"] for s in (8, 16, 32)},
                             needs_masks=True)),
]

for _name, _builder in PARTS:
    COMPONENTS.register(_name, _builder)
for _name, _spec in LOSS_SPECS:
    LOSSES.register(_name, _spec)


def build_model(cfg: dict, vocab_size: int, aux_classes: dict | None = None,
                mask_token_id: int | None = None) -> SSRVG:
    """``vocab_size``: the tokenizer's; ``aux_classes``: {label: [values]} of the dense object-label
    loss (the trainer reads them from the data; a checkpoint keeps them); ``mask_token_id``: the
    tokenizer's mask token (needed by mask grounding). Every registered part is built in order and
    handed to :class:`SSRVG` by name."""
    ctx = BuildContext(vocab_size, aux_classes, mask_token_id)
    for name, builder in COMPONENTS.items():
        ctx.parts[name] = builder(cfg, ctx)
    return SSRVG(**ctx.parts, mask_every_layer=cfg["model"]["decoder"]["mask_every_layer"])


def build_criterion(cfg: dict, aux_classes: dict | None = None) -> Criterion:
    return Criterion.from_config(cfg, attr_classes(cfg, aux_classes))
