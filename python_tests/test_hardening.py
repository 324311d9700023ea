"""Untrusted files and settings: checkpoints, configs, per-rank random streams."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from ssrvg_ext.config import ConfigError, load_config
from ssrvg_ext.engine import checkpoint
from ssrvg_ext.engine.data import loader_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- checkpoints ----------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would run os.system
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Evil(str(marker))}, path)
    with pytest.raises(RuntimeError, match="refused"):
        checkpoint.load(str(path))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's own, on the file we forge
def test_plain_pickle_disguised_as_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": _Evil(str(marker))}))
    with pytest.raises(RuntimeError):
        checkpoint.load(str(path))
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    state = checkpoint.rng_state()
    expect = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(1).item())
    checkpoint.save_atomic({"model": {}, "rng": state}, str(tmp_path / "c.pth"))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(checkpoint.load(str(tmp_path / "c.pth"))["rng"])
    assert (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(1).item()) == expect


def test_each_rank_resumes_its_own_stream():
    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        states.append(checkpoint.rng_state())
    ckpt = {"rng": states[0], "rng_per_rank": states}
    draws = []
    for rank in range(2):
        checkpoint.set_rng_state(checkpoint.rank_rng_state(ckpt, rank, 2))
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])
    torch.manual_seed(101)
    assert torch.equal(draws[1], torch.rand(4))  # rank 1 got rank 1's state, not rank 0's
    assert checkpoint.rank_rng_state(ckpt, 0, 4) is None  # another world size: reseed instead


def test_ranks_and_epochs_seed_their_loaders_differently():
    seeds = {loader_seed(0, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400
    assert loader_seed(0, 3, 0) == 3  # one process: unchanged from before ranks counted


# ---- configs --------------------------------------------------------------------------------
TINY = os.path.join(ROOT, "configs", "tiny_synthetic.yaml")


def test_override_typo_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'train.epoch'.*did you mean 'train.epochs'"):
        load_config(TINY, ["train.epoch=3"])
    assert load_config(TINY, ["train.epochs=3"])["train"]["epochs"] == 3


def test_file_typo_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text(open(os.path.join(ROOT, "ssrvg_ext", "defaults.yaml")).read())
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: base.yaml\nmodel:\n  fusion: {pionts: 2}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'model.fusion.pionts'.*'model.fusion.points'"):
        load_config(str(bad))


def test_open_sections_take_new_keys():
    cfg = load_config(TINY, ["model.backbone.kwargs.img_size=640", "loss.mask.focal=1.0"])
    assert cfg["model"]["backbone"]["kwargs"] == {"img_size": 640} and cfg["loss"]["mask"]["focal"] == 1.0


def test_base_cycle_and_missing_key_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "root.yaml").write_text("model: {d_model: 8}\n")
    with pytest.raises(ConfigError, match=r"root.yaml.*'model.mask_dim' is missing"):
        load_config(str(tmp_path / "root.yaml"))
    (tmp_path / "orphan.yaml").write_text("_base_: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml.*_base_ of"):
        load_config(str(tmp_path / "orphan.yaml"))
