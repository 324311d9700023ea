"""No hidden host synchronisation, and CUDA-graph capture of the deformable-attention op.

    python benchmarks/gpu_sync_graph.py [--config configs/tiny_synthetic.yaml] [--json out.json]

1. Each op's forward + backward under ``torch.cuda.set_sync_debug_mode("error")`` (any blocking
   copy or synchronise raises): deformable attention (atomic and deterministic backward, level
   table on the CPU), the fused mask loss.
2. One training step of the model (forward, losses, backward, clipping, AdamW; bf16 autocast)
   under "warn": every synchronisation is recorded with the Python line that caused it (none
   expected). The config's model, and with the default config also the RefCOCO Swin-T preset at
   640 px (an own BERT-sized text transformer instead of downloaded BERT weights).
3. A forward + backward of ms_deform_attn captured in a CUDA graph and replayed on new inputs
   copied into the static ones; the replay must equal the eager result.
Prints a summary and writes it as JSON.
"""

import argparse
import collections
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ssrvg_ext.config import load_config  # noqa: E402
from ssrvg_ext.testing import random_batch  # noqa: E402
from ssrvg_ext.engine.loops import TrainState, train_step  # noqa: E402
from ssrvg_ext.engine.optim import param_groups  # noqa: E402
from ssrvg_ext.models import build_criterion, build_model  # noqa: E402
from ssrvg_ext.ops import ms_deform_attn, upsampled_mask_loss  # noqa: E402

DEFAULT = "configs/tiny_synthetic.yaml"
SHAPES = torch.tensor([[32, 32], [16, 16], [8, 8], [4, 4]])  # on the CPU, as the model passes them
STARTS = torch.cat([torch.zeros(1, dtype=torch.long), (SHAPES[:, 0] * SHAPES[:, 1]).cumsum(0)[:-1]])


def msda_inputs(seed, n=2, lq=100, m=8, d=32, p=4):
    g = torch.Generator().manual_seed(seed)
    s = int((SHAPES[:, 0] * SHAPES[:, 1]).sum())
    value = torch.randn(n, s, m, d, generator=g).cuda()
    loc = (torch.rand(n, lq, m, 4, p, 2, generator=g) * 1.2 - 0.1).cuda()
    attn = torch.rand(n, lq, m, 4, p, generator=g).cuda()
    grad = torch.randn(n, lq, m * d, generator=g).cuda()
    return value, loc, attn, grad


def op_checks() -> dict:
    res = {}
    value, loc, attn, grad = msda_inputs(0)
    lo = torch.randn(4, 40, 40, device="cuda", requires_grad=True)
    tg = (torch.rand(4, 160, 160, device="cuda") < 0.3).to(torch.uint8)

    def msda(deterministic):
        torch.use_deterministic_algorithms(deterministic)
        try:
            xs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
            ms_deform_attn(xs[0], SHAPES, STARTS, xs[1], xs[2]).backward(grad)
        finally:
            torch.use_deterministic_algorithms(False)

    cases = {"ms_deform_attn fwd+bwd (atomic)": lambda: msda(False),
             "ms_deform_attn fwd+bwd (deterministic)": lambda: msda(True),
             "upsampled_mask_loss fwd+bwd": lambda: upsampled_mask_loss(lo, tg, num_masks=4).backward()}
    for name, fn in cases.items():
        fn()  # warm-up outside the check (first-call allocations, lazy init)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            res[name] = "no synchronisation"
        except RuntimeError as e:
            res[name] = f"SYNC: {str(e).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return res


def train_step_syncs(config: str, overrides: list[str]) -> dict:
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=1000).cuda().train()
    crit = build_criterion(cfg)
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=1e-4, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    size = cfg["data"]["input_size"]
    batch = random_batch(4, size, cfg["data"]["max_len"], 1000, "cuda")
    state = TrainState(model, crit, opt, sched, torch.bfloat16, None, cfg["train"]["clip"])
    train_step(state, batch)  # warm-up
    torch.cuda.synchronize()
    where = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(state, batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            where[f"{os.path.relpath(w.filename)}:{w.lineno}"] += 1
    res = {"config": config, "overrides": overrides, "input_size": size, "synchronisations": sum(where.values()),
           "where": dict(where)}
    if where:  # inside backward the Python line says little: name the ops around each synchronising call
        res["sync_ops"] = sync_ops(lambda: train_step(state, batch))
    return res


SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def sync_ops(fn) -> dict:
    """{'op <- parent <- ...': count} for every synchronising CUDA runtime call made by fn(), from
    the profiler's tree of CPU events (the autograd node names the backward ones)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    chains = collections.Counter()
    for e in prof.events():
        if e.name in SYNC_CALLS or e.name.startswith("cudaMemcpy") and "Async" not in e.name:
            names, p = [], e.cpu_parent
            while p is not None and len(names) < 6:
                names.append(p.name)
                p = p.cpu_parent
            chains[f"{e.name} <- " + " <- ".join(names)] += 1
    return dict(chains)


def graph_capture() -> dict:
    value, loc, attn, grad = msda_inputs(1)
    static = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    static_grad = grad.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on a side stream, as capture requires
        for _ in range(2):
            for t in static:
                t.grad = None
            ms_deform_attn(static[0], SHAPES, STARTS, static[1], static[2]).backward(static_grad)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    for t in static:
        t.grad = None
    with torch.cuda.graph(graph):
        out = ms_deform_attn(static[0], SHAPES, STARTS, static[1], static[2])
        out.backward(static_grad)
    new_value, new_loc, new_attn, new_grad = msda_inputs(2)
    with torch.no_grad():
        for t, new in zip(static, (new_value, new_loc, new_attn)):
            t.copy_(new)
        static_grad.copy_(new_grad)
    graph.replay()
    torch.cuda.synchronize()
    xs = [t.clone().requires_grad_(True) for t in (new_value, new_loc, new_attn)]
    eager = ms_deform_attn(xs[0], SHAPES, STARTS, xs[1], xs[2])
    eager.backward(new_grad)
    close = torch.allclose(out, eager, rtol=1e-5, atol=1e-5) and all(
        torch.allclose(t.grad, x.grad, rtol=1e-4, atol=1e-4) for t, x in zip(static, xs))
    return {"captured": True, "replay equals eager": bool(close),
            "max |out diff|": float((out - eager).abs().max())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT)
    p.add_argument("overrides", nargs="*", help="key=value config overrides for the training step")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a GPU")
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ops": op_checks()}
    res["train_step"] = []
    runs = [(args.config, args.overrides)]
    if not args.overrides and args.config == DEFAULT:  # and the RefCOCO Swin-T preset at 640 px
        runs.append(("configs/refcoco_swin_t.yaml", ["model.text.name_or_path=null", "data.tokenizer=null"]))
    for config, overrides in runs:
        try:
            res["train_step"].append(train_step_syncs(config, overrides))
        except Exception as e:  # report, do not hide
            res["train_step"].append({"config": config, "error": f"{type(e).__name__}: {e}"})
    try:
        res["cuda_graph"] = graph_capture()
    except Exception as e:
        res["cuda_graph"] = {"captured": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    ok = (all(v == "no synchronisation" for v in res["ops"].values())
          and all(r.get("synchronisations") == 0 for r in res["train_step"])
          and res["cuda_graph"].get("replay equals eager"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
