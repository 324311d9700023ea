"""benchmarks/grad_families.py: how it groups the weighted loss terms and what its table says; the
model and losses it differentiates are tested elsewhere."""


import pytest
import torch


@pytest.fixture(scope="module")
def gf(load_benchmark):
    return load_benchmark("grad_families")


def test_families_sum_weighted_terms(gf):
    terms = {"l1": torch.tensor(1.0), "giou_0": torch.tensor(2.0), "prop_score": torch.tensor(3.0),
             "mask_dice": torch.tensor(4.0), "mask_focal_coarse_1": torch.tensor(5.0), "cmpc_bce_8": torch.tensor(6.0),
             "mg": torch.tensor(7.0), "attr": torch.tensor(8.0)}
    weights = {"l1": 5.0, "giou_0": 2.0, "prop_score": 1.0, "mask_dice": 2.0, "mask_focal_coarse_1": 0.5,
               "cmpc_bce_8": 0.1, "mg": 0.0, "attr": 1.0, "cal_p2p": 0.5}  # mg weight 0, cal_p2p not computed
    f = gf.families(weights, terms)
    assert set(f) == {"box", "mask", "attr"}
    assert float(f["box"]) == 5 + 4 + 3 and float(f["mask"]) == pytest.approx(8 + 2.5 + 0.6) and float(f["attr"]) == 8


def test_report_shares_and_cosines(gf):
    grads = {"box": torch.tensor([3.0, 0.0]), "mask": torch.tensor([0.0, -1.0]), "mg": torch.tensor([-2.0, 0.0])}
    lines = gf.report("x", grads).splitlines()
    assert lines[3] == "| box | 3 | 50.0% | +1.000 |"
    assert lines[4] == "| mg | 2 | 33.3% | -1.000 |" and lines[5] == "| mask | 1 | 16.7% | +0.000 |"
