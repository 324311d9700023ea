"""docs/design.md section 11, "Adding a method", kept true: a toy part and its loss, registered here
and nowhere else, train and evaluate through the library's own entry points; the registries say
what they hold; a part that joins no hook is an error."""

import json
import os

import pytest
import torch
from torch import nn

from ssrvg_ext.config import load_config
from ssrvg_ext.data.synthetic.images import generate
from ssrvg_ext.models import build_criterion, build_model
from ssrvg_ext.models.criterion import LossSpec
from ssrvg_ext.models.registry import COMPONENTS, LOSSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model.d_model=32", "model.mask_dim=16", "model.text.hidden=32", "model.text.layers=1", "model.fusion.layers=1",
         "model.fusion.ffn=32", "model.decoder.layers=2", "model.decoder.ffn=32", "data.input_size=64",
         "train.batch_size=4", "train.workers=0", "train.epochs=1", "train.warmup_steps=2"]


# ---- the walkthrough's example, as docs/design.md shows it ----
class LevelGate(nn.Module):
    """Scales every fused level by (1 + g), g a learned per-channel vector that starts at 0."""

    def __init__(self, d: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(d))

    @classmethod
    def from_config(cls, cfg, ctx):
        c = cfg["model"]["level_gate"]
        return cls(cfg["model"]["d_model"]) if c["enabled"] else None

    def refine_levels(self, fused, st):           # hook: before the mask branch
        return [f * (1 + self.gate[:, None, None]) for f in fused]

    def training_outputs(self, st):               # hook: what its loss reads
        return {"gate": self.gate}


def gate_loss(crit, out, batch, ctx):
    return {"gate_l2": out["gate"].pow(2).sum()}


GATE_LOSS = LossSpec(gate_loss, enabled=lambda cfg: cfg["model"]["level_gate"]["enabled"],
                     weights=lambda cfg: {"gate_l2": cfg["loss"]["gate_l2"]})


@pytest.fixture
def registered():
    COMPONENTS.register("level_gate", LevelGate.from_config)
    LOSSES.register("gate", GATE_LOSS)
    try:
        yield
    finally:
        COMPONENTS.unregister("level_gate")
        LOSSES.unregister("gate")


def config(data, enabled=True):
    cfg = load_config(os.path.join(ROOT, "configs", "tiny_synthetic.yaml"),
                      SMALL + [f"data.ann_dir={data}", f"data.image_dir={os.path.join(data, 'images')}"])
    # what the walkthrough adds to ssrvg_ext/defaults.yaml
    cfg["model"]["level_gate"] = {"enabled": enabled}
    cfg["loss"]["gate_l2"] = 0.1
    return cfg


def test_a_registered_part_trains_and_evaluates(registered, tmp_path):
    from ssrvg_ext.cli.eval import run
    from ssrvg_ext.engine import checkpoint
    from ssrvg_ext.engine.trainer import train

    data = str(tmp_path / "data")
    generate(data, num_images=24, seed=5)
    cfg = config(data)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=30, mask_token_id=1)
    assert isinstance(model.level_gate, LevelGate) and model.hook_parts["refine_levels"] == ["level_gate"]
    crit = build_criterion(cfg)
    assert crit.losses[-1] == "gate" and crit.weight_dict["gate_l2"] == 0.1

    metrics = train(cfg, str(tmp_path / "run"), max_steps=4)
    assert "Acc@0.5" in metrics and "mIoU" in metrics
    steps = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert "train_gate_l2" in steps[-1]  # every term logged
    ckpt = checkpoint.load(str(tmp_path / "run" / "last.pth"))
    assert ckpt["model"]["level_gate.gate"].abs().sum() > 0  # it trained
    [m] = run(str(tmp_path / "run" / "last.pth"), [("val", False)])  # evaluation builds it from the checkpoint
    assert m["n"] > 0 and 0 <= m["mIoU"] <= 1

    off = build_model(config(data, enabled=False), vocab_size=30, mask_token_id=1)
    assert off.level_gate is None and "gate" not in build_criterion(config(data, enabled=False)).losses


def test_registries_and_errors(registered):
    assert list(COMPONENTS)[:4] == ["backbone", "text", "fusion", "decoder"] and list(COMPONENTS)[-1] == "level_gate"
    assert "boxes" in LOSSES and "gate" in LOSSES
    with pytest.raises(ValueError, match="registered already"):
        COMPONENTS.register("level_gate", LevelGate.from_config)
    with pytest.raises(KeyError, match="no loss named 'nope'"):
        LOSSES.get("nope")


def test_a_part_without_a_hook_is_an_error():
    COMPONENTS.register("idle", lambda cfg, ctx: nn.Linear(2, 2))
    try:
        with pytest.raises(TypeError, match="'idle'.*none of the hooks"):
            build_model(load_config(os.path.join(ROOT, "configs", "tiny_synthetic.yaml")), vocab_size=30)
    finally:
        COMPONENTS.unregister("idle")
