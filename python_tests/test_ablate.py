"""benchmarks/ablate.py: the table it prints (per run, per variant, paired differences) and its
argument checks; the training it drives is the CLI's, tested elsewhere."""

import argparse
import json
import os
import statistics
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def ablate(load_benchmark):
    return load_benchmark("ablate")


def row(variant, seed, acc, miou=None):
    val = {"Acc@0.5": acc / 100, **({"mIoU": miou / 100} if miou is not None else {})}
    return {"variant": variant, "seed": seed, "val": val, "testB": {"Acc@0.5": acc / 200},
            "s_per_epoch": 100.0 + seed, "params_M": 1.0}


def test_table_paired_differences(ablate):
    base, meth = [70.0, 74.0, 72.0], [75.0, 76.0, 80.0]
    rows = [r for s in range(3) for r in (row("base", s, base[s], 50.0), row("meth", s, meth[s]))]
    lines = ablate.table(rows, "base").splitlines()
    assert len(lines) == 2 + 6 + 2 + 1 + 2  # header, runs, means, paired, the note on bold
    assert lines[-1].startswith("Bold paired differences")
    mean_row = next(x for x in lines if x.startswith("| **meth**"))
    cells = [c.strip() for c in mean_row.split("|")[1:-1]]
    assert cells[1] == "3 seeds"
    assert cells[2] == f"{statistics.mean(meth):.2f} ± {statistics.stdev(meth):.2f}"
    assert cells[3] == "-"  # meth has no mIoU
    diff = [m - b for m, b in zip(meth, base)]
    paired = [c.strip() for c in lines[-3].split("|")[1:-1]]
    assert paired[0] == "meth - base, paired, mean ± std"
    # +5.00 ± 3.00 over 3 seeds: t = 2.89 < 4.30, within the spread (not bold)
    assert paired[2] == f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f}"
    assert paired[3] == "-"
    # two seeds: half-range; a seed the baseline lacks is left out of the paired row
    two = ablate.table(rows[:4] + [row("meth", 7, 99.0)], "base").splitlines()
    assert "± 1.50" in two[-3] and "2 seeds" in two[-3]  # (75 - 70, 76 - 74): +3.50 ± 1.50
    # one seed: the value without a spread (not "± 0.00")
    one = ablate.table([row("base", 0, 70.0), row("meth", 0, 75.0)], "base").splitlines()
    cells = [c.strip() for c in one[-3].split("|")[1:-1]]
    assert cells[0] == "meth - base, paired, mean" and cells[2] == "+5.00"
    assert "±" not in "".join(cells[1:])


def test_paired_differences_beyond_the_spread_are_bold(ablate):
    # per-seed differences +5, +6, +7 (t = 10.4 > 4.30 at 2 degrees of freedom) on val, and on testB
    # (half of val's accuracy) +2.5, +3, +3.5: both beyond the spread
    rows = [r for s in range(3) for r in (row("base", s, 70.0 + s), row("meth", s, 75.0 + 2 * s))]
    paired = [c.strip() for c in ablate.table(rows, "base").splitlines()[-3].split("|")[1:-1]]
    assert paired[2] == "**+6.00 ± 1.00**"
    assert paired[2 + ablate.COLS.index(("testB", "Acc@0.5"))] == "**+3.00 ± 0.50**"
    # the critical value: |mean| > t x std / sqrt(n), just inside and just outside
    t3 = ablate.T975[1] / 3 ** 0.5
    xs = [-1.0, 0.0, 1.0]  # std 1
    assert not ablate.beyond_spread([x + 0.999 * t3 for x in xs])
    assert ablate.beyond_spread([x + 1.001 * t3 for x in xs])
    assert ablate.beyond_spread([-x - 1.001 * t3 for x in xs])  # either sign
    # two seeds: 12.71 half-ranges; one seed never; no spread: any mean but zero
    assert not ablate.beyond_spread([10.0, 12.0]) and ablate.beyond_spread([100.0, 102.0])
    assert not ablate.beyond_spread([50.0])
    assert ablate.beyond_spread([2.0, 2.0, 2.0]) and not ablate.beyond_spread([0.0, 0.0, 0.0])


def test_pooled_weighs_splits_by_their_counts(ablate):
    res = {"val": {"n": 400, "Acc@0.5": 0.80, "mIoU": 0.5, "n[rel]": 100, "Acc@0.5[rel]": 0.5},
           "testA": {"n": 400, "Acc@0.5": 0.90, "mIoU": 0.6, "n[rel]": 300, "Acc@0.5[rel]": 1.0},
           "testB": {"n": 200, "Acc@0.5": 0.70, "mIoU": 0.7, "n[rel]": 0}}
    got = ablate.pooled(res)
    assert got["Acc@0.5"] == pytest.approx((320 + 360 + 140) / 1000)
    assert got["mIoU"] == pytest.approx((200 + 240 + 140) / 1000)
    assert got["Acc@0.5[rel]"] == pytest.approx((50 + 300) / 400)  # testB has no relational expression
    assert "Prec@0.9" not in got


@pytest.mark.parametrize("args", [["--jobs", "0"], ["--paired", "c.yaml"], ["--epochs", "0"]])
def test_bad_arguments(ablate, monkeypatch, args):
    monkeypatch.setattr(sys, "argv", ["ablate.py", "--variants", "a.yaml", "b.yaml", *args])
    with pytest.raises(SystemExit) as e:
        ablate.main()
    assert e.value.code == 2


def test_video_pooled_and_columns(ablate):
    """--video: valid and testB pooled by their counts (a kind by its own count); the table's columns
    are J&F's, and a run without a kind's expressions shows '-' there."""
    res = {"valid": {"n": 100, "J&F": 0.7, "J": 0.6, "F": 0.8, "J&F[motion]": 0.9, "n[motion]": 60},
           "testB": {"n": 300, "J&F": 0.5, "J": 0.4, "F": 0.6, "J&F[motion]": 0.3, "n[motion]": 20}}
    got = ablate.pooled(res, ablate.VIDEO_SPLITS, ablate.VIDEO_POOLED)
    assert got["J&F"] == pytest.approx((70 + 150) / 400)
    assert got["J"] == pytest.approx((60 + 120) / 400)
    assert got["J&F[motion]"] == pytest.approx((54 + 6) / 80)
    assert "J&F[appearance]" not in got
    rows = [{"variant": "v", "seed": 0, **res, "all": got, "s_per_epoch": 1.0, "params_M": 1.0}]
    header, _, line, *_ = ablate.table(rows, cols=ablate.VIDEO_COLS).splitlines()
    names = [c.strip() for c in header.split("|")[1:-1]]
    cells = dict(zip(names, (c.strip() for c in line.split("|")[1:-1])))
    assert cells["valid J&F"] == "70.00" and cells["all J&F"] == "55.00" and cells["valid J&F[appearance]"] == "-"
    assert not any(n.startswith("val ") for n in names)


def test_eval_overrides_evaluate_into_their_own_folder(ablate, monkeypatch, tmp_path):
    """--eval-overrides: a finished run is not trained again; its evaluation with the changes runs once,
    into <run>/eval+<changes>/, and the row reads those results, not the plain ones."""
    calls = []

    def fake_run(cmd, log=None, threads=None):
        calls.append(cmd)
        if "ssrvg_ext.cli.eval" in cmd:
            out = cmd[cmd.index("--out-dir") + 1]
            os.makedirs(out, exist_ok=True)
            for s in cmd[cmd.index("--split") + 1:cmd.index("--out-dir")]:
                with open(os.path.join(out, f"eval_{s}.json"), "w") as f:
                    json.dump({"metrics": {"n": 10, "Acc@0.5": 0.9, "mIoU": 0.8}}, f)

    run_dir = tmp_path / "tiny_synthetic_s0"
    run_dir.mkdir()
    for s in ablate.SPLITS:  # the plain evaluation, made when the run finished
        (run_dir / f"eval_{s}.json").write_text(json.dumps({"metrics": {"n": 10, "Acc@0.5": 0.5, "mIoU": 0.4}}))
    (run_dir / "log.jsonl").write_text(json.dumps({"epoch": 0, "time_s": 10.0}) + "\n")
    torch.save({"model": {"w": torch.zeros(3)}}, run_dir / "last.pth")
    monkeypatch.setattr(ablate, "run", fake_run)
    a = argparse.Namespace(out=str(tmp_path), video=False, data="d", jobs=1, epochs=None,
                           eval_overrides=["model.mask_refine.enabled=true"])
    res = ablate.one("configs/tiny_synthetic.yaml", 0, a)
    assert [c[2] for c in calls] == ["ssrvg_ext.cli.eval"]  # evaluated, not trained
    assert calls[0][-1] == "model.mask_refine.enabled=true"
    assert (run_dir / "eval+model.mask_refine.enabled-true" / "eval_val.json").is_file()
    assert res["val"]["mIoU"] == 0.8
    calls.clear()
    assert ablate.one("configs/tiny_synthetic.yaml", 0, a)["val"]["mIoU"] == 0.8 and not calls  # done once
    a.eval_overrides = []
    assert ablate.one("configs/tiny_synthetic.yaml", 0, a)["val"]["mIoU"] == 0.4 and not calls
    # a run evaluated only with the overrides (no plain evaluation): read, not trained again
    for s in ablate.SPLITS:
        (run_dir / f"eval_{s}.json").unlink()
    a.eval_overrides = ["model.mask_refine.enabled=true"]
    assert ablate.one("configs/tiny_synthetic.yaml", 0, a)["val"]["mIoU"] == 0.8 and not calls


def test_a_run_another_process_trains_is_waited_for(ablate, monkeypatch, tmp_path):
    """Two ablations sharing a run: the second waits while the first trains it (its folder locked by
    ssrvg-train), then reads the finished run instead of training it again or failing."""
    import threading

    from ssrvg_ext.engine.trainer import run_lock

    calls = []
    monkeypatch.setattr(ablate, "run", lambda cmd, log=None, threads=None: calls.append(cmd))
    monkeypatch.setattr(ablate, "WAIT_S", 0.02)
    run_dir = tmp_path / "tiny_synthetic_s0"
    a = argparse.Namespace(out=str(tmp_path), video=False, data="d", jobs=1, epochs=None, eval_overrides=[])
    result = {}
    with run_lock(str(run_dir)):  # "another process" training the run
        waiter = threading.Thread(target=lambda: result.update(ablate.one("configs/tiny_synthetic.yaml", 0, a)))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not calls  # waiting, nothing started
        for s in ablate.SPLITS:  # the run finishes and is evaluated while the lock is held
            (run_dir / f"eval_{s}.json").write_text(json.dumps({"metrics": {"n": 10, "Acc@0.5": 0.5, "mIoU": 0.4}}))
        (run_dir / "log.jsonl").write_text(json.dumps({"epoch": 0, "time_s": 10.0}) + "\n")
        torch.save({"model": {"w": torch.zeros(3)}}, run_dir / "last.pth")
    waiter.join(30)
    assert not waiter.is_alive() and not calls and result["val"]["mIoU"] == 0.4
