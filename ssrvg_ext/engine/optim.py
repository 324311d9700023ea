"""Optimisation: parameter groups, learning-rate schedule, mixed precision, EMA."""

from __future__ import annotations

import math

import torch


def param_groups(model, cfg: dict) -> list[dict]:
    t = cfg["train"]
    groups = {"backbone": [], "text": [], "rest": []}
    for n, p in model.named_parameters():
        if p.requires_grad:
            key = "backbone" if n.startswith("backbone.body.") else "text" if n.startswith("text.bert.") else "rest"
            groups[key].append(p)
    lrs = {"backbone": t["lr_backbone"], "text": t["lr_text"], "rest": t["lr"]}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def lr_factor(step: int, total: int, warmup: int, schedule: str, step_at: float = 0.8) -> float:
    """Multiplier of the base learning rates: linear warmup, then cosine decay to 0 or a x0.1 step at
    the fraction ``step_at`` of the training."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    if schedule == "step":
        return 0.1 if step >= int(step_at * total) else 1.0
    raise ValueError(f"unknown schedule {schedule!r} (cosine or step)")


def amp_setup(cfg: dict, device: torch.device):
    """(autocast dtype or None, GradScaler or None): bf16 where supported, fp16 + scaler otherwise, off on CPU."""
    mode = cfg["train"]["amp"]
    if device.type != "cuda" or mode in (False, "off", "none"):
        return None, None
    if torch.cuda.is_bf16_supported() and mode in ("auto", "bf16", True):
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


class EMA:
    """Exponential moving average of the parameters and buffers."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach().float(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, s):
        self.shadow = {k: v.clone() for k, v in s.items()}


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, then every per-parameter state tensor laid out as its parameter
    (a channels-last weight's moments channels-last): a checkpoint's tensors keep the layout they were
    saved in, and the fused AdamW kernel reads a parameter and its moments as flat arrays, so moments in
    another layout than their parameter's (a run resumed with model.backbone.channels_last switched on)
    would update the wrong elements, silently."""
    opt.load_state_dict(state)
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def fused_if_supported() -> dict:
    """The fused AdamW kernel (CPU and CUDA in recent torch): one op for all parameters per step."""
    try:
        probe = torch.nn.Parameter(torch.zeros(1))
        torch.optim.AdamW([probe], fused=True)
        return {"fused": True}
    except (RuntimeError, TypeError, ValueError):
        return {}
