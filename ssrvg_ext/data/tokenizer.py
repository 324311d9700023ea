"""Tokenizers behind one interface: ``encode(texts) -> (ids (B, L) int64, mask (B, L) bool, True = token)``.

* :class:`WordTokenizer` -- the offline default: a word-level vocabulary built from the training
  expressions with the ``tokenizers`` library, saved as JSON next to the checkpoints.
* :class:`HFTokenizer` -- a transformers tokenizer (BERT family) loaded from a local directory or
  the local cache only (never downloaded).
Max length, truncation and padding are applied in :meth:`Tokenizer.encode` only.
"""

from __future__ import annotations

import torch


class Tokenizer:
    pad_id = 0
    vocab_size: int

    def __init__(self, max_len: int = 20):
        self.max_len = max_len

    end_id: int | None = None  # a closing special token ([SEP]) kept when an expression is cut
    mask_id: int  # what mask grounding puts in place of a masked token

    def _cut(self, ids: list[int]) -> list[int]:
        """At most max_len ids; an over-long expression keeps its closing special token."""
        if len(ids) <= self.max_len:
            return ids
        if self.end_id is not None and ids[-1] == self.end_id:
            return ids[: self.max_len - 1] + [self.end_id]
        return ids[: self.max_len]

    def _ids(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._cut(ids) for ids in self._ids(list(texts))]
        ids = torch.full((len(rows), self.max_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), self.max_len, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids, mask


class WordTokenizer(Tokenizer):
    SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]

    def __init__(self, tok, max_len: int = 20):
        super().__init__(max_len)
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.pad_id = tok.token_to_id("[PAD]")
        self.end_id = tok.token_to_id("[SEP]")
        # no [MASK] in the word vocabulary (adding one would renumber every word): [UNK], which the
        # training expressions never produce, stands for it
        self.mask_id = tok.token_to_id("[UNK]")

    @classmethod
    def train(cls, texts, max_len: int = 20) -> "WordTokenizer":
        from tokenizers import Tokenizer as HFTok, normalizers, pre_tokenizers
        from tokenizers.models import WordLevel
        from tokenizers.processors import TemplateProcessing
        from tokenizers.trainers import WordLevelTrainer

        tok = HFTok(WordLevel(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(list(texts), WordLevelTrainer(special_tokens=cls.SPECIALS, min_frequency=1))
        tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
            ("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        return cls(tok, max_len)

    @classmethod
    def load(cls, path: str, max_len: int = 20) -> "WordTokenizer":
        from tokenizers import Tokenizer as HFTok

        return cls(HFTok.from_file(path), max_len)

    def save(self, path: str) -> None:
        self.tok.save(path)

    def _ids(self, texts):
        return [e.ids for e in self.tok.encode_batch(texts)]


class HFTokenizer(Tokenizer):
    def __init__(self, name_or_path: str, max_len: int = 20):
        super().__init__(max_len)
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        self.vocab_size = self.tok.vocab_size
        self.pad_id = self.tok.pad_token_id or 0
        self.end_id = self.tok.sep_token_id if self.tok.sep_token_id is not None else self.tok.eos_token_id
        self.mask_id = self.tok.mask_token_id if self.tok.mask_token_id is not None else self.tok.unk_token_id

    def save(self, path: str) -> None:
        self.tok.save_pretrained(path)

    def _ids(self, texts):
        return self.tok(texts, add_special_tokens=True)["input_ids"]
