"""SSRVG-REC: image + expression -> box (REC) and mask (RES), read top-down:

    images ──Backbone──> stride-4 map, levels at strides 8/16/32/64
    text ────TextEncoder──> words, sentence
    levels + words ──FusionEncoder──> fused pixels (language-conditioned deformable attention)
    fused + sentence ──TokenProposals──> best-matching token: the decoder's start box
    sentence + words + fused ──QueryDecoder──> queries, a box per layer
    queries + fused + stride-4 ──PixelDecoder / MaskHead──> low-res mask logits
    (training aid) stride-8/16 levels ──attr_head──> every token's object labels (category, colour, ...;
                   for clips read from the memory after the refine_memory hooks, the motion too)

The model's fixed slots are keyword arguments; everything else is a registered part that joins the
forward through a hook (:data:`~.registry.HOOKS`): ``refine_memory`` after the fusion encoder
(the temporal layers of clips), ``refine_levels`` before the mask branch (CMPC),
``refine_queries`` before the mask head (the query link of clips), ``training_outputs`` for a
loss's inputs (MagNet's mask grounding and alignment loss). ``align`` puts language inside the
backbone (SegVG's triple alignment, which also starts the queries; MagNet's CAM); a
MultiGranularityHead as ``mask_head`` is SgMg's segment-and-optimise head (then there is no pixel
decoder); SgMg's spectrum fusion is inside ``fusion``. docs/methods.md says which paper each follows.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..ops.mask_postprocess import mask_postprocess
from ..structures import Batch, ModelOutputs
from .align import StageAlignment
from .backbone import Backbone
from .decoder import QueryDecoder
from .fusion import FusionEncoder
from .heads import MaskHead, PixelDecoder
from .multigranularity import MultiGranularityHead
from .position import sine_position, token_centres
from .proposal import TokenProposals
from .registry import HOOKS, ForwardState
from .text import TextEncoder


class SSRVG(nn.Module):
    def __init__(self, *, backbone: Backbone, text: TextEncoder, fusion: FusionEncoder, decoder: QueryDecoder,
                 mask_head: MaskHead | MultiGranularityHead, level_embed: nn.Parameter,
                 pixel_decoder: PixelDecoder | None = None, proposals: TokenProposals | None = None,
                 attr_head: nn.Module | None = None, align: StageAlignment | None = None, mask_every_layer: bool = False,
                 **parts: nn.Module | None):
        """The fixed slots by name (None: switched off); ``level_embed`` (levels, d); ``attr_head``:
        the dense object-label head on the tokens of the two finest levels; ``mask_every_layer``:
        every decoder layer also predicts the mask in training (SegVG). ``parts``: the other
        registered parts (None: off), each joining the forward through the hooks it defines."""
        super().__init__()
        self.level_embed = level_embed
        self.backbone, self.text, self.fusion, self.decoder = backbone, text, fusion, decoder
        self.proposals = proposals
        self.pixel_decoder, self.mask_head = pixel_decoder, mask_head
        self.attr_head = attr_head
        self.mask_every_layer = mask_every_layer
        self.align = align
        self.hook_parts: dict[str, list[str]] = {h: [] for h in HOOKS}  # hook -> names of the parts defining it
        for name, part in parts.items():
            setattr(self, name, part)
            if part is None:
                continue
            hooks = getattr(part, "active_hooks", None) or [h for h in HOOKS if callable(getattr(part, h, None))]
            unknown = [h for h in hooks if h not in HOOKS or not callable(getattr(part, h, None))]
            if unknown:
                raise TypeError(f"model part {name!r} ({type(part).__name__}) lists hooks it does not have: {unknown}")
            if not hooks:
                raise TypeError(f"model part {name!r} ({type(part).__name__}) defines none of the hooks {HOOKS}: "
                                "nothing would call it")
            for h in hooks:
                self.hook_parts[h].append(name)
        self.multigranularity = isinstance(mask_head, MultiGranularityHead)

    def hooks(self, name: str) -> list:
        """The bound ``name`` hooks of the parts that define it, in registration order."""
        return [getattr(getattr(self, p), name) for p in self.hook_parts[name]]

    def fusion_hooks(self, st: ForwardState):
        """The fusion encoder's per-layer callback running the ``fusion_layer`` hooks (None without any)."""
        hooks = self.hooks("fusion_layer")
        if not hooks:
            return None

        def after(i, pixels, words):
            for hook in hooks:
                pixels, words = hook(i, pixels, words, st)
            return pixels, words
        return after

    def encode(self, images, text_ids, text_mask, image_index=None, labels: bool = True, st: ForwardState | None = None):
        """Backbone and text encoder: the stride-4 map, the levels, the words, the sentence, the
        aligned queries (None without triple alignment), the object-label logits (training, when
        ``labels``) and the raw backbone features at strides 4 and 8 (SgMg's optimiser; else None).
        With SegVG's text interleaving (``st`` given, model.align.triple_text) the text encoder stops
        after its embeddings: its layers run between the fusion layers (``st.extras["text_hidden"]``)."""
        words = sentence = queries = rewrite = None
        if self.align is not None:  # language enters the backbone: the text goes first
            if image_index is not None:
                raise ValueError("alignment inside the backbone needs one image per expression (data.exprs_per_image=1)")
            if self.align.text_chunks:  # MagNet: the text encoder's layers run between the stages
                hidden, layer_mask = self.text.embed(text_ids, text_mask)
                state = self.align.begin(hidden, ~text_mask, self.text, layer_mask)
            else:
                words, sentence = self.text(text_ids, text_mask)
                state = self.align.begin(words, ~text_mask)  # the words and queries the stages update
            rewrite = partial(self.align.stage, state)  # the backbone calls rewrite(i, stage i's output)
        fine, maps, raw = self.backbone(images, rewrite, raw=self.multigranularity)
        if self.align is not None:
            words, queries = self.align.end(state)
            sentence = state.get("sentence", sentence)
        attr_logits = None
        if self.attr_head is not None and self.training and labels:
            attr_logits = torch.cat([self.attr_head(m).flatten(2) for m in maps[:2]], 2).transpose(1, 2)
        if image_index is not None:
            fine, maps = (None if fine is None else [f[image_index] for f in fine]), [m[image_index] for m in maps]
            raw = [r[image_index] for r in raw] if raw else raw
        if words is None and st is not None and getattr(getattr(self, "fusion_align", None), "_text", None) is not None:
            hidden, layer_mask = self.text.embed(text_ids, text_mask)
            st.extras["text_hidden"] = (hidden, layer_mask)
            words, sentence = self.text.finish(hidden, text_mask)
        elif words is None:
            words, sentence = self.text(text_ids, text_mask)
        return fine, maps, words, sentence, queries, attr_logits, raw

    def reencode(self, images, text_mask, image_index, maps, ids):
        """The levels and words of the images read with the expression ``ids`` instead: without language
        in the backbone its levels ``maps`` are language-free and reused; with it (``align``) the
        backbone runs again, so that no word of the first expression reaches the levels."""
        if self.align is None:
            return maps, self.text(ids, text_mask)[0]
        _, levels, words, *_ = self.encode(images, ids, text_mask, image_index, labels=False)
        return levels, words

    def mask_features(self, fused, fine, raw):
        """What every decoder layer's mask is read from, computed once per forward: the pixel
        decoder's map, or SgMg's memory sum and raw backbone maps."""
        if self.multigranularity:
            return self.mask_head.features(fused, raw[1], raw[0])
        return self.pixel_decoder(fused, fine)

    def masks(self, queries, boxes, features):
        """One layer's mask logits, the coarse ones (SgMg; else None) and the pixel features they
        were read from."""
        if self.multigranularity:
            return self.mask_head(queries, features, boxes)
        return self.mask_head(queries, features, boxes), None, features

    def decode(self, st: ForwardState, memory, shapes, starts, prop, aligned, offset=None):
        """The query decoder: the queries and the box of every layer. ``offset`` (1, 1, d): added to
        every starting query (one hypothesis of SgMg's clip queries; None: none)."""
        init = aligned if offset is None else (offset if aligned is None else aligned + offset)
        return self.decoder(st.sentence, st.words, st.word_pad, memory, shapes, starts,
                            prop["best_box"] if prop else None, prop["best_feature"] if prop else None, init)

    def heads(self, st: ForwardState, features, queries, boxes) -> ModelOutputs:
        """The mask head on the decoded queries: the box, the mask (and, in training, each earlier
        layer's mask with ``mask_every_layer``, SgMg's coarse masks)."""
        final = queries[-1]
        for hook in self.hooks("refine_queries"):
            final = hook(final, st)
        mask_logits, coarse, st.pixels = self.masks(final, boxes[-1], features)
        for hook in self.hooks("refine_masks"):
            mask_logits = hook(mask_logits, st)
        out: ModelOutputs = {"boxes": boxes[-1], "aux_boxes": boxes[:-1], "mask_logits": mask_logits}
        st.extras["box_query"] = final[:, 0]
        if coarse is not None and self.training:
            out["coarse_mask_logits"] = coarse
        if self.mask_every_layer and self.training:  # SegVG, SgMg: every decoder layer also predicts the mask
            aux = [self.masks(q, b, features) for q, b in zip(queries[:-1], boxes[:-1])]
            out["aux_mask_logits"] = torch.stack([a[0] for a in aux])
            if coarse is not None:  # SgMg: and its coarse mask
                out["aux_coarse_mask_logits"] = torch.stack([a[1] for a in aux])
        return out

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                image_index: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                clip_len: int | None = None) -> ModelOutputs:
        """images (B_img, 3, S, S); text_ids / text_mask (B, T), one row per expression. image_index
        (B,) int64: the row of ``images`` each expression refers to, when several share an image
        (the backbone then runs once per image); None: expression i is about image i. masks
        (B, S, S): the ground truth, an input of mask grounding (training only). clip_len T: the
        rows are clips of T consecutive frames (clip-major, each frame with its clip's expression),
        which the temporal parts connect; None: independent images. Returns
        :class:`~ssrvg_ext.structures.ModelOutputs` (which keys, their shapes, when present)."""
        st = ForwardState(text_ids, text_mask, ~text_mask, clip_len, masks if self.training else None,
                          images=images, image_index=image_index)
        # clips with parts on the memory (the temporal layers): the object labels are read after them
        late_labels = bool(clip_len) and bool(self.hook_parts["refine_memory"])
        fine, maps, words, sentence, aligned, attr_logits, raw = self.encode(images, text_ids, text_mask, image_index,
                                                                           labels=not late_labels, st=st)
        st.reencode = partial(self.reencode, images, text_mask, image_index, maps)
        d = maps[0].shape[1]
        pos = torch.cat([sine_position(*m.shape[-2:], d, m.device, m.dtype) + self.level_embed[i]
                         for i, m in enumerate(maps)])
        sizes = [tuple(m.shape[-2:]) for m in maps]
        st.maps, st.pos, st.sizes, st.sentence = maps, pos, sizes, sentence
        memory, words, shapes, starts = self.fusion(maps, pos, words, st.word_pad, self.fusion_hooks(st))
        st.words = words
        if aligned is None:
            aligned = st.init_queries
        for hook in self.hooks("refine_memory"):
            memory = hook(memory, st)
        prop = self.proposals(memory, st.sentence, shapes) if self.proposals is not None else None
        hypotheses = self.hooks("hypotheses")  # SgMg's clip queries: the heads run once per hypothesis
        decode = partial(self.decode, st, memory, shapes, starts, prop, aligned)
        decoded = decode() if not hypotheses else None
        fused = [lvl.transpose(1, 2).reshape(m.shape) for lvl, m in zip(memory.split([h * w for h, w in sizes], 1), maps)]
        if late_labels and self.attr_head is not None and self.training:
            # clips: the labels (a motion among them) are read from the memory after the temporal layers
            attr_logits = torch.cat([self.attr_head(m).flatten(2) for m in fused[:2]], 2).transpose(1, 2)
        for hook in self.hooks("refine_levels"):
            fused = hook(fused, st)
        features = self.mask_features(fused, fine, raw)
        if hypotheses:
            out: ModelOutputs = hypotheses[0](lambda offset: self.heads(st, features, *decode(offset)), st)
        else:
            out = self.heads(st, features, *decoded)
        if attr_logits is not None:
            out["attr_logits"] = attr_logits
            out["attr_points"] = torch.cat([token_centres(*m.shape[-2:], m.device) for m in maps[:2]])
        if prop is not None:
            out.update(proposal_scores=prop["scores"], proposal_boxes=prop["boxes"], anchors=prop["anchors"])
        if self.training:
            for hook in self.hooks("training_outputs"):
                out.update(hook(st))
        return out

    @torch.no_grad()
    def predict(self, batch: Batch, threshold: float = 0.0) -> list[dict]:
        """Original-resolution box (xyxy pixels) and uint8 mask per sample, using the transform's meta."""
        out = self(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"),
                   clip_len=batch.get("clip_len"))
        return postprocess(out, batch["meta"], threshold)


def level_embed_from_config(cfg: dict, ctx=None) -> nn.Parameter:
    """One learned embedding per level (model.levels, model.d_model), added to the positions."""
    m = cfg["model"]
    return nn.Parameter(torch.randn(m["levels"], m["d_model"]) * 0.02)


def attr_classes(cfg: dict, aux_classes: dict | None) -> list[int] | None:
    """Classes (background + values) per auxiliary label, or None when there is no such loss."""
    if not aux_classes or not cfg["loss"]["attr"]:
        return None  # no head without a loss to train it (DDP refuses parameters without gradients)
    return [len(v) + 1 for v in aux_classes.values()]


def attr_head_from_config(cfg: dict, ctx) -> nn.Conv2d | None:
    """The dense object-label head: one 1x1 conv giving every label's classes; None without labels
    in the data (``ctx.aux_classes``) or without their loss (loss.attr = 0)."""
    classes = attr_classes(cfg, ctx.aux_classes)
    return nn.Conv2d(cfg["model"]["d_model"], sum(classes), 1) if classes else None


def postprocess(out: dict, metas: list[dict], threshold: float = 0.0) -> list[dict]:
    """Per row: ``box`` xyxy in the original image's pixels, ``mask`` (H, W) uint8 at its size, and
    ``score`` in (0, 1), the model's confidence: the sigmoid of the best token proposal's score, or
    without proposals the mean mask probability over the pixels it calls the object."""
    size = metas[0]["input_size"]
    boxes = out["boxes"].float() * size
    xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], -1)
    masks = mask_postprocess(out["mask_logits"].float(), (size, size), [m["valid"] for m in metas],
                             [m["orig_size"] for m in metas], threshold)
    if "clip_score" in out:  # SgMg's clip queries: the chosen hypothesis' class score
        scores = out["clip_score"].float()
    elif "proposal_scores" in out:
        scores = torch.sigmoid(out["proposal_scores"].float().max(1).values)
    else:
        prob = torch.sigmoid(out["mask_logits"].float())
        inside = prob > 0.5
        scores = (prob * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp_min(1)
    res = []
    for b, m, s, meta in zip(xyxy.cpu(), masks, scores.tolist(), metas):
        sy, sx = meta["scale"]
        h, w = meta["orig_size"]
        box = (b / torch.tensor([sx, sy, sx, sy])).clamp_min(0)
        box = torch.minimum(box, torch.tensor([w, h, w, h], dtype=box.dtype))
        res.append({"box": box, "mask": m, "score": s})
    return res
