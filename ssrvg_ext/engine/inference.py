"""A trained model ready for inference: the one loader used by evaluation, the demo and predictors."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch

from ..config import apply_overrides, load_config, with_added_keys
from ..models import build_model
from . import checkpoint
from .data import make_tokenizer


@dataclass
class Loaded:
    model: torch.nn.Module  # in eval mode, on the requested device
    tokenizer: object
    cfg: dict
    checkpoint: dict


def aux_classes_of(ckpt: dict) -> dict | None:
    """The object-label classes the checkpoint's model was built with (kept next to the weights;
    checkpoints of earlier versions kept them in their config)."""
    if "aux_classes" in ckpt:
        return ckpt["aux_classes"]
    return ckpt["config"]["model"].get("aux_classes")


def without_pretrained(cfg: dict) -> dict:
    """The config to build a model whose weights come from a checkpoint: no pretrained file is read
    (the backbone's timm checkpoint need not exist here; the text encoder keeps its folder's
    architecture)."""
    cfg = copy.deepcopy(cfg)
    cfg["model"]["backbone"].update(pretrained=False, checkpoint=None)
    cfg["model"]["text"]["pretrained"] = False
    return cfg


def load_for_inference(path: str, config: str | None = None, overrides=(), ema: bool = False,
                       device: torch.device | str = "cpu") -> Loaded:
    """Loads ``path`` (weights only: nothing in it is executed), builds the model with the
    checkpoint's config (or ``config``; ``overrides`` like ``data.input_size=512`` either way), its
    tokenizer and label classes, and loads the weights (the EMA ones with ``ema`` when saved).
    ``path`` may also be a model folder of ssrvg-export (:mod:`ssrvg_ext.model_folder`)."""
    from .. import model_folder

    if model_folder.is_model_folder(path) or (os.path.isdir(path) and not config):
        if config or ema:
            raise ValueError(f"{path} is a model folder: its config and weights were fixed by ssrvg-export "
                             "(--config / ema apply to training checkpoints)")
        return model_folder.load(path, overrides, device)
    ckpt = checkpoint.load(path)
    cfg = load_config(config, list(overrides)) if config else apply_overrides(with_added_keys(ckpt["config"]),
                                                                             list(overrides))
    tok = make_tokenizer(cfg, state=ckpt["tokenizer"])
    model = build_model(without_pretrained(cfg), vocab_size=tok.vocab_size, aux_classes=aux_classes_of(ckpt),
                        mask_token_id=tok.mask_id)
    model.load_state_dict(ckpt["ema"] if ema and ckpt.get("ema") else ckpt["model"])
    return Loaded(model.to(device).eval(), tok, cfg, ckpt)
