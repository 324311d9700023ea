"""SSRVG-REC: image + expression -> box (REC) and mask (RES), read top-down:

    images ──Backbone──> stride-4 map, levels at strides 8/16/32/64
    text ────TextEncoder──> words, sentence
    levels + words ──FusionEncoder──> fused pixels (language-conditioned deformable attention)
    fused + sentence ──TokenProposals──> best-matching token: the decoder's start box
    sentence + words + fused ──QueryDecoder──> queries, a box per layer
    queries + fused + stride-4 ──PixelDecoder / MaskHead──> low-res mask logits
    (training aid) stride-8/16 levels ──attr_head──> every token's object labels (category, colour, ...;
                   for clips read from the memory after the temporal layers, the motion too)

Optional method components (docs/methods.md): ``align`` puts language inside the backbone (SegVG's
triple alignment, which also starts the queries; MagNet's CAM); ``grounding`` is MagNet's mask
grounding and ``cal_text`` the sentence side of its alignment loss (training outputs only); ``cmpc``
refines the fused levels (CMPC); a MultiGranularityHead as ``mask_head`` is SgMg's
segment-and-optimise head (then there is no pixel decoder); SgMg's spectrum fusion is inside
``fusion``. For clips (referring video segmentation, docs/video.md), ``temporal`` mixes the fused
memory across the frames of each clip and ``query_link`` the final queries.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import mask_postprocess
from .backbone import Backbone
from .align import StageAlignment
from .cmpc import ProgressiveComprehension
from .decoder import QueryDecoder
from .fusion import FusionEncoder
from .grounding import MaskGrounding
from .heads import MaskHead, PixelDecoder
from .multigranularity import MultiGranularityHead
from .position import sine_position, token_centres
from .proposal import TokenProposals
from .temporal import QueryLink, TemporalEncoder
from .text import TextEncoder


class SSRVG(nn.Module):
    def __init__(self, backbone: Backbone, text: TextEncoder, fusion: FusionEncoder, decoder: QueryDecoder,
                 pixel_decoder: PixelDecoder | None, mask_head: MaskHead | MultiGranularityHead, d_model: int,
                 levels: int = 4,
                 proposals: TokenProposals | None = None, attr_classes: list[int] | None = None,
                 mask_every_layer: bool = False, align: StageAlignment | None = None,
                 grounding: MaskGrounding | None = None, cal: dict | None = None,
                 cmpc: ProgressiveComprehension | None = None, temporal: TemporalEncoder | None = None,
                 query_link: QueryLink | None = None):
        """attr_classes: the number of classes (background included) of each label that the dense
        auxiliary head predicts for the tokens of the two finest levels; None: no such head.
        cal: the alignment loss's terms ({"p2p": bool, "p2t": bool}; None: no such loss)."""
        super().__init__()
        self.backbone, self.text, self.fusion, self.decoder = backbone, text, fusion, decoder
        self.proposals = proposals
        self.pixel_decoder, self.mask_head = pixel_decoder, mask_head
        self.level_embed = nn.Parameter(torch.randn(levels, d_model) * 0.02)
        self.attr_head = nn.Conv2d(d_model, sum(attr_classes), 1) if attr_classes else None
        self.mask_every_layer = mask_every_layer
        self.align, self.grounding, self.cmpc = align, grounding, cmpc
        self.cal = bool(cal and (cal["p2p"] or cal["p2t"]))
        feature_dim = pixel_decoder.mask_dim if pixel_decoder is not None else mask_head.k
        self.cal_text = nn.Linear(d_model, feature_dim) if cal and cal["p2t"] else None
        self.multigranularity = isinstance(mask_head, MultiGranularityHead)
        self.temporal, self.query_link = temporal, query_link

    def encode(self, images, text_ids, text_mask, image_index=None):
        """Backbone and text encoder: the stride-4 map, the levels, the words, the sentence, the
        aligned queries (None without triple alignment), the object-label logits (training) and the
        raw backbone features at strides 4 and 8 (SgMg's optimiser; else None)."""
        words = sentence = queries = None
        if self.align is not None:  # language enters the backbone: the text goes first
            if image_index is not None:
                raise ValueError("alignment inside the backbone needs one image per expression (data.exprs_per_image=1)")
            words, sentence = self.text(text_ids, text_mask)
            self.align.start(words, ~text_mask)
        f4, maps, raw = self.backbone(images, self.align, raw=self.multigranularity)
        if self.align is not None:
            words, queries = self.align.finish()
        attr_logits = None
        if self.attr_head is not None and self.training and self.temporal is None:  # the object under each token
            attr_logits = torch.cat([self.attr_head(m).flatten(2) for m in maps[:2]], 2).transpose(1, 2)
        if image_index is not None:
            f4, maps = (f4[image_index] if f4 is not None else None), [m[image_index] for m in maps]
            raw = [r[image_index] for r in raw] if raw else raw
        if words is None:
            words, sentence = self.text(text_ids, text_mask)
        return f4, maps, words, sentence, queries, attr_logits, raw

    def mask_features(self, fused, f4, raw):
        """What every decoder layer's mask is read from, computed once per forward: the pixel
        decoder's map, or SgMg's memory sum and raw backbone maps."""
        if self.multigranularity:
            return self.mask_head.features(fused, raw[1], raw[0])
        return self.pixel_decoder(fused, f4)

    def masks(self, queries, boxes, features):
        """One layer's mask logits, the coarse ones (SgMg; else None) and the pixel features they
        were read from."""
        if self.multigranularity:
            return self.mask_head(queries, features, boxes)
        return self.mask_head(queries, features, boxes), None, features

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                image_index: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                clip_len: int | None = None) -> dict:
        """images (B_img, 3, S, S); text_ids / text_mask (B, T), one row per expression. image_index
        (B,) int64: the row of ``images`` each expression refers to, when several share an image
        (the backbone then runs once per image); None: expression i is about image i. masks
        (B, S, S): the ground truth, an input of mask grounding (training only). The outputs have a
        row per expression, except ``attr_logits`` (one per image). clip_len T: the rows are clips of
        T consecutive frames (clip-major, each frame with its clip's expression), which the temporal
        modules connect; None: independent images."""
        f4, maps, words, sentence, aligned, attr_logits, raw = self.encode(images, text_ids, text_mask, image_index)
        word_pad = ~text_mask
        d = maps[0].shape[1]
        pos = torch.cat([sine_position(*m.shape[-2:], d, m.device, m.dtype) + self.level_embed[i]
                         for i, m in enumerate(maps)])
        memory, words, shapes, starts = self.fusion(maps, pos, words, word_pad)
        sizes = [tuple(m.shape[-2:]) for m in maps]
        if self.temporal is not None and clip_len:
            memory = self.temporal(memory, sizes, words, word_pad, clip_len)
        prop = self.proposals(memory, sentence, shapes) if self.proposals is not None else None
        queries, boxes = self.decoder(sentence, words, word_pad, memory, shapes, starts,
                                      prop["best_box"] if prop else None, prop["best_feature"] if prop else None, aligned)
        fused = [lvl.transpose(1, 2).reshape(m.shape) for lvl, m in zip(memory.split([h * w for h, w in sizes], 1), maps)]
        if self.temporal is not None and clip_len and self.attr_head is not None and self.training:
            # clips: the labels (a motion among them) are read from the memory after the temporal layers
            attr_logits = torch.cat([self.attr_head(m).flatten(2) for m in fused[:2]], 2).transpose(1, 2)
        if self.cmpc is not None:  # CMPC: word types, entity perception, relation graph, feature exchange
            fused = self.cmpc(fused, words, word_pad)
        features = self.mask_features(fused, f4, raw)
        if self.query_link is not None and clip_len:
            queries = [*queries[:-1], self.query_link(queries[-1], clip_len)]
        mask_logits, coarse, pixels = self.masks(queries[-1], boxes[-1], features)
        out = {"boxes": boxes[-1], "aux_boxes": boxes[:-1], "mask_logits": mask_logits}
        if coarse is not None and self.training:
            out["coarse_mask_logits"] = coarse
        if self.mask_every_layer and self.training:  # SegVG: every decoder layer also predicts the mask
            out["aux_mask_logits"] = torch.stack([self.masks(q, b, features)[0] for q, b in zip(queries[:-1], boxes[:-1])])
        if attr_logits is not None:
            out["attr_logits"] = attr_logits
            out["attr_points"] = torch.cat([token_centres(*m.shape[-2:], m.device) for m in maps[:2]])
        if prop is not None:
            out.update(proposal_scores=prop["scores"], proposal_boxes=prop["boxes"], anchors=prop["anchors"])
        if self.training and self.cal:  # MagNet's alignment loss: the mask features (and the sentence)
            out["cal_pixels"] = pixels
            if self.cal_text is not None:
                out["cal_text"] = self.cal_text(sentence)
        if self.training and self.grounding is not None and masks is not None:
            ids, targets = self.grounding.corrupt(text_ids, text_mask)
            masked_words, _ = self.text(ids, text_mask)
            n0 = maps[0].shape[-2] * maps[0].shape[-1]
            out.update(mg_logits=self.grounding(masked_words, word_pad, maps[0], pos[:n0], masks), mg_targets=targets)
        return out

    @torch.no_grad()
    def predict(self, batch: dict, threshold: float = 0.0) -> list[dict]:
        """Original-resolution box (xyxy pixels) and uint8 mask per sample, using the transform's meta."""
        out = self(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"),
                   clip_len=batch.get("clip_len"))
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
