"""Dataset over :class:`~ssrvg_ext.data.refer.Record` and the batch collate function."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as cocomask
from torch.utils.data import Dataset

from .refer import InstanceLabels, Record


class RefDataset(Dataset):
    """Loads image + expression + box + mask of one record and applies ``transform``.

    ``cache_images``: keep decoded images in memory (several expressions share an image, and small
    datasets fit easily); each DataLoader worker keeps its own cache.
    ``instances``: every object's labels (:func:`~ssrvg_ext.data.refer.load_instance_labels`); each
    sample then also carries ``instances``, an (H, W) uint8 map of object indices (0: none), and
    ``inst_labels``, the (n + 1, K) labels of those objects (row 0: background), for the auxiliary loss."""

    def __init__(self, records: list[Record], transform, cache_images: bool = False,
                 instances: InstanceLabels | None = None):
        self.records, self.transform, self.instances = records, transform, instances
        self.cache = {} if cache_images else None
        self.inst_cache = {} if cache_images else None

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

    def _instance_map(self, image_id: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inst_cache is not None and image_id in self.inst_cache:
            return self.inst_cache[image_id]
        rles, labels = self.instances.per_image.get(image_id, ([], []))
        rles, labels = rles[:255], labels[:255]  # uint8 map; the largest 255 objects of an image
        imap = np.zeros(size, np.uint8)
        for i, r in enumerate(rles):  # largest first: smaller objects stay visible on top
            imap[cocomask.decode(r).astype(bool)] = i + 1
        table = torch.zeros(len(rles) + 1, len(self.instances.names), dtype=torch.long)
        if labels:
            table[1:] = torch.tensor(labels, dtype=torch.long)
        out = (torch.from_numpy(imap), table)
        if self.inst_cache is not None:
            self.inst_cache[image_id] = out
        return out

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        img = self._image(r.image_path)
        if tuple(img.shape[-2:]) != tuple(r.orig_size):
            raise ValueError(f"{r.image_path}: size {tuple(img.shape[-2:])} differs from the annotation {r.orig_size}")
        mask = torch.from_numpy(cocomask.decode(r.rle))
        s = {"image": img, "box": torch.tensor(r.box_xyxy), "mask": mask, "text": r.text,
             "meta": {"index": i, "sent_id": r.sent_id, "orig_size": r.orig_size}}
        if self.instances is not None:
            s["instances"], s["inst_labels"] = self._instance_map(r.image_id, r.orig_size)
        return self.transform(s)


class Collate:
    """Stacks padded images (normalised), tokenises the (possibly flipped) texts, keeps metadata."""

    MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        ids, mask = self.tokenizer.encode([s["text"] for s in samples])
        out = {
            "images": torch.stack([(s["image"] - self.MEAN) / self.STD for s in samples]),
            "text_ids": ids, "text_mask": mask,
            "boxes": torch.stack([s["box_cxcywh"] for s in samples]).float(),
            "masks": torch.stack([s["mask"] for s in samples]),
            "meta": [dict(s["meta"], text=s["text"]) for s in samples],
        }
        if "instances" in samples[0]:  # label tables padded to the most objects in the batch
            out["instances"] = torch.stack([s["instances"] for s in samples])
            n = max(s["inst_labels"].shape[0] for s in samples)
            k = samples[0]["inst_labels"].shape[1]
            out["inst_labels"] = torch.zeros(len(samples), n, k, dtype=torch.long)
            for i, s in enumerate(samples):
                out["inst_labels"][i, :s["inst_labels"].shape[0]] = s["inst_labels"]
        return out
