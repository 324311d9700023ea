"""Model folders: a trained model to share, in the layout of transformers / timm.

    DIR/model.safetensors     the weights only (fp32, or bf16 on request); no optimizer, no RNG state
    DIR/config.json           {"format": "ssrvg_ext-model", "config": the exact model config, "tokenizer": ...}
    DIR/tokenizer.json        the word vocabulary (text encoder trained from scratch), or
    DIR/tokenizer/            a transformers tokenizer's files (a pretrained text encoder)
    DIR/text_encoder/config.json   the architecture of a transformers text encoder (when the model has one)
    DIR/README.md             the model card: training data, evaluation table, the commands that made it

:func:`export` writes one from a training checkpoint (``ssrvg-export``); :func:`load` reads one with
``safetensors`` and ``json`` only -- nothing is unpickled -- and checks every weight's name and shape
against the model its config builds.
"""

from __future__ import annotations

import copy
import glob
import json
import os

import torch

FORMAT = "ssrvg_ext-model"
WEIGHTS, CONFIG, CARD, TEXT_DIR = "model.safetensors", "config.json", "README.md", "text_encoder"
TOKENIZER_DIR = "tokenizer"  # a transformers tokenizer's files (a word vocabulary is DIR/tokenizer.json)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def is_model_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


def export(checkpoint_path: str, out_dir: str, dtype: str = "fp32", ema: bool = False, overwrite: bool = False,
           command: str | None = None) -> str:
    """Writes the model folder ``out_dir`` from a checkpoint of ssrvg-train (its EMA weights with
    ``ema``). ``dtype``: fp32 or bf16 (floating weights only; the model computes in fp32 after
    loading either). The folder is written beside ``out_dir`` and renamed into place, so a crash
    never leaves half a folder. Returns ``out_dir``."""
    from safetensors.torch import save_file

    from . import __version__
    from .engine import checkpoint as ckpt_io
    from .engine.checkpoint import atomic_folder
    from .engine.data import make_tokenizer
    from .engine.inference import aux_classes_of

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another --out or pass --overwrite")
    ckpt = ckpt_io.load(checkpoint_path)
    if ema and not ckpt.get("ema"):
        raise ValueError(f"{checkpoint_path} has no EMA weights (train.ema was off)")
    state = ckpt["ema"] if ema else ckpt["model"]
    cast = DTYPES[dtype]
    # clones: safetensors refuses tensors that share storage; the model ties them again when it loads
    weights = {k: (v.to(cast) if v.is_floating_point() else v).detach().clone().contiguous() for k, v in state.items()}
    cfg = copy.deepcopy(ckpt["config"])
    tok = make_tokenizer(cfg, state=ckpt["tokenizer"])  # its files go into the folder

    with atomic_folder(out_dir) as tmp:
        save_file(weights, os.path.join(tmp, WEIGHTS), metadata={"format": "pt", "producer": f"ssrvg_ext {__version__}"})
        tok.save(os.path.join(tmp, "tokenizer.json" if ckpt["tokenizer"]["kind"] == "word" else TOKENIZER_DIR))
        text_folder = cfg["model"]["text"].get("name_or_path")
        if text_folder:  # the receiver needs the architecture, not the original folder
            from transformers import AutoConfig

            AutoConfig.from_pretrained(text_folder, local_files_only=True).save_pretrained(os.path.join(tmp, TEXT_DIR))
        meta = {"format": FORMAT, "ssrvg_ext_version": __version__, "dtype": dtype, "ema": bool(ema),
                "config": cfg, "aux_classes": aux_classes_of(ckpt),
                "tokenizer": {"kind": ckpt["tokenizer"]["kind"], "max_len": ckpt["tokenizer"]["max_len"]},
                "text_encoder": TEXT_DIR if text_folder else None,
                "source": {"checkpoint": os.path.abspath(checkpoint_path), "epoch": ckpt.get("epoch"),
                           "step": ckpt.get("step"), "metrics": ckpt.get("metrics") or {},
                           "train_command": ckpt.get("command")}}
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(meta, f, indent=1)
        with open(os.path.join(tmp, CARD), "w") as f:
            f.write(model_card(meta, checkpoint_path, out_dir, command))
        _share_permissions(tmp)
    return out_dir


def _share_permissions(folder: str) -> None:
    """The modes a plain ``mkdir`` / ``open`` give under the user's umask (mkdtemp and some writers
    make private ones): a folder made to be shared is readable as the user's files are."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


def _build(cfg: dict, tok_state: dict, aux_classes, text_dir: str | None) -> dict:
    """The tokenizer and an untrained model of ``cfg`` (no pretrained file read)."""
    from .engine.data import make_tokenizer
    from .engine.inference import without_pretrained
    from .models import build_model

    cfg = without_pretrained(cfg)
    if text_dir:
        cfg["model"]["text"]["name_or_path"] = text_dir
    tok = make_tokenizer(cfg, state=tok_state)
    model = build_model(cfg, vocab_size=tok.vocab_size, aux_classes=aux_classes, mask_token_id=tok.mask_id)
    return {"tokenizer": tok, "model": model, "cfg": cfg}


def read_meta(path: str) -> dict:
    """The folder's config.json, checked (a clear error for a folder that is not a model folder)."""
    cfg_path = os.path.join(path, CONFIG)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} is not a model folder: no {CONFIG} (ssrvg-export writes one)")
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not an ssrvg_ext model config (its \"format\" is not {FORMAT!r}); "
                         "a transformers or timm folder cannot be loaded as a grounding model")
    for key in ("config", "tokenizer"):
        if key not in meta:
            raise ValueError(f"{cfg_path} has no {key!r} entry")
    for f in (WEIGHTS,):
        if not os.path.isfile(os.path.join(path, f)):
            raise FileNotFoundError(f"model folder {path} has no {f}")
    return meta


def load(path: str, overrides=(), device: torch.device | str = "cpu"):
    """The model of the folder ``path`` in eval mode on ``device``, its tokenizer and config, as
    :class:`ssrvg_ext.engine.inference.Loaded`. Reads JSON, the tokenizer files and safetensors
    only. Every weight must match the model by name and shape: missing, unexpected and mis-shaped
    ones are listed in the error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .config import apply_overrides, with_added_keys
    from .engine.inference import Loaded

    meta = read_meta(path)
    cfg = apply_overrides(with_added_keys(meta["config"]), list(overrides))
    t = meta["tokenizer"]
    if t.get("kind") == "word":
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise FileNotFoundError(f"model folder {path} has no tokenizer.json")
        with open(tok_file) as f:
            tok_state = {"kind": "word", "json": f.read(), "max_len": t["max_len"]}
    else:
        tok_state = {"kind": "hf", "path": os.path.join(path, TOKENIZER_DIR), "max_len": t["max_len"]}
        if not os.path.isdir(tok_state["path"]):
            raise FileNotFoundError(f"model folder {path} has no {TOKENIZER_DIR}/ (the tokenizer's files)")
    text_dir = os.path.join(path, meta["text_encoder"]) if meta.get("text_encoder") else None
    built = _build(cfg, tok_state, meta.get("aux_classes"), text_dir)
    model = built["model"]
    try:
        weights = load_file(os.path.join(path, WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{os.path.join(path, WEIGHTS)} is unreadable or corrupt ({e})") from None
    check_weights(model.state_dict(), weights, os.path.join(path, WEIGHTS))
    model.load_state_dict(weights)  # casts bf16 weights to the model's fp32
    return Loaded(model.to(device).eval(), built["tokenizer"], built["cfg"], meta)


def check_weights(expected: dict, got: dict, where: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(f"{k}: {tuple(got[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
                    for k in set(expected) & set(got) if got[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        def few(names):
            return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({few(shapes)})" if shapes else ""]
        raise ValueError(f"the weights in {where} do not fit the model its config.json builds: "
                         + "; ".join(p for p in parts if p)
                         + ". Was the folder written by another version, or its config.json edited?")


def evaluation_rows(checkpoint_path: str) -> list:
    """(split, shuffled, metrics) of the eval_*.json that ssrvg-eval wrote beside the checkpoint."""
    rows = []
    for f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "eval_*.json"))):
        try:
            with open(f) as fh:
                ev = json.load(fh)
            rows.append((ev["split"], ev.get("shuffle_text", False), ev["metrics"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a foreign or partial file is not part of the card
    return rows


def model_card(meta: dict, checkpoint_path: str, out_dir: str, command: str | None) -> str:
    from .cli.report import table
    from .engine.data import task_of

    cfg, src = meta["config"], meta["source"]
    d, m, t = cfg["data"], cfg["model"], cfg["train"]
    video = task_of(cfg).video
    rows = evaluation_rows(checkpoint_path)
    if rows:
        evaluation = ("Evaluated with `ssrvg-eval` on the run's splits (original resolution; a shuffled-text row pairs "
                      "each image with another expression, a control that the model reads the expression):\n\n"
                      + table(rows))
    elif src["metrics"]:
        evaluation = ("The validation metrics saved with the checkpoint (no `eval_*.json` beside it):\n\n"
                      + table([("val (at checkpoint)", False, src["metrics"])]))
    else:
        evaluation = "No evaluation was saved with this checkpoint; run `ssrvg-eval --model DIR --split ...`."
    train_cmd = src.get("train_command") or f"ssrvg-train --config {os.path.join(os.path.dirname(checkpoint_path), 'config.yaml')}"
    export_cmd = command or f"ssrvg-export --checkpoint {checkpoint_path} --out {out_dir} --dtype {meta['dtype']}"
    cls = "VideoPredictor" if video else "Predictor"
    epoch = src.get("epoch")
    return f"""# {os.path.basename(os.path.abspath(out_dir))}

An SSRVG-REC referring-expression {"video segmentation" if video else "grounding"} model of
ssrvg_ext {meta['ssrvg_ext_version']}: given an image{" clip" if video else ""} and an
expression it returns the referred object's box and mask.

## Model
- backbone `{m['backbone']['name']}`, text encoder {f"`{m['text']['name_or_path']}` (architecture)" if m['text'].get('name_or_path')
  else f"BERT {m['text']['layers']} layers x {m['text']['hidden']} (trained from scratch)"}, d_model {m['d_model']},
  fusion {m['fusion']['layers']} / decoder {m['decoder']['layers']} layers; input {d['input_size']} px
- weights: `{WEIGHTS}` in {meta['dtype']}{" (EMA)" if meta['ema'] else ""}; the full config is `{CONFIG}`'s "config"

## Training data
- format `{d.get('format')}`, annotations `{d.get('ann_dir')}`, images `{d.get('image_dir')}`
- {"" if epoch is None else f"epoch {epoch + 1} of {t['epochs']}, step {src.get('step')}, "}batch {t['batch_size']}, lr {t['lr']}, seed {t.get('seed')}

## Evaluation
{evaluation}

## How it was made
```
{train_cmd}
{export_cmd}
```

## Use
```python
from ssrvg_ext import {cls}
p = {cls}.from_pretrained("{os.path.basename(os.path.abspath(out_dir))}")
```
or `ssrvg-eval --model DIR --split ...`, `ssrvg-demo --web --model DIR`. Loading reads `{CONFIG}`, the tokenizer
files and `{WEIGHTS}` only: nothing is unpickled.
"""
