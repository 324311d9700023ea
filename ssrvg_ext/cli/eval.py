"""Evaluate a checkpoint: REC Acc@0.5, RES mIoU / oIoU / Prec@0.5:0.9 at original resolution; for a
video model (data.format=ytvos) J, F and J&F per expression and over the split; on A2D-Sentences /
JHMDB-Sentences (data.format=a2d / jhmdb) oIoU, mIoU, Prec@0.5:0.9 and mAP on the annotated frames
(docs/video.md).

    python -m ssrvg_ext.cli.eval --checkpoint runs/tiny/best.pth [--config CFG] --split val [--shuffle-text] [--out metrics.json]
    python -m ssrvg_ext.cli.eval --checkpoint runs/tiny/best.pth --split val testB --control val --out-dir runs/tiny
    python -m ssrvg_ext.cli.eval --checkpoint runs/ytvos/best.pth --split valid --submission runs/ytvos/submission
    python -m ssrvg_ext.cli.eval --checkpoint runs/davis/best.pth --split valid --davis runs/davis/results
    python -m ssrvg_ext.cli.eval --model models/tiny --split val data.ann_dir=... data.image_dir=...
    python -m ssrvg_ext.cli.eval --checkpoint runs/a2d/best.pth --split test data.format=jhmdb data.ann_dir=DIR

--model DIR evaluates a model folder of ssrvg-export (safetensors, nothing unpickled) instead of a
training checkpoint; its config names the dataset it was trained on, override data.* to point at
your copy.

Writes a JSON with the metrics and every expression's prediction (box + RLE mask): to --out for a
single evaluation, or eval_<split>.json (eval_<split>_shuffled.json for a control) in --out-dir.
--shuffle-text pairs each image with another expression of the split: a model that uses the
expression must score far lower then. --control SPLIT also evaluates SPLIT that way, next to the
plain evaluations, with the model loaded once. --submission DIR writes DIR/Annotations/<video>/<exp_id>/
<frame>.png and DIR/submission.zip (Ref-YouTube-VOS's server); --davis DIR writes DIR/anno_<k>/<video>/
<frame>.png (the DAVIS 2017 toolkit, Ref-DAVIS17's four annotators); both for one split.
"""

import argparse
import json
import os


import torch

from ssrvg_ext.engine import checkpoint, dist
from ssrvg_ext.engine.inference import load_for_inference
from ssrvg_ext.engine.data import load_records, make_dataset, make_loader, task_of
from ssrvg_ext.engine.evaluation import inference_on_dataset
from ssrvg_ext.engine.optim import amp_setup
from ssrvg_ext.evaluation.video_writers import write_davis_results, write_ytvos_submission
from ssrvg_ext.cli.report import table


def run(ckpt_path, evals, config=None, overrides=(), outs=None, ema=False, submission=None, davis=None) -> list[dict]:
    """Evaluates every (split, shuffle_text) of ``evals`` with the checkpoint loaded once; writes the
    i-th result to ``outs[i]`` when given (an ``outs`` entry may be a function of the pair). A split
    of None stands for the config's ``data.eval_splits`` (the benchmark's own splits). Returns the
    metrics in order and prints them as one table. ``submission`` / ``davis``: folders for a video
    model's result files (of the first evaluation)."""
    _, _, device = dist.init_from_env()
    loaded = load_for_inference(ckpt_path, config, overrides, ema=ema, device=device)
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.cfg
    default = cfg["data"].get("eval_splits", ["val"])  # configs of earlier checkpoints have none
    jobs = [((s, sh), o(s, sh) if callable(o) else o)
            for (split, sh), o in zip(evals, outs or [None] * len(evals)) for s in ([split] if split else default)]
    task = task_of(cfg)
    if (submission or davis) and (not task.video or cfg["data"]["format"] != "ytvos"):
        raise ValueError("--submission and --davis write Ref-YouTube-VOS / Ref-DAVIS results: they need data.format=ytvos")
    amp_dtype, results, rows = amp_setup(cfg, device)[0], [], []
    for (split, shuffle_text), out in jobs:
        ds = make_dataset(cfg, load_records(cfg, split, shuffle_text), train=False)
        loader, _ = make_loader(cfg, ds, tok, train=False)
        desc = f"eval {split}" + (" (shuffled text)" if shuffle_text else "")
        metrics, preds = inference_on_dataset(model, loader, task.evaluator(ds), device, amp_dtype, desc=desc)
        if dist.is_main():
            print(json.dumps({"split": split, "shuffle_text": shuffle_text, **metrics}, indent=1), flush=True)
            if out:
                checkpoint.save_atomic({"split": split, "checkpoint": ckpt_path, "shuffle_text": shuffle_text,
                                        "metrics": metrics, "predictions": preds}, out,
                                       dump=lambda o, f: f.write(json.dumps(o).encode()))
        if dist.is_main() and not results:
            if submission:
                print(f"wrote {write_ytvos_submission(preds, submission)}", flush=True)
            if davis:
                print(f"wrote {', '.join(write_davis_results(preds, davis))}", flush=True)
        results.append(metrics)
        rows.append((split, shuffle_text, metrics))
    if dist.is_main():
        print(table(rows), flush=True)
    dist.cleanup()
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a best.pth / last.pth of ssrvg-train")
    src.add_argument("--model", help="a model folder of ssrvg-export")
    p.add_argument("--config", default=None, help="default: the config stored in the checkpoint")
    p.add_argument("--split", nargs="+", default=None,
                   help="one or more splits (default: the config's data.eval_splits, e.g. val testA testB)")
    p.add_argument("--shuffle-text", action="store_true", help="evaluate the splits with shuffled expressions")
    p.add_argument("--control", nargs="+", default=[], metavar="SPLIT",
                   help="also evaluate these splits with shuffled expressions")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights when the checkpoint has them")
    p.add_argument("--out", default=None, help="output JSON (a single evaluation only)")
    p.add_argument("--out-dir", default=None, help="folder for eval_<split>[_shuffled].json, one per evaluation")
    p.add_argument("--submission", default=None, help="video: write a Ref-YouTube-VOS submission folder and zip here")
    p.add_argument("--davis", default=None, help="video: write Ref-DAVIS17 results (anno_<k>/<video>/<frame>.png) here")
    p.add_argument("overrides", nargs="*", help="key=value changes to the config (e.g. data.ann_dir=...)")
    a = p.parse_args()
    for names in (a.split or [], a.control):  # "--split val testB key=value": the list options swallow overrides
        a.overrides += [x for x in names if "=" in x]
        names[:] = [x for x in names if "=" not in x]
    if a.split is not None and not a.split:
        p.error("--split needs at least one split name")
    if a.shuffle_text and a.control:
        p.error("--control adds shuffled evaluations to plain ones; with --shuffle-text every split is shuffled already")
    evals = [(s, a.shuffle_text) for s in (a.split or [None])] + [(s, True) for s in a.control]
    if a.out and a.out_dir:
        p.error("give --out or --out-dir, not both")
    if (a.submission or a.davis) and (a.split is None or len(a.split) != 1 or a.shuffle_text):
        p.error("--submission / --davis write the results of one split: give one --split (without --shuffle-text)")
    if a.out and (len(evals) > 1 or a.split is None):
        p.error("--out takes a single evaluation (one --split): use --out-dir")
    if a.out_dir:
        outs = [lambda s, sh: os.path.join(a.out_dir, f"eval_{s}{'_shuffled' if sh else ''}.json")] * len(evals)
    else:
        outs = [a.out] * len(evals)
    if a.model and (a.config or a.ema):
        p.error("--config / --ema apply to a training checkpoint; a model folder's config and weights are fixed")
    with torch.inference_mode():
        run(a.checkpoint or a.model, evals, a.config, a.overrides, outs, a.ema, a.submission, a.davis)


if __name__ == "__main__":
    main()
