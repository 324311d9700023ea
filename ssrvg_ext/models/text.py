"""Text encoder through transformers: a BERT-family model from a local folder, or a randomly
initialised BERT (the embedded default); nothing is downloaded either way."""

from __future__ import annotations

import os

import torch
import transformers
from torch import nn


def check_text_folder(path: str | None) -> None:
    """A transformers model folder at ``path`` (needed for the weights, or for the architecture)."""
    fix = ("; nothing is downloaded. To train the text encoder from scratch on purpose, set "
           "model.text.pretrained=false (and model.text.name_or_path=null for a BERT of model.text.hidden / layers / heads)")
    if not path:
        raise ValueError("model.text.pretrained is true but model.text.name_or_path is not set: give a local transformers "
                         "model folder (e.g. a copy of bert-base-uncased holding config.json, the weights "
                         "(model.safetensors or pytorch_model.bin) and the tokenizer files)" + fix)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"model.text.name_or_path={path}: not a transformers model folder (no config.json)" + fix)


class TextEncoder(nn.Module):
    """``pretrained``: load the weights of the transformers folder ``name_or_path`` (config.json and
    the weights; an error when it is missing, nothing is downloaded). Not pretrained: a randomly
    initialised BERT, of the folder's architecture when ``name_or_path`` is given, else of
    ``hidden`` / ``layers`` / ``heads``."""

    def __init__(self, d_model: int, name_or_path: str | None, vocab_size: int, hidden: int, layers: int, heads: int,
                 max_len: int, freeze: bool, pretrained: bool):
        super().__init__()
        from transformers import AutoConfig, AutoModel, BertConfig, BertModel

        if pretrained or name_or_path:
            check_text_folder(name_or_path)
        if pretrained:
            self.bert = AutoModel.from_pretrained(name_or_path, local_files_only=True)
        elif name_or_path:
            self.bert = AutoModel.from_config(AutoConfig.from_pretrained(name_or_path, local_files_only=True))
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

    @classmethod
    def from_config(cls, cfg: dict, ctx) -> "TextEncoder":
        """model.text; the vocabulary size is the tokenizer's (``ctx.vocab_size``)."""
        return cls(cfg["model"]["d_model"], vocab_size=ctx.vocab_size, max_len=cfg["data"]["max_len"], **cfg["model"]["text"])

    # -- layer by layer (SegVG's interleaving, model.align.triple_text) ----------------------------
    def embed(self, ids: torch.Tensor, mask: torch.Tensor):
        """The embedding layer's output (B, T, hidden) and the attention mask the layers take."""
        hidden = self.bert.embeddings(input_ids=ids)
        if self.mask_4d:
            return hidden, mask[:, None, None, :].expand(-1, 1, mask.shape[1], -1)
        return hidden, self.bert.get_extended_attention_mask(mask.long(), tuple(mask.shape))

    def run_layers(self, hidden: torch.Tensor, layer_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The text encoder's layers [start, stop) on ``hidden``."""
        for layer in self.bert.encoder.layer[start:stop]:
            out = layer(hidden, attention_mask=layer_mask)
            hidden = out[0] if isinstance(out, tuple) else out  # (transformers < 5 returns a tuple)
        return hidden

    def finish(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states -> words (B, T, d_model) and the sentence (their mean over the real tokens)."""
        words = self.proj(hidden)
        m = mask.unsqueeze(-1).to(words.dtype)
        return words, (words * m).sum(1) / m.sum(1).clamp_min(1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask (B, T) (mask True = token) -> words (B, T, d_model), sentence (B, d_model)."""
        att = mask[:, None, None, :].expand(-1, 1, mask.shape[1], -1) if self.mask_4d else mask.long()
        h = self.bert(input_ids=ids, attention_mask=att).last_hidden_state
        words = self.proj(h)
        m = mask.unsqueeze(-1).to(words.dtype)
        sentence = (words * m).sum(1) / m.sum(1).clamp_min(1)
        return words, sentence
