"""Helpers shared by the benchmark scripts: timing with warm-up and synchronisation, inputs."""

import gc
import math
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


def alternating(fns, repeat=5, warmup=1, device=None, min_sample=0.0, warmup_s=0.0):
    """{name: median seconds per call} of each fn(), the variants taking turns within every round (a
    drift in the machine's speed reaches all of them alike); CUDA synchronised around each sample.
    min_sample: a sample times as many back-to-back calls as last about this many seconds (calibrated
    on the warm-up), so that calls of tens of microseconds are not lost in timer and scheduler noise.
    warmup_s: each variant also runs for at least this long first (on the 2-core CPU machine a loop
    of 100-microsecond calls takes seconds to reach its steady speed)."""
    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    number = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        calls = 0
        while calls < max(1, warmup) or time.perf_counter() - t0 < warmup_s:
            fn()
            calls += 1
        sync()
        per_call = (time.perf_counter() - t0) / calls
        number[name] = max(1, math.ceil(min_sample / max(per_call, 1e-9))) if min_sample > 0 else 1
    times = {name: [] for name in fns}
    gc_was_on = gc.isenabled()
    gc.disable()  # as timeit: a collection inside a sample would charge one variant for all
    try:
        for _ in range(repeat):
            for name, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(number[name]):
                    fn()
                sync()
                times[name].append((time.perf_counter() - t0) / number[name])
    finally:
        if gc_was_on:
            gc.enable()
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

