"""YAML configs with ``_base_`` inheritance and ``key.sub=value`` overrides."""

from __future__ import annotations

import copy
import os

import yaml


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(path: str, overrides: list[str] | None = None) -> dict:
    """Reads ``path``; a ``_base_`` entry (path relative to this file, or a list) is loaded first and
    this file is merged over it. ``overrides`` like ``train.epochs=3`` are parsed as YAML values."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {path} not found")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    bases = cfg.pop("_base_", [])
    for b in [bases] if isinstance(bases, str) else bases:
        cfg = merge(load_config(os.path.join(os.path.dirname(path), b)), cfg)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Sets ``key.sub=value`` entries (values parsed as YAML) in ``cfg``, in place; returns it."""
    for o in overrides or []:
        if "=" not in o:
            raise ValueError(f"override {o!r} must look like key.sub=value")
        key, val = o.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {o!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(val)
    return cfg
