"""Helpers shared by the benchmark scripts: timing with warm-up and synchronisation, inputs."""

import statistics
import time

import torch


def timeit(fn, repeat=5, warmup=1, device=None):
    """Median wall time of fn() in seconds, synchronising CUDA around each call."""
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def alternating(fns, repeat=5, warmup=1, device=None):
    """{name: median seconds} of each fn(), the variants taking turns within every round (a drift in
    the machine's speed reaches all of them alike); CUDA synchronised around each call."""
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def object_masks(n, h, w, seed=0):
    """Object-like binary masks: ellipses and rectangles of random position and size, uint8."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(h).view(1, h, 1).float()
    xs = torch.arange(w).view(1, 1, w).float()
    cy, cx = torch.rand(n, 1, 1, generator=g) * h, torch.rand(n, 1, 1, generator=g) * w
    ry = torch.rand(n, 1, 1, generator=g) * h / 4 + 4
    rx = torch.rand(n, 1, 1, generator=g) * w / 4 + 4
    ell = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    rect = ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
    return torch.where(torch.rand(n, 1, 1, generator=g) < 0.5, ell, rect).to(torch.uint8)


def device_name():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def synthetic_batch(b, size, max_len, vocab, device, seed=0):
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
