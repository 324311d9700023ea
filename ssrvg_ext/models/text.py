"""Text encoder through transformers: a BERT-family model from a local path / cache, or a small
randomly initialised BERT for the embedded default (no download either way)."""

from __future__ import annotations

import torch
import transformers
from torch import nn


class TextEncoder(nn.Module):
    def __init__(self, d_model: int, name_or_path: str | None, vocab_size: int, hidden: int, layers: int, heads: int,
                 max_len: int, freeze: bool):
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if name_or_path:
            self.bert = AutoModel.from_pretrained(name_or_path, local_files_only=True)
        else:
            cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=hidden * 4, max_position_embeddings=max(max_len, 8))
            self.bert = BertModel(cfg, add_pooling_layer=False)
        if freeze:
            self.bert.requires_grad_(False)
        self.proj = nn.Linear(self.bert.config.hidden_size, d_model)
        # transformers >= 5 takes a prepared (B, 1, T, T) boolean mask as is under SDPA attention;
        # from a 2D mask it would first ask the GPU whether any padding exists (a host sync).
        major = int(transformers.__version__.split(".")[0])
        self.mask_4d = major >= 5 and getattr(self.bert.config, "_attn_implementation", None) == "sdpa"

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask (B, T) (mask True = token) -> words (B, T, d_model), sentence (B, d_model)."""
        att = mask[:, None, None, :].expand(-1, 1, mask.shape[1], -1) if self.mask_4d else mask.long()
        h = self.bert(input_ids=ids, attention_mask=att).last_hidden_state
        words = self.proj(h)
        m = mask.unsqueeze(-1).to(words.dtype)
        sentence = (words * m).sum(1) / m.sum(1).clamp_min(1)
        return words, sentence
