"""Registries of the model's parts and of the criterion's losses (detectron2 / fvcore's ``Registry``,
kept in registration order).

* :data:`COMPONENTS`: name -> ``builder(cfg, ctx) -> nn.Module | None`` (usually a class's
  ``from_config``). :func:`~.build.build_model` calls them in registration order, which is the
  order the parameters are initialised in; ``None`` means "switched off by this config". A built
  part is handed to :class:`~.ssrvg.SSRVG` under its name.
* :data:`LOSSES`: name -> ``loss(crit, out, batch, ctx) -> {term: tensor}``; the criterion is built
  with the list of names its config switches on (:meth:`~.criterion.Criterion.from_config`).

Where a part joins the forward pass is its own business: a part that is not one of the model's
fixed slots implements one or more of the hooks in :data:`HOOKS` (docs/design.md, "Adding a
method"); a part whose config picks among them says which with an ``active_hooks`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


class Registry:
    """Named objects in registration order. ``register(name, obj)`` or ``@register(name)``; a name
    can be registered once (:meth:`unregister` first to replace it)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None):
        if obj is None:  # used as a decorator
            return lambda o: self.register(name, o)
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name)

    def get(self, name: str):
        if name not in self._items:
            raise KeyError(f"no {self.kind} named {name!r}; registered: {list(self._items)}")
        return self._items[name]

    def items(self):
        return list(self._items.items())

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(list(self._items))


COMPONENTS = Registry("model component")
LOSSES = Registry("loss")

# The forward pass's extension points, in the order the forward reaches them. A registered part
# that defines a method of one of these names is called there (with the :class:`ForwardState`):
HOOKS = (
    "fusion_layer",      # (i, pixels (B, S, d), words, state) -> (pixels, words): after fusion layer i (SegVG)
    "refine_memory",     # (memory (B, S, d), state) -> memory: after the fusion encoder (clips: temporal layers)
    "refine_levels",     # (fused levels [(B, d, h, w)], state) -> levels: before the mask branch (CMPC)
    "refine_queries",    # (final queries (B, Q, d), state) -> queries: before the mask head (clips: query link)
    "refine_masks",      # (final mask logits (B, h, w), state) -> logits: after the mask head (the full-res refiner)
    "training_outputs",  # (state) -> {output name: tensor}: extra outputs for a loss, training only (MagNet)
    "hypotheses",        # (decode, state) -> outputs: runs the heads (decode(offset)) once per hypothesis and
                         # combines them (SgMg's clip queries); at most one part
)


@dataclass
class BuildContext:
    """What a builder may read besides the config: what comes from the data (the vocabulary size,
    the object-label classes, the tokenizer's mask token) and the parts built before it."""
    vocab_size: int
    aux_classes: dict | None = None
    mask_token_id: int | None = None
    parts: dict[str, Any] = field(default_factory=dict)


@dataclass
class ForwardState:
    """What the hooks see of one forward pass (filled in as the forward goes; None until then).
    B rows, one per expression (clips: B = clips x clip_len frames, clip-major)."""
    text_ids: Any                   # (B, T) int64
    text_mask: Any                  # (B, T) bool, True = token
    word_pad: Any                   # (B, T) bool, True = padding
    clip_len: int | None            # frames per clip; None: independent images
    gt_masks: Any = None            # (B, S, S) uint8 ground truth (training, when given)
    reencode: Callable | None = None  # (other ids (B, T)) -> (levels, words) of the same images read with another
    #                                   expression of the same length: the levels never saw the first one's words
    maps: list | None = None        # the levels (B, d, h, w) at strides 8..64, before fusion
    pos: Any = None                 # (S_total, d) positions + level embeddings of the flattened levels
    sizes: list | None = None       # the levels' (h, w)
    words: Any = None               # (B, T, d) after the fusion encoder
    sentence: Any = None            # (B, d)
    pixels: Any = None              # the mask features the final mask was read from (B, C, h, w)
    extras: dict = field(default_factory=dict)  # what a part's hook hands to its own later hook (this pass only)
    init_queries: Any = None        # (B, Q, d) added to the decoder's starting queries (a part may set them)
    images: Any = None              # (B_img, 3, S, S) the input images
    image_index: Any = None         # (B,) int64: the image of each row; None: row i is image i
