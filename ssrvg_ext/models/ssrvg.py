"""SSRVG-REC: image + expression -> box (REC) and mask (RES), read top-down:

    images ──Backbone──> stride-4 map, levels at strides 8/16/32/64
    text ────TextEncoder──> words, sentence
    levels + words ──FusionEncoder──> fused pixels (language-conditioned deformable attention)
    fused + sentence ──TokenProposals──> best-matching token: the decoder's start box
    sentence + words + fused ──QueryDecoder──> queries, a box per layer
    queries + fused + stride-4 ──PixelDecoder / MaskHead──> low-res mask logits
    (training aid) stride-8/16 levels ──attr_head──> every token's object labels (category, colour, ...)
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import mask_postprocess
from .backbone import Backbone
from .decoder import QueryDecoder
from .fusion import FusionEncoder
from .heads import MaskHead, PixelDecoder
from .position import sine_position, token_centres
from .proposal import TokenProposals
from .text import TextEncoder


class SSRVG(nn.Module):
    def __init__(self, backbone: Backbone, text: TextEncoder, fusion: FusionEncoder, decoder: QueryDecoder,
                 pixel_decoder: PixelDecoder, mask_head: MaskHead, d_model: int, levels: int = 4,
                 proposals: TokenProposals | None = None, attr_classes: list[int] | None = None,
                 mask_every_layer: bool = False):
        """attr_classes: the number of classes (background included) of each label that the dense
        auxiliary head predicts for the tokens of the two finest levels; None: no such head."""
        super().__init__()
        self.backbone, self.text, self.fusion, self.decoder = backbone, text, fusion, decoder
        self.proposals = proposals
        self.pixel_decoder, self.mask_head = pixel_decoder, mask_head
        self.level_embed = nn.Parameter(torch.randn(levels, d_model) * 0.02)
        self.attr_head = nn.Conv2d(d_model, sum(attr_classes), 1) if attr_classes else None
        self.mask_every_layer = mask_every_layer

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                image_index: torch.Tensor | None = None) -> dict:
        """images (B_img, 3, S, S); text_ids / text_mask (B, T), one row per expression. image_index
        (B,) int64: the row of ``images`` each expression refers to, when several share an image
        (the backbone then runs once per image); None: expression i is about image i. The outputs
        have a row per expression, except ``attr_logits`` (one per image)."""
        f4, maps = self.backbone(images)
        attr_logits = None
        if self.attr_head is not None and self.training:  # the object under each visual token, before language
            attr_logits = torch.cat([self.attr_head(m).flatten(2) for m in maps[:2]], 2).transpose(1, 2)
        if image_index is not None:
            f4, maps = f4[image_index], [m[image_index] for m in maps]
        words, sentence = self.text(text_ids, text_mask)
        word_pad = ~text_mask
        d = maps[0].shape[1]
        pos = torch.cat([sine_position(*m.shape[-2:], d, m.device, m.dtype) + self.level_embed[i]
                         for i, m in enumerate(maps)])
        memory, words, shapes, starts = self.fusion(maps, pos, words, word_pad, sentence)
        prop = self.proposals(memory, sentence, shapes) if self.proposals is not None else None
        queries, boxes = self.decoder(sentence, words, word_pad, memory, shapes, starts,
                                      prop["best_box"] if prop else None, prop["best_feature"] if prop else None)
        fused = [lvl.transpose(1, 2).reshape(m.shape) for lvl, m in
                 zip(memory.split([int(h) * int(w) for h, w in (m.shape[-2:] for m in maps)], 1), maps)]
        pixels = self.pixel_decoder(fused, f4)
        mask_logits = self.mask_head(queries[-1], pixels, boxes[-1])
        out = {"boxes": boxes[-1], "aux_boxes": boxes[:-1], "mask_logits": mask_logits}
        if self.mask_every_layer and self.training:  # SegVG: every decoder layer also predicts the mask
            out["aux_mask_logits"] = torch.stack([self.mask_head(q, pixels, b) for q, b in zip(queries[:-1], boxes[:-1])])
        if attr_logits is not None:
            out["attr_logits"] = attr_logits
            out["attr_points"] = torch.cat([token_centres(*m.shape[-2:], m.device) for m in maps[:2]])
        if prop is not None:
            out.update(proposal_scores=prop["scores"], proposal_boxes=prop["boxes"], anchors=prop["anchors"])
        return out

    @torch.no_grad()
    def predict(self, batch: dict, threshold: float = 0.0) -> list[dict]:
        """Original-resolution box (xyxy pixels) and uint8 mask per sample, using the transform's meta."""
        out = self(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"))
        return postprocess(out, batch["meta"], threshold)


def postprocess(out: dict, metas: list[dict], threshold: float = 0.0) -> list[dict]:
    size = metas[0]["input_size"]
    boxes = out["boxes"].float() * size
    xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], -1)
    masks = mask_postprocess(out["mask_logits"].float(), (size, size), [m["valid"] for m in metas],
                             [m["orig_size"] for m in metas], threshold)
    res = []
    for b, m, meta in zip(xyxy.cpu(), masks, metas):
        sy, sx = meta["scale"]
        h, w = meta["orig_size"]
        box = (b / torch.tensor([sx, sy, sx, sy])).clamp_min(0)
        box = torch.minimum(box, torch.tensor([w, h, w, h], dtype=box.dtype))
        res.append({"box": box, "mask": m})
    return res
