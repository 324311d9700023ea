"""Dataset over :class:`~ssrvg_ext.data.refer.Record` and the batch collate function."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as cocomask
from torch.utils.data import Dataset

from .refer import Record


class RefDataset(Dataset):
    """Loads image + expression + box + mask of one record and applies ``transform``.

    ``cache_images``: keep decoded images in memory (several expressions share an image, and small
    datasets fit easily); each DataLoader worker keeps its own cache."""

    def __init__(self, records: list[Record], transform, cache_images: bool = False):
        self.records, self.transform = records, transform
        self.cache = {} if cache_images else None

    def __len__(self):
        return len(self.records)

    def _image(self, path: str) -> torch.Tensor:
        if self.cache is not None and path in self.cache:
            return self.cache[path]
        with Image.open(path) as im:
            img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        if self.cache is not None:
            self.cache[path] = img
        return img

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        img = self._image(r.image_path)
        if tuple(img.shape[-2:]) != tuple(r.orig_size):
            raise ValueError(f"{r.image_path}: size {tuple(img.shape[-2:])} differs from the annotation {r.orig_size}")
        mask = torch.from_numpy(cocomask.decode(r.rle))
        s = {"image": img, "box": torch.tensor(r.box_xyxy), "mask": mask, "text": r.text,
             "meta": {"index": i, "sent_id": r.sent_id, "orig_size": r.orig_size}}
        return self.transform(s)


class Collate:
    """Stacks padded images (normalised), tokenises the (possibly flipped) texts, keeps metadata."""

    MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        ids, mask = self.tokenizer.encode([s["text"] for s in samples])
        return {
            "images": torch.stack([(s["image"] - self.MEAN) / self.STD for s in samples]),
            "text_ids": ids, "text_mask": mask,
            "boxes": torch.stack([s["box_cxcywh"] for s in samples]).float(),
            "masks": torch.stack([s["mask"] for s in samples]),
            "meta": [dict(s["meta"], text=s["text"]) for s in samples],
        }
