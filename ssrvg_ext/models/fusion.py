"""Cross-modal fusion encoder: words <-> pixels attention, optionally global self-attention among all
pixel tokens (every token sees every other: what relations and ordinals -- "the second square from
the top" -- need on small inputs), then language-conditioned multi-scale deformable self-attention
over all levels. Optionally first SgMg's spectrum-guided cross-modal fusion on every level
(:class:`SpectrumFusion`, docs/methods.md)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import MLP, Attention
from .ms_deform_attn import MSDeformAttn
from .position import _sine, token_centres


class SpectralUnit(nn.Module):
    """SgMg's spectral unit: Y = FFT2(x) * (1 - a * G) with G a fixed Gaussian over the unshifted
    spectrum (centred on the highest frequencies, standard deviation ``sigma`` x each axis' size)
    and a in (0, 1) predicted per image from x; [Re Y, Im Y] mixed by two 1x1 convs (ReLU between);
    the real part of the inverse FFT is added to x. At least float32 whatever the autocast dtype."""

    def __init__(self, d: int, sigma: float):
        super().__init__()
        self.sigma = sigma
        self.strength = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(d, d, bias=False), nn.ReLU(), nn.Linear(d, 1, bias=False), nn.Sigmoid())
        self.mix = nn.Sequential(nn.Conv2d(2 * d, 2 * d, 1), nn.ReLU(), nn.Conv2d(2 * d, 2 * d, 1))

    def gaussian(self, h: int, w: int, device, dtype) -> torch.Tensor:
        ys = torch.arange(h, device=device, dtype=dtype) - h // 2
        xs = torch.arange(w, device=device, dtype=dtype) - w // 2
        return torch.exp(-(ys[:, None] / (self.sigma * h)) ** 2 / 2 - (xs[None, :] / (self.sigma * w)) ** 2 / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        h, w = x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):
            xf = x if x.dtype == torch.float64 else x.float()
            alpha = self.strength(xf)[:, :, None, None]  # (B, 1, 1, 1)
            y = torch.fft.fft2(xf) * (1 - alpha * self.gaussian(h, w, x.device, xf.dtype))
            re, im = self.mix(torch.cat([y.real, y.imag], 1)).chunk(2, 1)
            out = torch.fft.ifft2(torch.complex(re, im), s=(h, w)).real
        return x + out.to(x.dtype)


class SpectrumFusion(nn.Module):
    """SgMg's spectrum-guided cross-modal fusion of every level: a spectral unit on the visual
    feature, then the feature multiplied by its attention over the words (one attention shared by
    the levels; the words carry a 1-D sine position), then a second spectral unit on this
    language-fused feature. Separate units per level and position."""

    def __init__(self, d: int, heads: int, levels: int, sigma: float):
        super().__init__()
        self.pre = nn.ModuleList(SpectralUnit(d, sigma) for _ in range(levels))
        self.post = nn.ModuleList(SpectralUnit(d, sigma) for _ in range(levels))
        self.attn = Attention(d, heads)

    def forward(self, maps: list[torch.Tensor], words: torch.Tensor, word_pad: torch.Tensor) -> list[torch.Tensor]:
        t = words.shape[1]
        keys = words + _sine(torch.arange(t, device=words.device, dtype=torch.float32) / t, words.shape[-1]).to(words.dtype)
        out = []
        for pre, post, m in zip(self.pre, self.post, maps):
            b, c, h, w = m.shape
            p = pre(m)
            q = p.flatten(2).transpose(1, 2)
            fused = q * self.attn(q, keys, words, key_padding_mask=word_pad)
            out.append(post(fused.transpose(1, 2).reshape(b, c, h, w)))
        return out


class FusionLayer(nn.Module):
    def __init__(self, d: int, heads: int, levels: int, points: int, ffn: int, global_attn: bool = False):
        super().__init__()
        self.pix2word = Attention(d, heads)
        self.word2pix = Attention(d, heads)
        self.global_attn = Attention(d, heads) if global_attn else None
        self.global_norm = nn.LayerNorm(d) if global_attn else None
        self.deform = MSDeformAttn(d, levels, heads, points, d_lang=d)
        self.ffn = MLP(d, ffn, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))

    def forward(self, pix, pos, words, word_pad, ref, shapes, starts, pix_pad):
        n1, n2, n3, n4 = self.norms
        q = pix + pos
        pix = n1(pix + self.pix2word(q, words, words, key_padding_mask=word_pad))
        if self.global_attn is not None:
            q = pix + pos
            pix = self.global_norm(pix + self.global_attn(q, q, pix, key_padding_mask=pix_pad))
        words = n2(words + self.word2pix(words, pix + pos, pix, key_padding_mask=pix_pad))
        pix = n3(pix + self.deform(pix + pos, ref, pix, shapes, starts, pix_pad, lang=words, lang_mask=word_pad))
        return n4(pix + self.ffn(pix)), words


class FusionEncoder(nn.Module):
    def __init__(self, d: int, layers: int, heads: int, levels: int, points: int, ffn: int, spectrum: bool,
                 spectrum_sigma: float, global_attn: bool):
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(d, heads, levels, points, ffn, global_attn) for _ in range(layers))
        self.spectrum = SpectrumFusion(d, heads, levels, spectrum_sigma) if spectrum else None

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "FusionEncoder":
        """model.fusion (SgMg's spectrum fusion: its ``spectrum`` switch)."""
        m = cfg["model"]
        return cls(m["d_model"], levels=m["levels"], **m["fusion"])

    def forward(self, maps: list[torch.Tensor], pos: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor,
                after_layer=None):
        """maps: per level (B, C, H, W); pos: (S, C) positions + level embeddings; word_pad True = padding.
        ``after_layer(i, pixels, words) -> (pixels, words)``: called after layer i (SegVG's interleaved
        triple alignment). Returns the fused flattened pixels (B, S, C), the updated words, shapes and starts."""
        if self.spectrum is not None:
            maps = self.spectrum(maps, words, word_pad)
        b = maps[0].shape[0]
        # The level table stays on the CPU: the deformable-attention op reads it there without a
        # device-to-host copy (no host synchronisation per layer).
        shapes = torch.tensor([m.shape[-2:] for m in maps], dtype=torch.long)
        areas = shapes[:, 0] * shapes[:, 1]
        starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
        pix = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        ref = torch.cat([token_centres(h, w, pix.device) for h, w in (m.shape[-2:] for m in maps)])
        ref = ref[None, :, None, :].expand(b, -1, len(maps), -1)
        for i, layer in enumerate(self.layers):
            pix, words = layer(pix, pos[None], words, word_pad, ref, shapes, starts, None)
            if after_layer is not None:
                pix, words = after_layer(i, pix, words)
        return pix, words, shapes, starts
