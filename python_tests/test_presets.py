"""The benchmark presets and pretrained weights: every preset loads and names its splits; a preset
that expects pretrained weights refuses to start without them; the weights loaded are the file's;
Swin-T and Swin-B run forward + backward + loss at 640 px; nothing touches the network."""

import glob
import os
import socket

import pytest
import torch
import timm

from ssrvg_ext.config import load_config
from ssrvg_ext.testing import random_batch
from ssrvg_ext.models import build_criterion, build_model
from ssrvg_ext.models.backbone import Backbone
from ssrvg_ext.models.text import TextEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "refcoco*.yaml")))
SPLITS = {"unc": ["val", "testA", "testB"], "umd": ["val", "test"], "google": ["val"]}
SCRATCH = ["model.backbone.pretrained=false", "model.text.pretrained=false"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (a download) fails the test."""
    def refuse(*a, **k):
        raise AssertionError("a network connection was attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_every_benchmark_has_a_swin_t_and_a_swin_b_preset():
    names = {os.path.basename(p)[:-5] for p in PRESETS}
    for ds in ("refcoco", "refcocoplus", "refcocog_umd", "refcocog_google"):
        assert {f"{ds}_swin_t", f"{ds}_swin_b"} <= names
    for p in PRESETS:
        cfg = load_config(p)
        assert cfg["data"]["eval_splits"] == SPLITS[cfg["data"]["split_by"]], p
        assert cfg["data"]["input_size"] == 640 and cfg["data"]["max_len"] == 40
        assert cfg["model"]["backbone"]["name"].startswith("swin_" + ("base" if p.endswith("_b.yaml") else "tiny"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: os.path.basename(p))
def test_presets_refuse_to_start_without_weights(preset):
    cfg = load_config(preset)
    with pytest.raises(ValueError, match=r"model\.backbone\.checkpoint.*\.safetensors.*pretrained=false"):
        build_model(cfg, vocab_size=100)
    cfg = load_config(preset, ["model.backbone.pretrained=false"])
    with pytest.raises(ValueError, match=r"model\.text\.name_or_path.*transformers.*pretrained=false"):
        build_model(cfg, vocab_size=100)


def test_missing_files_are_named(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs/refcoco_swin_t.yaml"), [f"model.backbone.checkpoint={tmp_path}/no.pth"])
    with pytest.raises(FileNotFoundError, match="no.pth: no such file"):
        build_model(cfg, vocab_size=100)
    cfg = load_config(os.path.join(ROOT, "configs/refcoco_swin_t.yaml"),
                      ["model.backbone.pretrained=false", f"model.text.name_or_path={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_model(cfg, vocab_size=100)


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_backbone_weights_are_the_files(tmp_path, ext):
    torch.manual_seed(1)
    src = timm.create_model("lcnet_050", pretrained=False)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = str(tmp_path / f"lcnet.{ext}")
    if ext == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, path)
    torch.manual_seed(2)  # a different random initialisation underneath
    loaded = Backbone("lcnet_050", 64, 32, pretrained=True, checkpoint=path, timm_kwargs={})
    scratch = Backbone("lcnet_050", 64, 32, pretrained=False, checkpoint=None, timm_kwargs={})
    got = loaded.body.state_dict()
    shared = [k for k in got if k in sd]
    assert len(shared) > 10
    for k in shared:
        torch.testing.assert_close(got[k], sd[k], rtol=0, atol=0)
    assert not torch.equal(scratch.body.state_dict()[shared[0]], sd[shared[0]])


def test_text_weights_are_the_folders(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    src = BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64), add_pooling_layer=False)
    src.save_pretrained(tmp_path)
    args = dict(vocab_size=60, hidden=8, layers=1, heads=1, max_len=12, freeze=False)
    enc = TextEncoder(16, str(tmp_path), pretrained=True, **args)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(enc.bert.state_dict()[k], v, rtol=0, atol=0)
    arch = TextEncoder(16, str(tmp_path), pretrained=False, **args)  # the folder's architecture, random weights
    assert arch.bert.config.hidden_size == 32
    assert not torch.equal(arch.bert.embeddings.word_embeddings.weight, src.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("preset", ["refcoco_swin_t", "refcoco_swin_b"])
def test_swin_presets_train_a_step_at_640(preset):
    """Random weights (from scratch on purpose), batch 1 at the preset's 640 px: forward, every loss,
    backward; the text encoder is BERT-base-sized."""
    cfg = load_config(os.path.join(ROOT, f"configs/{preset}.yaml"), SCRATCH)
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=30522), build_criterion(cfg)
    assert model.text.bert.config.hidden_size == 768
    batch = random_batch(1, 640, cfg["data"]["max_len"], 30522, "cpu")
    out = model(batch["images"], batch["text_ids"], batch["text_mask"])
    assert out["mask_logits"].shape == (1, 160, 160)
    losses = crit(out, batch)
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    assert model.backbone.body.patch_embed.proj.weight.grad is not None


def test_swin_224_checkpoint_loads_into_the_640_backbone(tmp_path):
    """A released Swin-T checkpoint is the 224 px classification model's: every tensor of it lands
    in the preset's 640 px feature backbone (timm maps the keys: layers.i -> layers_i)."""
    torch.manual_seed(4)
    sd = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()
    path = str(tmp_path / "swin_tiny.pth")
    torch.save(sd, path)
    torch.manual_seed(5)
    body = Backbone("swin_tiny_patch4_window7_224", 64, 32, pretrained=True, checkpoint=path,
                    timm_kwargs={"img_size": 640}).body.state_dict()
    got = {k.replace("layers_", "layers."): v for k, v in body.items()}
    shared = [k for k in sd if k in got]
    assert len(shared) == len(got) > 150
    for k in shared:
        torch.testing.assert_close(got[k], sd[k], rtol=0, atol=0)


@pytest.mark.parametrize("preset", sorted(glob.glob(os.path.join(ROOT, "configs", "methods", "*.yaml"))),
                         ids=lambda p: os.path.basename(p))
def test_method_presets_train_a_step(preset):
    """Each method preset (on the tiny preset) builds, and a training step gives every parameter a
    gradient."""
    cfg = load_config(preset)
    torch.manual_seed(0)
    model, crit = build_model(cfg, vocab_size=50, mask_token_id=1).train(), build_criterion(cfg)
    batch = random_batch(2, cfg["data"]["input_size"], cfg["data"]["max_len"], 50, "cpu")
    losses = crit(model(batch["images"], batch["text_ids"], batch["text_mask"], None, batch["masks"]), batch)
    losses["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
