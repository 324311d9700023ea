"""Dataset over :class:`~ssrvg_ext.data.readers.refer.Record` and the batch collate function."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as cocomask
from torch.utils.data import Dataset

from .readers.refer import InstanceLabels, Record


def read_image(path: str) -> torch.Tensor:
    """An image file as uint8 RGB ``(3, H, W)``: EXIF orientation applied; grayscale, palette (with
    transparency), RGBA, CMYK converted; 16-bit and 32-bit integer images scaled from 0..65535 to
    0..255 (not clipped); a truncated, unreadable or float image is a ValueError naming the file."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                a = np.asarray(im, dtype=np.float64)
                a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
                rgb = np.repeat(a[..., None], 3, axis=2)
            elif im.mode == "F":
                raise ValueError("floating-point images are not supported (their value range is unknown)")
            else:
                if im.mode == "P" and "transparency" in im.info:
                    im = im.convert("RGBA")
                rgb = np.array(im.convert("RGB"))  # writable: torch.from_numpy warns on read-only arrays
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"image {path} is unreadable or truncated ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


class RefDataset(Dataset):
    """Loads image + expression + box + mask of one record and applies ``transform``.

    ``cache_images``: keep decoded images in memory (several expressions share an image, and small
    datasets fit easily); each DataLoader worker keeps its own cache.
    ``instances``: every object's labels (:func:`~ssrvg_ext.data.readers.refer.load_instance_labels`); each
    sample then also carries ``instances``, an (H, W) uint8 map of object indices (0: none), and
    ``inst_labels``, the (n + 1, K) labels of those objects (row 0: background), for the auxiliary loss.

    ``ds[i]`` is one expression; ``ds[(i, j, ...)]`` (indices of records of one image, as
    :class:`ImageGroupBatchSampler` yields them) is a group sample: the image once, transformed once,
    with a (k, 4) ``box``, (k, H, W) ``mask`` and a list of k texts, so the backbone runs once for k
    expressions."""

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
        img = read_image(path)
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

    def __getitem__(self, i: int | tuple[int, ...]) -> dict:
        group = isinstance(i, (tuple, list))
        idx = list(i) if group else [i]
        recs = [self.records[j] for j in idx]
        r = recs[0]
        if any(o.image_id != r.image_id for o in recs):
            raise ValueError(f"a group sample must hold expressions of one image; got image ids {[o.image_id for o in recs]}")
        img = self._image(r.image_path)
        if tuple(img.shape[-2:]) != tuple(r.orig_size):
            raise ValueError(f"{r.image_path}: size {tuple(img.shape[-2:])} differs from the annotation {r.orig_size}")
        masks = [torch.from_numpy(cocomask.decode(o.rle)) for o in recs]
        boxes = [torch.tensor(o.box_xyxy) for o in recs]
        if group:
            s = {"image": img, "box": torch.stack(boxes), "mask": torch.stack(masks), "text": [o.text for o in recs],
                 "meta": {"index": idx, "sent_id": [o.sent_id for o in recs], "orig_size": r.orig_size}}
        else:
            s = {"image": img, "box": boxes[0], "mask": masks[0], "text": r.text,
                 "meta": {"index": i, "sent_id": r.sent_id, "orig_size": r.orig_size}}
        if self.instances is not None:
            s["instances"], s["inst_labels"] = self._instance_map(r.image_id, r.orig_size)
        return self.transform(s)


class ImageGroupBatchSampler:
    """Batches of groups of up to ``k`` expressions of one image (each a tuple of record indices),
    ``batch_size // k`` groups a batch, so a batch holds about ``batch_size`` expressions but the
    backbone sees ``batch_size // k`` images. Every expression is used once an epoch. Within an image
    the expressions are dealt round-robin over its objects, so a group names different objects of
    one image whenever the image has several: only the text tells its targets apart.
    Deterministic given (seed, epoch); with ``world`` ranks each gets a disjoint equal share."""

    def __init__(self, records, k: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if k < 1 or batch_size < 1:
            raise ValueError(f"k and batch_size must be >= 1; got {k}, {batch_size}")
        self.k, self.per_batch = k, max(1, batch_size // k)
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        by_image: dict[int, dict[int, list[int]]] = {}
        for i, r in enumerate(records):
            by_image.setdefault(r.image_id, {}).setdefault(r.ann_id, []).append(i)
        self.images = [list(by_image[im].values()) for im in sorted(by_image)]
        self.n_groups = sum(-(-sum(len(o) for o in objs) // k) for objs in self.images)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def groups(self) -> list[tuple[int, ...]]:
        """This rank's groups of the current epoch, shuffled."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        out = []
        for objs in self.images:
            objs = [rng.sample(o, len(o)) for o in objs]
            rng.shuffle(objs)
            dealt = [o[j] for j in range(max(map(len, objs))) for o in objs if j < len(o)]
            out += [tuple(dealt[j:j + self.k]) for j in range(0, len(dealt), self.k)]
        rng.shuffle(out)
        per_rank = len(out) // self.world
        return out[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self):
        g = self.groups()
        for j in range(len(self)):
            yield g[j * self.per_batch:(j + 1) * self.per_batch]

    def __len__(self) -> int:  # full batches only
        return (self.n_groups // self.world) // self.per_batch


class Collate:
    """Stacks padded images (normalised), tokenises the (possibly flipped) texts, keeps metadata."""

    MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        """Single samples: one row per expression everywhere. Group samples: ``images``, ``instances``
        and ``inst_labels`` have a row per image, the rest a row per expression, and ``image_index``
        (one per expression) names its image's row."""
        group = isinstance(samples[0]["text"], list)
        texts = [t for s in samples for t in s["text"]] if group else [s["text"] for s in samples]
        ids, mask = self.tokenizer.encode(texts)
        out = {
            "images": torch.stack([(s["image"] - self.MEAN) / self.STD for s in samples]),
            "text_ids": ids, "text_mask": mask,
            "boxes": (torch.cat if group else torch.stack)([s["box_cxcywh"] for s in samples]).float(),
            "masks": (torch.cat if group else torch.stack)([s["mask"] for s in samples]),
        }
        if group:
            counts = torch.tensor([len(s["text"]) for s in samples])
            out["image_index"] = torch.repeat_interleave(torch.arange(len(samples)), counts)
            out["meta"] = [dict(s["meta"], index=i, sent_id=sid, text=t) for s in samples
                           for i, sid, t in zip(s["meta"]["index"], s["meta"]["sent_id"], s["text"])]
        else:
            out["meta"] = [dict(s["meta"], text=s["text"]) for s in samples]
        if "instances" in samples[0]:  # label tables padded to the most objects in the batch
            out["instances"] = torch.stack([s["instances"] for s in samples])
            n = max(s["inst_labels"].shape[0] for s in samples)
            k = samples[0]["inst_labels"].shape[1]
            out["inst_labels"] = torch.zeros(len(samples), n, k, dtype=torch.long)
            for i, s in enumerate(samples):
                out["inst_labels"][i, :s["inst_labels"].shape[0]] = s["inst_labels"]
        return out
