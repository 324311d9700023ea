"""CMPC's cross-modal progressive comprehension on the fused levels (docs/methods.md):

* :class:`WordTypes` -- every word softly classified as entity / attribute / relation / unnecessary.
* :class:`EntityPerception` -- entity + attribute words, multiplicatively fused with each level and
  its coordinates (MUTAN-style heads): all candidate objects highlighted.
* :class:`RelationGraph` -- nodes = the positions of a level, edges = node -> relation word -> node
  affinities (never materialised as HW x HW), residual graph convolutions.
* :class:`FeatureExchange` -- TGFE: each level receives the other levels under gates from a
  sentence-attended summary of itself, for a few rounds, all levels in parallel.
* :class:`TemporalGraph` -- CMPC-V (``video``): a node per frame of a clip pooled under the action
  words, a graph over the frames, and every cell's temporal context from the nodes.

:class:`ProgressiveComprehension` runs them on the levels at strides 8, 16, 32 and adds the result to
them (the stride-64 level passes unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import upsampled_mask_loss_terms


def coords(b: int, h: int, w: int, device, dtype) -> torch.Tensor:
    """CMPC's 8 coordinate channels (B, 8, h, w): x / y min, max, centre of each cell, 1/w, 1/h."""
    xs = torch.arange(w, device=device, dtype=dtype)
    ys = torch.arange(h, device=device, dtype=dtype)
    x0, x1, xc = xs / w * 2 - 1, (xs + 1) / w * 2 - 1, (xs + 0.5) / w * 2 - 1
    y0, y1, yc = ys / h * 2 - 1, (ys + 1) / h * 2 - 1, (ys + 0.5) / h * 2 - 1
    planes = [v[None, :].expand(h, w) for v in (x0, x1, xc)] + [v[:, None].expand(h, w) for v in (y0, y1, yc)]
    planes += [torch.full((h, w), 1 / w, device=device, dtype=dtype), torch.full((h, w), 1 / h, device=device, dtype=dtype)]
    return torch.stack(planes)[None].expand(b, -1, -1, -1)


class WordTypes(nn.Module):
    """p (B, T, 4) over (entity, attribute, relation, unnecessary); with ``action`` (CMPC-V) p (B, T, 5)
    over (entity, attribute, relation, action, unnecessary). No direct supervision."""

    def __init__(self, d: int, action: bool = False):
        super().__init__()
        self.types = 5 if action else 4
        self.mlp = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, self.types))

    def forward(self, words: torch.Tensor, word_pad: torch.Tensor):
        """-> p, q_ea (B, d): entity + attribute words, s (B, d): all but the unnecessary ones, a (B, d)
        (CMPC-V): the action words, else None (all L2-normalised sums over the real words)."""
        real = (~word_pad)[..., None].to(words.dtype)
        p = self.mlp(words).softmax(-1) * real
        q_ea = F.normalize(((p[..., 0:1] + p[..., 1:2]) * words).sum(1), dim=-1)
        s = F.normalize(((1 - p[..., -1:]) * real * words).sum(1), dim=-1)
        a = F.normalize((p[..., 3:4] * words).sum(1), dim=-1) if self.types == 5 else None
        return p, q_ea, s, a


class EntityPerception(nn.Module):
    """M = L2norm(tanh(sum over heads of tanh(conv([X; coords])) * tanh(linear(q_ea))))."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.vis = nn.ModuleList(nn.Conv2d(d + 8, d, 1) for _ in range(heads))
        self.lang = nn.ModuleList(nn.Linear(d, d) for _ in range(heads))

    def forward(self, x: torch.Tensor, xy: torch.Tensor, q_ea: torch.Tensor) -> torch.Tensor:
        v = torch.cat([x, xy], 1)
        m = sum(torch.tanh(conv(v)) * torch.tanh(lin(q_ea))[:, :, None, None] for conv, lin in zip(self.vis, self.lang))
        return F.normalize(torch.tanh(m), dim=1)


class RelationGraph(nn.Module):
    """Affinity B[n, t] = <conv(M)_n, linear(word_t)> / sqrt(d) * p_relation(t); adjacency
    A = softmax_words(B) softmax_nodes(B)^T (node -> relational word -> node), applied as two
    products; each step H = ReLU(LN(A M) + M); then R = L2norm(ReLU(LN(linear(H))))."""

    def __init__(self, d: int, steps: int):
        super().__init__()
        self.key, self.word = nn.Conv2d(d, d, 1), nn.Linear(d, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(steps))
        self.out = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.ReLU())

    def forward(self, m: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor, p_rel: torch.Tensor):
        b, d, h, w = m.shape
        aff = torch.einsum("bdn,btd->bnt", self.key(m).flatten(2), self.word(words)) / d ** 0.5 * p_rel[:, None, :]
        to_word = aff.masked_fill(word_pad[:, None, :], torch.finfo(aff.dtype).min).softmax(2)  # node -> word
        to_node = aff.softmax(1)  # word -> node
        x = m.flatten(2).transpose(1, 2)  # (B, HW, d)
        for norm in self.norms:
            x = F.relu(norm(to_word @ (to_node.transpose(1, 2) @ x)) + x)
        return F.normalize(self.out(x), dim=-1).transpose(1, 2).reshape(b, d, h, w)


class TemporalGraph(nn.Module):
    """CMPC-V's temporal reasoning on one level of the T frames of each clip (rows clip-major):
    node V_t = attention pool of frame t's M under the action vector a (softmax over cells of
    <M_n, W_a a> / sqrt(d)); adjacency A = row-softmax((W_q V)(W_k V)^T / sqrt(d)) (T x T); one
    graph-conv step H = ReLU(LN(A V) + V), V' = L2norm(ReLU(LN(Linear(H)))); each cell of each frame
    attends over its clip's nodes (softmax over frames of <M_n, V'_tau> / sqrt(d)): the temporal
    context, L2-normalised."""

    def __init__(self, d: int):
        super().__init__()
        self.query = nn.Linear(d, d)
        self.q, self.k = nn.Linear(d, d), nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.ReLU())

    def forward(self, m: torch.Tensor, a: torch.Tensor, clip_len: int) -> torch.Tensor:
        b, d, h, w = m.shape
        cells = m.flatten(2)  # (B, d, HW)
        att = torch.einsum("bdn,bd->bn", cells, self.query(a)) / d ** 0.5
        nodes = (cells * att.softmax(-1)[:, None, :]).sum(-1).reshape(b // clip_len, clip_len, d)  # (C, T, d)
        adj = (self.q(nodes) @ self.k(nodes).transpose(1, 2) / d ** 0.5).softmax(-1)
        nodes = F.normalize(self.out(F.relu(self.norm(adj @ nodes) + nodes)), dim=-1)
        per_row = nodes.repeat_interleave(clip_len, 0)  # (B, T, d): each frame sees its clip's nodes
        weights = (torch.einsum("bdn,btd->bnt", cells, per_row) / d ** 0.5).softmax(-1)
        ctx = torch.einsum("bnt,btd->bdn", weights, per_row)
        return F.normalize(ctx, dim=1).reshape(b, d, h, w)


class FeatureExchange(nn.Module):
    """TGFE over L levels: g_i = L2norm(linear([attention pool of F_i with query s; s])); F_i +=
    sum over j != i of ReLU(conv_ij(resize(F_j))) * sigmoid(linear_ij(g_i)); F_i = L2norm(F_i);
    ``rounds`` rounds with their own weights, every level updated from the previous round's."""

    def __init__(self, d: int, levels: int, rounds: int):
        super().__init__()
        self.levels = levels
        self.pool_key = nn.ModuleList(nn.Conv2d(d, d, 1) for _ in range(rounds * levels))
        self.pool_query = nn.ModuleList(nn.Linear(d, d) for _ in range(rounds * levels))
        self.summary = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(rounds * levels))
        pairs = rounds * levels * (levels - 1)
        self.send = nn.ModuleList(nn.Conv2d(d, d, 1) for _ in range(pairs))
        self.gate = nn.ModuleList(nn.Linear(d, d) for _ in range(pairs))

    def forward(self, feats: list[torch.Tensor], s: torch.Tensor) -> list[torch.Tensor]:
        L, d = self.levels, s.shape[-1]
        for r in range(len(self.summary) // L):
            new = []
            for i, fi in enumerate(feats):
                k = r * L + i
                att = torch.einsum("bdn,bd->bn", self.pool_key[k](fi).flatten(2), self.pool_query[k](s)) / d ** 0.5
                pooled = (fi.flatten(2) * att.softmax(-1)[:, None, :]).sum(-1)
                g = F.normalize(self.summary[k](torch.cat([pooled, s], -1)), dim=-1)
                out = fi
                others = [j for j in range(L) if j != i]
                for n, j in enumerate(others):
                    e = (r * L + i) * (L - 1) + n
                    fj = F.interpolate(feats[j], size=fi.shape[-2:], mode="bilinear", align_corners=False)
                    out = out + F.relu(self.send[e](fj)) * torch.sigmoid(self.gate[e](g))[:, :, None, None]
                new.append(F.normalize(out, dim=1))
            feats = new
        return feats


def cmpc_enabled(cfg: dict) -> bool:
    """Whether model.cmpc builds anything (perception or feature exchange on)."""
    c = cfg["model"]["cmpc"]
    return bool(c["perception"] or c["exchange_rounds"])


class ProgressiveComprehension(nn.Module):
    """On the levels at strides 8, 16, 32: word types; entity perception M_l (``perception``);
    relation graph R_l (``graph_steps`` > 0, on M_l); F_l = ReLU(conv([M_l; R_l; q_ea; coords]));
    TGFE (``exchange_rounds`` > 0, on F_l, or on the levels themselves without perception). The
    result, through a 1x1 conv per level, is added to each level. ``placement``: "memory" refines
    the fusion memory before the proposals and the decoder read it (the box path uses it), "mask"
    the fused levels of the mask branch only. ``aux_masks``: a 3x3 conv gives a mask from each F_l
    (CMPC's per-level auxiliary maps), supervised by :func:`cmpc_level_loss`."""

    LEVELS = 3

    def __init__(self, d: int, perception: bool, heads: int, graph_steps: int, exchange_rounds: int,
                 placement: str = "mask", aux_masks: bool = False, video: bool = False):
        super().__init__()
        if placement not in ("memory", "mask"):
            raise ValueError(f"model.cmpc.placement must be memory or mask; got {placement!r}")
        if graph_steps and not perception:
            raise ValueError("model.cmpc.graph_steps needs model.cmpc.perception (the graph's nodes are its output)")
        if not (perception or exchange_rounds):
            raise ValueError("ProgressiveComprehension with nothing on: build none (model.cmpc all off)")
        if video and not perception:
            raise ValueError("model.cmpc.video (CMPC-V) needs model.cmpc.perception (its nodes pool the perceived frames)")
        self.video = video
        self.words = WordTypes(d, action=video)
        self.temporal = nn.ModuleList(TemporalGraph(d) for _ in range(self.LEVELS)) if video else None
        self.perceive = nn.ModuleList(EntityPerception(d, heads) for _ in range(self.LEVELS)) if perception else None
        self.graphs = nn.ModuleList(RelationGraph(d, graph_steps) for _ in range(self.LEVELS)) if graph_steps else None
        if perception:  # CMPC-V adds the temporal context to the concatenation
            c = 2 * d + (d if graph_steps else 0) + (d if video else 0) + 8
            self.outputs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, d, 1), nn.ReLU()) for _ in range(self.LEVELS))
        self.exchange = FeatureExchange(d, self.LEVELS, exchange_rounds) if exchange_rounds else None
        self.merge = nn.ModuleList(nn.Conv2d(d, d, 1) for _ in range(self.LEVELS))
        self.aux = nn.ModuleList(nn.Conv2d(d, 1, 3, padding=1) for _ in range(self.LEVELS)) if aux_masks else None
        self.placement = placement
        self.active_hooks = ("refine_memory" if placement == "memory" else "refine_levels",) + \
            (("training_outputs",) if aux_masks else ())

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "ProgressiveComprehension | None":
        """model.cmpc; None when neither perception nor exchange is on."""
        c = cfg["model"]["cmpc"]
        return cls(cfg["model"]["d_model"], **c) if cmpc_enabled(cfg) else None

    def refine_memory(self, memory: torch.Tensor, st) -> torch.Tensor:
        """Hook (placement "memory"): the fusion memory (B, S, d), its levels refined with the fused
        words before the proposals and the decoder read it."""
        b, _, d = memory.shape
        levels = [lvl.transpose(1, 2).reshape(b, d, h, w)
                  for lvl, (h, w) in zip(memory.split([h * w for h, w in st.sizes], 1), st.sizes)]
        return torch.cat([lvl.flatten(2).transpose(1, 2) for lvl in self.refine_levels(levels, st)], 1)

    def refine_levels(self, fused: list[torch.Tensor], st) -> list[torch.Tensor]:
        """Hook (placement "mask"): the fused levels refined with the fused words; the per-level
        auxiliary masks (aux_masks) are kept for :meth:`training_outputs`."""
        out, st.extras["cmpc_levels"] = self.levels_and_masks(fused, st.words, st.word_pad, st.clip_len)
        return out

    def training_outputs(self, st) -> dict:
        """Hook (aux_masks): ``cmpc_level_logits`` (3, B, h8, w8), each level's mask logits resized to stride 8."""
        return {"cmpc_level_logits": st.extras.pop("cmpc_levels")}

    def forward(self, fused: list[torch.Tensor], words: torch.Tensor, word_pad: torch.Tensor,
                clip_len: int | None = None) -> list[torch.Tensor]:
        return self.levels_and_masks(fused, words, word_pad, clip_len)[0]

    def levels_and_masks(self, fused: list[torch.Tensor], words: torch.Tensor, word_pad: torch.Tensor,
                         clip_len: int | None = None):
        """The refined levels, and (aux_masks) the per-level mask logits stacked at stride 8 (else None).
        ``clip_len``: rows are clips of that many frames (CMPC-V's temporal graph; None: single frames)."""
        p, q_ea, s, a = self.words(words, word_pad)
        feats = []
        for i, x in enumerate(fused[:self.LEVELS]):
            if self.perceive is None:
                feats.append(x)
                continue
            b, d, h, w = x.shape
            xy = coords(b, h, w, x.device, x.dtype)
            m = self.perceive[i](x, xy, q_ea)
            graph = [self.graphs[i](m, words, word_pad, p[..., 2])] if self.graphs is not None else []
            if self.video:  # CMPC-V: [visual X; spatial graph; temporal context; tile(s); coords]
                context = self.temporal[i](m, a, clip_len or 1)
                parts = [x] + graph + [context, s[:, :, None, None].expand(-1, -1, h, w), xy]
            else:  # CMPC (code version): [M; R; tile(q_EA); coords]
                parts = [m] + graph + [q_ea[:, :, None, None].expand(-1, -1, h, w), xy]
            feats.append(self.outputs[i](torch.cat(parts, 1)))
        masks = None
        if self.aux is not None:  # on F_l, before the exchange (CMPC's auxiliary heads)
            size = feats[0].shape[-2:]
            masks = torch.stack([F.interpolate(head(f), size=size, mode="bilinear", align_corners=False)[:, 0]
                                 for head, f in zip(self.aux, feats)])
        if self.exchange is not None:
            feats = self.exchange(feats, s)
        return [x + merge(f) for x, f, merge in zip(fused, feats, self.merge)] + list(fused[self.LEVELS:]), masks


def cmpc_level_loss(crit, out: dict, batch: dict, ctx) -> dict:
    """``cmpc_bce_8`` / ``_16`` / ``_32``: BCE of each level's auxiliary mask (upsampled to the input,
    valid pixels), as CMPC supervises its per-level maps beside the final one."""
    return {f"cmpc_bce_{stride}": upsampled_mask_loss_terms(logits, ctx.targets, ("bce",), valid=ctx.valid,
                                                              num_masks=ctx.norm, alpha=crit.alpha, gamma=crit.gamma)["bce"]
            for stride, logits in zip((8, 16, 32), out["cmpc_level_logits"])}
