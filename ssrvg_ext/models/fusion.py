"""Cross-modal fusion encoder: words <-> pixels attention, optionally global self-attention among all
pixel tokens (every token sees every other: what relations and ordinals -- "the second square from
the top" -- need on small inputs), then language-conditioned multi-scale deformable self-attention
over all levels. Optional SgMg-style spectrum guidance: a float32 FFT
low-pass of each level, added back through a sentence-conditioned gate."""

from __future__ import annotations

import torch
from torch import nn

from .attention import MLP, Attention
from .ms_deform_attn import MSDeformAttn
from .position import token_centres


class SpectrumGuide(nn.Module):
    """x + gate(sentence) * lowpass(x): low spatial frequencies carry the object's extent."""

    def __init__(self, d: int, keep: float = 0.25):
        super().__init__()
        self.keep = keep
        self.gate = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:  # x (B, C, H, W)
        h, w = x.shape[-2:]
        spec = torch.fft.rfft2(x.float(), norm="ortho")
        fy = torch.fft.fftfreq(h, device=x.device).abs()[:, None]
        fx = torch.fft.rfftfreq(w, device=x.device)[None, :]
        low = ((fy <= self.keep * 0.5) & (fx <= self.keep * 0.5)).to(spec.dtype)
        smooth = torch.fft.irfft2(spec * low, s=(h, w), norm="ortho").to(x.dtype)
        return x + torch.sigmoid(self.gate(sentence))[:, :, None, None] * smooth


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
                 global_attn: bool):
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(d, heads, levels, points, ffn, global_attn) for _ in range(layers))
        self.spectrum = SpectrumGuide(d) if spectrum else None

    def forward(self, maps: list[torch.Tensor], pos: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor,
                sentence: torch.Tensor):
        """maps: per level (B, C, H, W); pos: (S, C) positions + level embeddings; word_pad True = padding.
        Returns the fused flattened pixels (B, S, C), the updated words, shapes and starts."""
        if self.spectrum is not None:
            maps = [self.spectrum(m, sentence) for m in maps]
        b = maps[0].shape[0]
        # The level table stays on the CPU: the deformable-attention op reads it there without a
        # device-to-host copy (no host synchronisation per layer).
        shapes = torch.tensor([m.shape[-2:] for m in maps], dtype=torch.long)
        areas = shapes[:, 0] * shapes[:, 1]
        starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
        pix = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        ref = torch.cat([token_centres(h, w, pix.device) for h, w in (m.shape[-2:] for m in maps)])
        ref = ref[None, :, None, :].expand(b, -1, len(maps), -1)
        for layer in self.layers:
            pix, words = layer(pix, pos[None], words, word_pad, ref, shapes, starts, None)
        return pix, words, shapes, starts
