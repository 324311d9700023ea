"""Language inside the visual backbone, after its timm stages (docs/methods.md):

* :class:`TripleAlignment` -- SegVG's triple alignment: the decoder's queries, the words and the
  stage's pixels updated together by one joint attention (one softmax over all three sets), with
  per-modality norms and projections and a residual, no FFN.
* :class:`CrossModalAlignment` -- MagNet's cross-modal alignment module (CAM): pixel-word attention
  at the full resolution and on pooled grids ({1, 2, 3, 6}), mixed into the feature the rest of
  the model reads, while the backbone's next stage reads the gated full-resolution fusion.
* :class:`StageAlignment` -- the modules of each stage and the state (words, queries) they pass on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from .position import sine_position


class PixelWordAttention(nn.Module):
    """LAVT's pixel-word attention module: every pixel attends to the words (one head, softmax over
    the words); the result multiplies the pixel's own projection, then a 1x1 conv + GELU."""

    def __init__(self, c: int, d_lang: int):
        super().__init__()
        self.vis = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU())
        self.query = nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c))
        self.key, self.value = nn.Linear(d_lang, c), nn.Linear(d_lang, c)
        self.lang = nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c))
        self.out = nn.Sequential(nn.Conv2d(c, c, 1), nn.GELU())

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x.flatten(2).transpose(1, 2))  # (B, HW, C)
        keep = (~word_pad)[:, :, None].to(words.dtype)
        k, v = self.key(words) * keep, self.value(words) * keep
        att = (q @ k.transpose(1, 2)) * c ** -0.5
        att = att.masked_fill(word_pad[:, None, :], torch.finfo(att.dtype).min).softmax(-1)
        lang = self.lang(att @ v).transpose(1, 2).reshape(b, c, h, w)
        return self.out(self.vis(x) * lang)


class WordPixelAttention(nn.Module):
    """MagNet's language-side half of the alignment (``bert/multimodal_bert.py``): the words attend
    to the stage's pixels (query: Linear + LayerNorm of the words; keys and values: 1x1 conv +
    InstanceNorm of the pixels; one head, softmax over the pixels), the result (Linear + LayerNorm)
    multiplies a GELU projection of the words, then Linear + GELU back to the words' width; added to
    the words through a gate tanh(W2 ReLU(W1 .)) closed at the start (W2 = 0)."""

    def __init__(self, c: int, d: int):
        super().__init__()
        self.query = nn.Sequential(nn.Linear(d, c), nn.LayerNorm(c))
        self.key = nn.Sequential(nn.Conv2d(c, c, 1), nn.InstanceNorm2d(c))
        self.value = nn.Sequential(nn.Conv2d(c, c, 1), nn.InstanceNorm2d(c))
        self.vis = nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c))
        self.lang = nn.Sequential(nn.Linear(d, c), nn.GELU())
        self.out = nn.Sequential(nn.Linear(c, d), nn.GELU())
        self.gate = nn.Sequential(nn.Linear(d, d, bias=False), nn.ReLU(), nn.Linear(d, d, bias=False), nn.Tanh())
        nn.init.zeros_(self.gate[2].weight)  # closed at the start: the words are the text encoder's

    def forward(self, words: torch.Tensor, word_pad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        k, v = self.key(x).flatten(2), self.value(x).flatten(2)  # (B, C, HW)
        att = (self.query(words) @ k) * c ** -0.5  # (B, T, HW)
        res = self.out(self.vis(att.softmax(-1) @ v.transpose(1, 2)) * self.lang(words))
        res = res * (~word_pad)[..., None].to(res.dtype)  # padding stays as it was
        return words + self.gate(res) * res


class CrossModalAlignment(nn.Module):
    """MagNet's CAM on one stage of C channels. Returns (trunk, feature): the next stage reads
    x + gate * PWAM(x), the gate tanh(W2 GELU(W1 .)) closed at the start (W2 = 0); the model reads
    the mixer over [pooled branches, PWAM(x)]. The last stage (``gate=False``) has no next stage:
    its trunk is x and it has no gate."""

    def __init__(self, c: int, d_lang: int, pools: list[int], gate: bool):
        super().__init__()
        r = max(c // 4, 1)
        self.pools = list(pools)
        self.full = PixelWordAttention(c, d_lang)
        self.gate = nn.Sequential(nn.Linear(c, c, bias=False), nn.GELU(), nn.Linear(c, c, bias=False), nn.Tanh()) \
            if gate else None
        if gate:  # closed at the start: the trunk is the plain backbone's (the first projection stays random, else
            nn.init.zeros_(self.gate[2].weight)  # both get zero gradients and the gate never opens; docs/methods.md)
        self.reduce = nn.ModuleList(nn.Sequential(
            nn.Conv2d(c, 4 * c, 1, bias=False), LayerNorm2d(4 * c), nn.Conv2d(4 * c, c, 1, bias=False), nn.GELU(),
            nn.Conv2d(c, r, 1, bias=False)) for _ in self.pools)
        self.pooled = nn.ModuleList(PixelWordAttention(r, d_lang) for _ in self.pools)
        self.mix = nn.Sequential(nn.Linear(c + r * len(self.pools), c), nn.LayerNorm(c), nn.Linear(c, c), nn.GELU())

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor):
        full = self.full(x, words, word_pad)
        branches = [F.interpolate(pwam(red(F.adaptive_avg_pool2d(x, p)), words, word_pad), size=x.shape[-2:],
                                  mode="bilinear", align_corners=True)
                    for p, red, pwam in zip(self.pools, self.reduce, self.pooled)]
        feature = self.mix(torch.cat(branches + [full], 1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.gate is None:
            return x, feature
        return x + self.gate(full.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * full, feature


class TripleAlignment(nn.Module):
    """SegVG's triple alignment on one stage: [queries; words; pixels] -> one multi-head attention
    where every token attends to every token (text padding masked), per-modality pre-norms,
    Q/K/V and output projections, a residual, no FFN. As in SegVG (DETR's habit), the positions are
    added to the normalised tokens before the Q and K projections (the queries' learned positions,
    the pixels' C-wide sine positions); the values carry no position."""

    def __init__(self, d: int, c: int, heads: int, pos_before_proj: bool = True, t: int | None = None):
        """``d``: queries (and the attention) width; ``c``: the pixels'; ``t``: the words' (default d;
        the text encoder's hidden size when the words are its hidden states, as in SegVG)."""
        super().__init__()
        t = t or d
        self.heads, self.pos_before_proj = heads, pos_before_proj
        self.norms = nn.ModuleList([nn.LayerNorm(d), nn.LayerNorm(t), nn.LayerNorm(c)])
        self.qkv = nn.ModuleList([nn.Linear(d, 3 * d), nn.Linear(t, 3 * d), nn.Linear(c, 3 * d)])
        self.out = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, t), nn.Linear(d, c)])

    def forward(self, queries, query_pos, words, word_pad, pixels, pixel_pos):
        """queries (B, Q, d), query_pos (Q, d), words (B, T, d), pixels (B, N, C), pixel_pos (N, C)
        (``pos_before_proj=False``, the layout of checkpoints saved before it: (N, d), added after the
        projections)."""
        streams = (queries, words, pixels)
        qs, ks, vs = [], [], []
        for x, norm, qkv, pos in zip(streams, self.norms, self.qkv, (query_pos, None, pixel_pos)):
            h = norm(x)
            if not self.pos_before_proj:
                q, k, v = qkv(h).chunk(3, -1)
                q, k = (q, k) if pos is None else (q + pos, k + pos)
                qs.append(q), ks.append(k), vs.append(v)
                continue
            wq, wk, wv = qkv.weight.chunk(3, 0)
            bq, bk, bv = qkv.bias.chunk(3)
            at = h if pos is None else h + pos  # what Q and K read
            qs.append(F.linear(at, wq, bq)), ks.append(F.linear(at, wk, bk)), vs.append(F.linear(h, wv, bv))
        b, d = queries.shape[0], qs[0].shape[-1]

        def heads(parts):  # (B, L, d) pieces -> (B, heads, L, d / heads)
            return torch.cat(parts, 1).view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        keep = torch.ones(b, queries.shape[1] + words.shape[1] + pixels.shape[1], dtype=torch.bool, device=words.device)
        keep[:, queries.shape[1]:queries.shape[1] + words.shape[1]] = ~word_pad
        att = F.scaled_dot_product_attention(heads(qs), heads(ks), heads(vs), attn_mask=keep[:, None, None, :])
        att = att.transpose(1, 2).reshape(b, -1, d).split([x.shape[1] for x in streams], 1)
        return [x + out(a) for x, out, a in zip(streams, self.out, att)]


class StageAlignment(nn.Module):
    """The alignment modules after the backbone stages at ``strides`` of channels ``channels`` (the
    four stages at strides 4, 8, 16, 32). One forward pass: ``state = begin(words, word_pad)``
    (the words and queries the stages update); ``stage(state, i, x)`` for stage i's output x
    (B, C, H, W) returns what the next stage reads and the feature the model reads (triple
    alignment first, then CAM); ``end(state)`` returns the words (updated by triple alignment) and
    the aligned queries (None without triple alignment)."""

    STRIDES = (4, 8, 16, 32)

    def __init__(self, d: int, channels: list[int], heads: int, triple: list[int], cam: list[int],
                 cam_pools: list[int], num_queries: int, triple_pos: str = "input", cam_words: bool = False,
                 text_layers: int = 0, text_width: int | None = None):
        """``text_layers`` > 0: MagNet's interleaving (model.align.cam_text): the text encoder's
        ``text_layers`` layers run in chunks, chunk j before CAM stage j, and CAM and the language side
        read and update its hidden states (width ``text_width``) instead of the projected words."""
        super().__init__()
        for key, strides in (("triple", triple), ("cam", cam)):
            bad = [s for s in strides if s not in self.STRIDES]
            if bad:
                raise ValueError(f"model.align.{key}: strides {bad} are not backbone stages (choose from {self.STRIDES})")
        if text_layers and (triple or not cam):
            raise ValueError("model.align.cam_text interleaves the text encoder with the CAM stages: it needs model.align.cam "
                             "and cannot be combined with model.align.triple")
        t = text_width if text_layers else d  # the words' width: the text encoder's (MagNet: BERT's 768) or d_model
        self.cam = nn.ModuleDict({str(s): CrossModalAlignment(c, t, cam_pools, gate=s != self.STRIDES[-1])
                                  for s, c in zip(self.STRIDES, channels) if s in cam})
        if triple_pos not in ("input", "projected"):
            raise ValueError(f"model.align.triple_pos must be input or projected; got {triple_pos!r}")
        self.triple = nn.ModuleDict({str(s): TripleAlignment(d, c, heads, triple_pos == "input")
                                     for s, c in zip(self.STRIDES, channels) if s in triple})
        if self.triple:
            self.query_embed = nn.Embedding(num_queries, d)
            self.query_pos = nn.Embedding(num_queries, d)
            self.query_proj = nn.Linear(d, d)
        # MagNet's language side: after each CAM stage but the last, the words read that stage's pixels
        self.cam_words = nn.ModuleDict({str(s): WordPixelAttention(c, t) for s, c in zip(self.STRIDES, channels)
                                        if cam_words and s in cam and s != self.STRIDES[-1]})
        # MagNet's chunks (BERT's 12 layers: 3 before each of the 4 stages): the layers [start, stop) that run
        # before each CAM stage, all of them by the last (rounded up: the first stage never reads bare embeddings)
        k = len(self.cam)
        bounds = [0] + [-(-j * text_layers // k) for j in range(1, k)] + [text_layers]
        self.text_chunks = {s: (bounds[j], bounds[j + 1]) for j, s in enumerate(sorted(self.cam, key=int))} \
            if text_layers else {}

    @classmethod
    def from_config(cls, cfg: dict, ctx) -> "StageAlignment | None":
        """model.align (None when it puts nothing in the backbone); the stages' channels, the number
        of queries and (model.align.cam_text) the text encoder's depth and width come from the parts
        built before it."""
        m = cfg["model"]
        a = m["align"]
        if a["cam_text"] and not a["cam"]:
            raise ValueError("model.align.cam_text interleaves the text encoder with MagNet's CAM stages: set model.align.cam")
        if not (a["triple"] or a["cam"]):
            return None
        if cfg["data"]["exprs_per_image"] != 1:
            raise ValueError("model.align puts language inside the backbone, which then runs once per expression: "
                             f"set data.exprs_per_image=1 (it is {cfg['data']['exprs_per_image']})")
        bert = ctx.parts["text"].bert.config
        return cls(m["d_model"], ctx.parts["backbone"].stage_channels, m["fusion"]["heads"], a["triple"], a["cam"],
                   a["cam_pools"], ctx.parts["decoder"].num_queries, a["triple_pos"], a["cam_words"],
                   text_layers=bert.num_hidden_layers if a["cam_text"] else 0, text_width=bert.hidden_size)

    def begin(self, words: torch.Tensor, word_pad: torch.Tensor, text=None, layer_mask=None) -> dict:
        """The state of one forward pass: the words, their padding and the queries (triple alignment).
        With model.align.cam_text, ``words`` are the text encoder ``text``'s embeddings (its
        ``embed``, with the ``layer_mask`` its layers take): its layers run between the stages."""
        if bool(self.text_chunks) != (text is not None):
            raise ValueError("StageAlignment.begin: the text encoder and its embeddings are needed exactly when "
                             "model.align.cam_text interleaves it with the stages")
        q = self.query_embed.weight[None].expand(words.shape[0], -1, -1) if self.triple else None
        return {"words": words, "pad": word_pad, "queries": q, "text": text, "layer_mask": layer_mask}

    def stage(self, st: dict, i: int, x: torch.Tensor):
        s = str(self.STRIDES[i])
        if s in self.triple:
            b, c, h, w = x.shape
            width = c if self.triple[s].pos_before_proj else st["words"].shape[-1]  # added to the pixels, or to Q / K
            pos = sine_position(h, w, -(-width // 4) * 4, x.device, x.dtype)[:, :width]
            st["queries"], st["words"], pix = self.triple[s](st["queries"], self.query_pos.weight, st["words"], st["pad"],
                                                             x.flatten(2).transpose(1, 2), pos)
            x = pix.transpose(1, 2).reshape(b, c, h, w)
        if s in self.cam:  # after the triple alignment of the same stage: its feature reads the aligned pixels
            if s in self.text_chunks:  # MagNet: the text encoder's next layers first
                st["words"] = st["text"].run_layers(st["words"], st["layer_mask"], *self.text_chunks[s])
            trunk, feature = self.cam[s](x, st["words"], st["pad"])
            if s in self.cam_words:  # the words the next stages (and the rest of the model) read; as MagNet,
                st["words"] = self.cam_words[s](st["words"], st["pad"], x)  # from the stage's output, not the trunk
            return trunk, feature
        return x, x

    def end(self, st: dict):
        """The words the rest of the model reads and the aligned queries (None without triple
        alignment); with model.align.cam_text the hidden states projected, and ``st["sentence"]``."""
        q = self.query_proj(st["queries"]) if self.triple else None
        if self.text_chunks:
            words, st["sentence"] = st["text"].finish(st["words"], ~st["pad"])
            return words, q
        return st["words"], q


class FusionTripleAlignment(nn.Module):
    """SegVG's placement of triple alignment (``models/vl_transformer.py``: a Tri-MHA layer after each
    visual encoder layer): after every layer of the fusion encoder -- the multimodal encoder here --
    one :class:`TripleAlignment` updates the queries, the fused words and the fused tokens of one
    level (``level``: stride 32 by default, SegVG's visual tokens) together; the queries start from
    learned embeddings and, projected, are added to the decoder's starting queries."""

    def __init__(self, d: int, heads: int, layers: int, num_queries: int, level: int = 2, text=None):
        """``text``: the model's TextEncoder when SegVG's text interleaving is on (model.align.triple_text):
        its layers then run in chunks between the alignment steps, which align its hidden states."""
        super().__init__()
        width = text.bert.config.hidden_size if text is not None else d
        self.layers = nn.ModuleList(TripleAlignment(d, d, heads, t=width) for _ in range(layers))
        object.__setattr__(self, "_text", text)  # a reference, not a submodule (it is the model's ``text``)
        if text is not None:
            n = len(text.bert.encoder.layer)
            self.chunks = [(round(i * n / layers), round((i + 1) * n / layers)) for i in range(layers)]
        self.query_embed = nn.Embedding(num_queries, d)
        self.query_pos = nn.Embedding(num_queries, d)
        self.query_proj = nn.Linear(d, d)
        self.level = level

    @classmethod
    def from_config(cls, cfg: dict, ctx) -> "FusionTripleAlignment | None":
        """model.align.triple_fusion (SegVG's interleaved placement); as many layers as the fusion encoder;
        model.align.triple_text: the text encoder's layers interleaved too (SegVG's full placement)."""
        m = cfg["model"]
        if m["align"]["triple_text"] and not m["align"]["triple_fusion"]:
            raise ValueError("model.align.triple_text interleaves the text encoder with the fusion layers' triple "
                             "alignment: it needs model.align.triple_fusion")
        if not m["align"]["triple_fusion"]:
            return None
        if m["align"]["triple"]:
            raise ValueError("model.align.triple (after backbone stages) and model.align.triple_fusion (interleaved "
                             "with the fusion encoder) both start the decoder's queries: choose one")
        if m["align"]["triple_text"] and (m["align"]["cam"] or m["align"]["triple"]):
            raise ValueError("model.align.triple_text runs the text encoder's layers between the fusion layers: it "
                             "cannot also feed language into the backbone (model.align.cam / model.align.triple)")
        text = ctx.parts["text"] if m["align"]["triple_text"] else None
        return cls(m["d_model"], m["fusion"]["heads"], m["fusion"]["layers"], ctx.parts["decoder"].num_queries,
                   level=min(2, m["levels"] - 1), text=text)

    def fusion_layer(self, i: int, pixels: torch.Tensor, words: torch.Tensor, st):
        """Hook (after fusion layer i): returns the pixels with the level's tokens aligned, and the words."""
        q = st.extras.pop("triple_queries", None)
        if q is None:
            q = self.query_embed.weight[None].expand(pixels.shape[0], -1, -1)
        start = sum(h * w for h, w in st.sizes[:self.level])
        n = st.sizes[self.level][0] * st.sizes[self.level][1]
        text = self._text
        if text is not None and "text_hidden" in st.extras:  # SegVG: the text encoder's next layers, then align
            hidden, mask4 = st.extras["text_hidden"]
            hidden = text.run_layers(hidden, mask4, *self.chunks[i])
            q, hidden, tokens = self.layers[i](q, self.query_pos.weight, hidden, st.word_pad,
                                               pixels[:, start:start + n], st.pos[start:start + n])
            st.extras["text_hidden"] = (hidden, mask4)
            words, sentence = text.finish(hidden, ~st.word_pad)
            if i + 1 == len(self.layers):
                st.sentence = sentence
        else:
            q, words, tokens = self.layers[i](q, self.query_pos.weight, words, st.word_pad, pixels[:, start:start + n],
                                              st.pos[start:start + n])
        if i + 1 < len(self.layers):
            st.extras["triple_queries"] = q
        else:
            st.init_queries = self.query_proj(q)
        return torch.cat([pixels[:, :start], tokens, pixels[:, start + n:]], 1), words
