"""Paired ablation of method presets against the default on the embedded dataset.

    python benchmarks/ablate.py --variants configs/tiny_synthetic.yaml configs/methods/segvg.yaml \
        --seeds 0 1 --epochs 4 [--data data/synthetic] [--out runs/ablate]

A variant is a preset, optionally followed by config overrides after commas
(``configs/methods/segvg.yaml,loss.box_to_mask=false``). Every variant trains with every seed
(train.seed; the same data and, with --epochs, the same number of epochs; else each preset's own),
one run at a time, then is evaluated on val and testB (ssrvg-train / ssrvg-eval, as a user would).
Prints one markdown table: per variant and seed, then mean ± standard deviation over the seeds
(sample std; half-range for 2 seeds; one seed: the value alone): val and testB Acc@0.5 / mIoU /
oIoU, Prec@0.9, and Acc@0.5 on the relational and ordinal expressions (the embedded set names each
expression's form), the same on val + testA + testB together ("all": ~1200 held-out expressions, a smaller evaluation noise), seconds
per epoch, parameters. --paired VARIANT adds, per other variant, the mean ± std of its per-seed
difference from VARIANT (the same seed: the same data order and initial draws where the presets
share parts), in bold where a two-sided paired t-test over the seeds finds it beyond their spread
(95 % level). Runs already finished (their eval JSONs exist) are not repeated; an interrupted run
resumes from its last checkpoint. --eval-overrides evaluates every run with config changes (into a
folder of the run named by them). --jobs N trains N runs side by side, each on cpu_count / N threads
(on 2 cores, two one-thread runs finish ~1.5x sooner than one two-thread run after another; seconds
per epoch are then those of a shared machine), each run's output in <out>/<run>.log. A run that
another process is training (another ablation sharing it) is waited for, then read or resumed.

--video ablates video presets on the embedded video set (data/synthetic_video, generated when
missing): J&F, J, F and J&F on the motion and the appearance expressions, on valid, testB and the two
together ("all", 256 expressions), each run's last.pth evaluated (not best.pth, which `make
train-video` picks on valid: a selection on the split it reports).
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

SPLITS = ("val", "testA", "testB")
POOLED = ("Acc@0.5", "mIoU", "Prec@0.9", "Acc@0.5[rel]", "Acc@0.5[ordinal]")
COLS = [("val", "Acc@0.5"), ("val", "mIoU"), ("val", "oIoU"), ("val", "Prec@0.9"), ("val", "Acc@0.5[rel]"),
        ("val", "Acc@0.5[ordinal]"), ("testB", "Acc@0.5"), ("testB", "mIoU"), ("testB", "oIoU"),
        ("testB", "Acc@0.5[rel]"), ("testB", "Acc@0.5[ordinal]"),
        ("all", "Acc@0.5"), ("all", "mIoU"), ("all", "Prec@0.9"), ("all", "Acc@0.5[rel]"), ("all", "Acc@0.5[ordinal]")]
# --video: the embedded video set's splits and J&F (motion / appearance: the expressions' kinds)
VIDEO_SPLITS = ("valid", "testB")
VIDEO_POOLED = ("J&F", "J", "F", "J&F[motion]", "J&F[appearance]")
VIDEO_COLS = [("valid", m) for m in VIDEO_POOLED] + [("testB", m) for m in ("J&F", "J&F[motion]", "J&F[appearance]")] \
    + [("all", m) for m in VIDEO_POOLED]


def pooled(res: dict, splits=SPLITS, metrics=POOLED) -> dict:
    """The metrics of the held-out splits together (val, testA and testB: ~1200 expressions on the
    embedded set, a third of one split's binomial variance): each a mean over expressions, so the
    splits' values weighted by their counts (n, or n[form] for a form's)."""
    out = {}
    for m in metrics:
        n_key = "n" + m[m.index("["):] if "[" in m else "n"
        parts = [(res[s][m], res[s][n_key]) for s in splits if m in res[s] and res[s].get(n_key)]
        if parts:  # a split without such expressions adds none
            out[m] = sum(v * n for v, n in parts) / sum(n for _, n in parts)
    return out


def spread(xs: list[float]) -> tuple[float, float | None, str]:
    """(mean, sample std or half-range, its name) of the per-seed values; one value has no spread (None)."""
    if len(xs) >= 3:
        return statistics.mean(xs), statistics.stdev(xs), "std"
    if len(xs) == 1:
        return xs[0], None, ""
    return statistics.mean(xs), (max(xs) - min(xs)) / 2, "half-range"


# Student's t, 97.5 % quantile, by degrees of freedom (1-30): the two-sided 95 % paired t-test of a
# difference over n seeds uses n - 1; more than 31 seeds use the value at 30 (conservative)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def beyond_spread(xs: list[float]) -> bool:
    """Whether per-seed differences xs differ from zero by a two-sided paired t-test at the 95 % level:
    |mean| > t(0.975, n - 1) x sample std / sqrt(n). One seed never does; no spread at all does when
    the mean is not zero."""
    if len(xs) < 2:
        return False
    mean, sd = statistics.mean(xs), statistics.stdev(xs)
    return abs(mean) > T975[min(len(xs) - 1, len(T975)) - 1] * sd / len(xs) ** 0.5


def pm(mean: float, sd: float | None, sign: str = "") -> str:
    """"mean ± spread" (the mean alone without a spread)."""
    return f"{mean:{sign}.2f}" + ("" if sd is None else f" ± {sd:.2f}")


def label(kind: str) -> str:
    """The statistic a mean row reports: "mean ± std", "mean ± half-range", or "mean" (one seed)."""
    return f"mean ± {kind}" if kind else "mean"


def cell(r: dict, split: str, metric: str) -> float | None:
    v = r.get(split, {}).get(metric)
    return None if v is None else 100 * v


def run(cmd: list[str], log: str | None = None, threads: int | None = None) -> None:
    """Runs cmd (its output to the file log when given, on that many threads when given)."""
    sys.stdout.write("$ " + " ".join(cmd) + "\n")  # one write: side-by-side runs print whole lines
    sys.stdout.flush()
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if log is None:
        subprocess.run(cmd, check=True, env=env)
        return
    with open(log, "a") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}); its output: {log}")


WAIT_S = 30.0  # how often a run that another process trains is looked at again


def wait_while_trained(out: str) -> None:
    """Returns once no other process trains into ``out`` (ssrvg-train's folder lock, run_lock): two
    ablations that share a run then take turns instead of the second failing."""
    from ssrvg_ext.engine.trainer import RunFolderBusy, run_lock

    said = False
    while True:
        try:
            with run_lock(out):
                return
        except RunFolderBusy as e:
            if not said:
                print(f"waiting: {e}", flush=True)
                said = True
            time.sleep(WAIT_S)


def one(spec: str, seed: int, a) -> dict:
    variant, *sets = spec.split(",")
    name = "+".join([os.path.splitext(os.path.basename(variant))[0]] + sets)
    out = os.path.join(a.out, f"{name}_s{seed}".replace("=", "-"))
    wait_while_trained(out)
    splits = VIDEO_SPLITS if a.video else SPLITS
    data = [f"data.ann_dir={a.data}", f"data.image_dir={a.data if a.video else os.path.join(a.data, 'images')}"]
    log, threads = (None, None) if a.jobs == 1 else (out + ".log", max(1, (os.cpu_count() or 1) // a.jobs))
    # --eval-overrides: the evaluations of that setting in their own folder, beside the plain ones
    ev = os.path.join(out, "eval+" + "+".join(a.eval_overrides).replace("=", "-")) if a.eval_overrides else out
    missing = [s for s in splits if not os.path.isfile(os.path.join(ev, f"eval_{s}.json"))]
    # a run evaluated (plainly, or with these overrides) has finished: not started again, which would
    # rewrite its config.yaml with the current code's view of the preset
    if missing and not os.path.isfile(os.path.join(out, "eval_testB.json")):
        run([sys.executable, "-m", "ssrvg_ext.cli.train", "--config", variant, "--out", out, "--resume", "auto",
             *([f"train.epochs={a.epochs}"] if a.epochs else []), f"train.seed={seed}", *data, *sets], log, threads)
    if missing:  # a run made before testA was evaluated gets only that
        run([sys.executable, "-m", "ssrvg_ext.cli.eval", "--checkpoint", os.path.join(out, "last.pth"),
             "--split", *missing, "--out-dir", ev, *a.eval_overrides], log, threads)
    res = {"variant": name, "seed": seed}
    for split in splits:
        with open(os.path.join(ev, f"eval_{split}.json")) as f:
            res[split] = json.load(f)["metrics"]
    res["all"] = pooled(res, splits, VIDEO_POOLED if a.video else POOLED)
    with open(os.path.join(out, "log.jsonl")) as f:
        epochs = [json.loads(line) for line in f if '"time_s"' in line]
    # time_s: the training time so far (a resumed run's included); an epoch logged twice (killed between its
    # record and its checkpoint) counts once
    res["s_per_epoch"] = epochs[-1]["time_s"] / len({e["epoch"] for e in epochs})
    from ssrvg_ext.engine import checkpoint

    res["params_M"] = sum(v.numel() for v in checkpoint.load(os.path.join(out, "last.pth"))["model"].values()) / 1e6
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=None, help="train.epochs of every run (default: each preset's own)")
    p.add_argument("--eval-overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config changes for the evaluation only (e.g. model.mask_refine.enabled=true: runs trained "
                        "before a preset switched an inference option on, evaluated as it is now); the results go "
                        "to <run>/eval+<overrides>/")
    p.add_argument("--data", default=None, help="the embedded set's folder (default data/synthetic, "
                   "with --video data/synthetic_video); generated when missing")
    p.add_argument("--video", action="store_true", help="video presets on the embedded video set: J&F")
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--paired", default=None, help="the baseline variant (as given in --variants) for paired differences")
    p.add_argument("--jobs", type=int, default=1, help="runs trained side by side (each on cpu_count / jobs threads)")
    a = p.parse_args()
    if a.jobs < 1:
        p.error("--jobs must be at least 1")
    if a.epochs is not None and a.epochs < 1:
        p.error("--epochs must be at least 1")
    if a.paired is not None and a.paired not in a.variants:
        p.error("--paired must name one of --variants")
    a.data = a.data or ("data/synthetic_video" if a.video else "data/synthetic")
    marker = "meta_expressions/train/meta_expressions.json" if a.video else "instances.json"
    if not os.path.isfile(os.path.join(a.data, marker)):
        run([sys.executable, "-m", "ssrvg_ext.cli.make_synthetic" + ("_video" if a.video else ""), "--out", a.data])
    os.makedirs(a.out, exist_ok=True)  # the side-by-side runs' logs go beside their run folders
    jobs = [(v, s) for s in a.seeds for v in a.variants]  # seeds outermost: variants alternate
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(lambda j: one(j[0], j[1], a), jobs))
    paired = None if a.paired is None else rows[a.variants.index(a.paired)]["variant"]
    print(table(rows, paired, VIDEO_COLS if a.video else COLS))


def table(rows: list[dict], paired: str | None = None, cols=COLS) -> str:
    """The markdown table of the runs: one row per run, mean ± spread per variant and, against the
    variant named paired, the mean ± spread of the per-seed differences."""
    lines = ["| variant | seed | " + " | ".join(f"{s} {m}" for s, m in cols) + " | s / epoch | params (M) |",
             "|" + "---|" * (len(cols) + 4)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(
            "-" if cell(r, s, m) is None else f"{cell(r, s, m):.2f}" for s, m in cols)
            + f" | {r['s_per_epoch']:.0f} | {r['params_M']:.3f} |")
    names = list(dict.fromkeys(r["variant"] for r in rows))
    for v in names:
        rs = [r for r in rows if r["variant"] == v]
        cells, kind = [], "half-range"
        for s, m in cols:
            xs = [cell(r, s, m) for r in rs if cell(r, s, m) is not None]
            if not xs:
                cells.append("-")
                continue
            mean, sd, kind = spread(xs)
            cells.append(pm(mean, sd))
        lines.append(f"| **{v}** {label(kind)} | {len(rs)} seeds | " + " | ".join(cells)
                     + f" | {statistics.mean(r['s_per_epoch'] for r in rs):.0f} | {rs[0]['params_M']:.3f} |")
    if paired:
        base_name = paired
        base = {r["seed"]: r for r in rows if r["variant"] == base_name}
        for v in names:
            if v == base_name:
                continue
            rs = [r for r in rows if r["variant"] == v and r["seed"] in base]
            cells, kind = [], "half-range"
            for s, m in cols:
                xs = [cell(r, s, m) - cell(base[r["seed"]], s, m) for r in rs
                      if cell(r, s, m) is not None and cell(base[r["seed"]], s, m) is not None]
                if not xs:
                    cells.append("-")
                    continue
                mean, sd, kind = spread(xs)
                cells.append(f"**{pm(mean, sd, '+')}**" if beyond_spread(xs) else pm(mean, sd, "+"))
            lines.append(f"| {v} - {base_name}, paired, {label(kind)} | {len(rs)} seeds | " + " | ".join(cells) + " | | |")
        lines += ["", "Bold paired differences: beyond the seeds' spread by a two-sided paired t-test at the 95 % "
                  "level (|mean| > t(0.975, n - 1) x std / sqrt(n): 2.48 std with 3 seeds, 12.7 half-ranges with 2)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
