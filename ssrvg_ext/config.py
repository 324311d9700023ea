"""YAML configs with ``_base_`` inheritance and ``key.sub=value`` overrides, strictly checked.

- A file may only set keys its ``_base_`` chain defines (the root, ``configs/base.yaml``, defines
  them all): a typo such as ``train.epoch`` is an error that suggests the closest known key.
- Overrides may only set keys the loaded config has; values are parsed as YAML.
- ``_base_`` cycles and missing base files are errors naming the files involved.
- Keys the code needs (:data:`REQUIRED`) must be present; a missing one is named with the file.
- Free-form sections (:data:`OPEN_SECTIONS`: timm keyword arguments, the mask-loss weight table)
  accept new keys.
"""

from __future__ import annotations

import copy
import difflib
import os

import yaml

OPEN_SECTIONS = ("model.backbone.kwargs", "loss.mask")
REQUIRED = ("model.d_model", "model.mask_dim", "model.backbone.name", "model.text", "model.fusion", "model.decoder",
            "data.ann_dir", "data.image_dir", "data.input_size", "data.max_len", "data.train_split", "data.val_split",
            "train.epochs", "train.batch_size", "train.lr", "train.lr_backbone", "train.lr_text", "train.weight_decay")


DEFAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")


def defaults() -> dict:
    """Every key with its default: ``ssrvg_ext/defaults.yaml`` (the root of ``configs/base.yaml``)."""
    with open(DEFAULTS) as f:
        return yaml.safe_load(f)


# The few keys whose default is not what a model saved before the key existed did: such a config
# gets this value instead (not a second set of defaults: only where the two differ).
LEGACY = {
    "model.align.triple_pos": "projected",   # triple alignment added the positions after the projections
    "model.mask_box_coords": True,           # the mask heads always read the box-relative coordinates
}


def with_added_keys(cfg: dict) -> dict:
    """A copy of a saved config with every key it lacks set to its default (or its :data:`LEGACY`
    value): keys added after the checkpoint was saved, whose values keep such a model as it was.
    The open sections (:data:`OPEN_SECTIONS`) are taken as saved."""
    def fill(node: dict, base: dict, prefix: str) -> None:
        for k, v in base.items():
            key = prefix + str(k)
            if k not in node and isinstance(v, dict) and not _open(key):
                node[k] = {}
                fill(node[k], v, key + ".")
            elif k not in node:
                node[k] = copy.deepcopy(LEGACY.get(key, v))
            elif isinstance(v, dict) and isinstance(node[k], dict) and not _open(key):
                fill(node[k], v, key + ".")
    cfg = copy.deepcopy(cfg)
    fill(cfg, defaults(), "")
    return cfg


class ConfigError(ValueError):
    """A config file or override that is not valid; the message says where and why."""


def _open(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in OPEN_SECTIONS)


def _unknown(key: str, section: dict, where: str) -> ConfigError:
    """``key`` (dotted) is not in ``section`` (the mapping its last part should be in)."""
    prefix, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, [str(k) for k in section], n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?"
    else:
        hint = f"; {prefix!r} has {sorted(map(str, section))}" if prefix else f"; known sections: {sorted(map(str, section))}"
    return ConfigError(f"{where}: unknown config key {key!r}{hint}")


def merge(base: dict, over: dict, where: str | None = None, prefix: str = "") -> dict:
    """``over`` merged into a copy of ``base``. With ``where`` (the file of ``over``), a key that
    ``base`` does not define is an error, except inside :data:`OPEN_SECTIONS`."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = prefix + str(k)
        if where is not None and k not in out and not _open(key):
            raise _unknown(key, base, where)
        out[k] = merge(out[k], v, where, key + ".") if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else copy.deepcopy(v)
    return out


def _load(path: str, stack: tuple[str, ...]) -> dict:
    real = os.path.realpath(path)
    if real in stack:
        chain = " -> ".join(list(stack[stack.index(real):]) + [real])
        raise ConfigError(f"_base_ cycle: {chain}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {path} not found" + (f" (the _base_ of {stack[-1]})" if stack else ""))
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping; got {type(cfg).__name__}")
    bases = cfg.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not bases:
        return cfg  # a root file defines its keys
    base: dict = {}
    for b in bases:
        part = _load(os.path.join(os.path.dirname(path), b), stack + (real,))
        base = merge(base, part)  # several bases: each adds its own keys
    return merge(base, cfg, where=path)


def check_required(cfg: dict, where: str) -> None:
    for key in REQUIRED:
        node = cfg
        for p in key.split("."):
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"{where}: required config key {key!r} is missing")
            node = node[p]


def load_config(path: str, overrides: list[str] | None = None) -> dict:
    """Reads ``path``; its ``_base_`` (a path relative to it, or a list) is loaded first and the file
    merged over it. ``overrides`` like ``train.epochs=3`` are parsed as YAML values."""
    cfg = _load(path, ())
    check_required(cfg, path)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Sets ``key.sub=value`` entries (values parsed as YAML) in ``cfg``, in place; returns it. The key
    must exist in ``cfg`` (or lie in an open section)."""
    for o in overrides or []:
        if "=" not in o:
            raise ConfigError(f"override {o!r} must look like key.sub=value")
        key, val = o.split("=", 1)
        node = cfg
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            sub = ".".join(parts[:i + 1])
            if p not in node:
                if not _open(sub):
                    raise _unknown(sub, node, f"override {o!r}")
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"override {o!r}: {sub} is not a section")
        if parts[-1] not in node and not _open(key):
            raise _unknown(key, node, f"override {o!r}")
        try:
            node[parts[-1]] = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {o!r}: the value is not valid YAML ({e})") from None
    return cfg
