"""benchmarks/ablate.py: the table it prints (per run, per variant, paired differences) and its
argument checks; the training it drives is the CLI's, tested elsewhere."""

import statistics
import sys

import pytest


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
    assert len(lines) == 2 + 6 + 2 + 1
    mean_row = next(x for x in lines if x.startswith("| **meth**"))
    cells = [c.strip() for c in mean_row.split("|")[1:-1]]
    assert cells[1] == "3 seeds"
    assert cells[2] == f"{statistics.mean(meth):.2f} ± {statistics.stdev(meth):.2f}"
    assert cells[3] == "-"  # meth has no mIoU
    diff = [m - b for m, b in zip(meth, base)]
    paired = [c.strip() for c in lines[-1].split("|")[1:-1]]
    assert paired[0] == "meth - base, paired, mean ± std"
    assert paired[2] == f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff):.2f}"
    assert paired[3] == "-"
    # two seeds: half-range; a seed the baseline lacks is left out of the paired row
    two = ablate.table(rows[:4] + [row("meth", 7, 99.0)], "base").splitlines()
    assert "± 1.50" in two[-1] and "2 seeds" in two[-1]  # (75 - 70, 76 - 74): +3.50 ± 1.50
    # one seed: the value without a spread (not "± 0.00")
    one = ablate.table([row("base", 0, 70.0), row("meth", 0, 75.0)], "base").splitlines()
    cells = [c.strip() for c in one[-1].split("|")[1:-1]]
    assert cells[0] == "meth - base, paired, mean" and cells[2] == "+5.00"
    assert "±" not in "".join(cells[1:])


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
