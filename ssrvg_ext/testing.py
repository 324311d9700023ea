"""Helpers for tests, benchmarks and profiling: a model-ready batch made of random numbers."""

from __future__ import annotations

import torch


def random_batch(b, size, max_len, vocab, device, seed=0):
    """A training / evaluation batch as the loaders make it (normalised images, token ids and
    mask, cxcywh boxes, filled-box masks, meta), from random numbers: no dataset needed."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(b, 2, generator=g) * 0.5 + 0.25
    wh = torch.rand(b, 2, generator=g) * 0.3 + 0.1
    boxes = torch.cat([centre, wh], 1)
    r = (torch.arange(size) + 0.5) / size
    inside = lambda c, half: (r[None] >= c[:, None] - half[:, None]) & (r[None] <= c[:, None] + half[:, None])  # noqa: E731
    masks = (inside(centre[:, 1], wh[:, 1] / 2)[:, :, None] & inside(centre[:, 0], wh[:, 0] / 2)[:, None, :]).to(torch.uint8)
    lengths = torch.randint(3, max_len + 1, (b,), generator=g)
    text_mask = torch.arange(max_len)[None] < lengths[:, None]
    text_ids = torch.randint(1, vocab, (b, max_len), generator=g) * text_mask
    valid = [(size, size - 16 * (i % 4)) for i in range(b)]  # some padding on the right
    meta = [{"index": i, "sent_id": i, "text": "", "orig_size": (480, 640), "scale": (v[0] / 480, v[1] / 640),
             "valid": v, "input_size": size} for i, v in enumerate(valid)]
    batch = {"images": torch.randn(b, 3, size, size, generator=g), "text_ids": text_ids, "text_mask": text_mask,
             "boxes": boxes, "masks": masks}
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    batch["meta"] = meta
    return batch
