"""Model folders (ssrvg-export, Predictor.from_pretrained, ssrvg-eval --model): safetensors + JSON,
the same outputs as the checkpoint, nothing unpickled, clear errors on a folder that does not fit."""

import json
import os
import pickle
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import ssrvg_ext
from ssrvg_ext import model_folder
from ssrvg_ext.config import load_config
from ssrvg_ext.data import WordTokenizer
from ssrvg_ext.data.synthetic.images import generate
from ssrvg_ext.engine import checkpoint
from ssrvg_ext.engine.data import tokenizer_state
from ssrvg_ext.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model.d_model=32", "model.mask_dim=16", "model.text.hidden=32", "model.text.layers=1", "model.fusion.layers=1",
         "model.fusion.ffn=32", "model.decoder.layers=2", "model.decoder.ffn=32", "data.input_size=64",
         "data.aux_labels=[]", "train.workers=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    generate(out, num_images=12, seed=3)
    return out


def write_checkpoint(path, cfg, tok, seed=0, **extra):
    torch.manual_seed(seed)
    model = build_model(cfg, vocab_size=tok.vocab_size, mask_token_id=tok.mask_id)
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg, "tokenizer": tokenizer_state(tok),
                            "aux_classes": None, "ema": None, "epoch": 2, "step": 30,
                            "metrics": {"n": 4, "Acc@0.5": 0.25}, **extra}, path)
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data):
    cfg = load_config(os.path.join(ROOT, "configs/tiny_synthetic.yaml"),
                      SMALL + [f"data.ann_dir={data}", f"data.image_dir={data}/images"])
    tok = WordTokenizer.train(["the red circle", "the big blue square on the left", "the green star"],
                              cfg["data"]["max_len"])
    run = tmp_path_factory.mktemp("run")
    path = str(run / "best.pth")
    write_checkpoint(path, cfg, tok, command="ssrvg-train --config configs/tiny_synthetic.yaml")
    return path


def image_of(data, i=1):
    return os.path.join(data, "images", f"synth_{i:06d}.jpg")


def test_export_writes_the_folder_and_loads_with_the_same_outputs(ckpt, data, tmp_path):
    out = model_folder.export(ckpt, str(tmp_path / "m"))
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    meta = json.load(open(os.path.join(out, "config.json")))
    assert meta["format"] == "ssrvg_ext-model" and meta["config"] == checkpoint.load(ckpt)["config"]
    weights = load_file(os.path.join(out, "model.safetensors"))
    state = checkpoint.load(ckpt)["model"]
    assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in state)
    a = ssrvg_ext.Predictor(ckpt, device="cpu")
    b = ssrvg_ext.Predictor.from_pretrained(out, device="cpu")
    texts = ["the red circle", "the green star on the left"]
    for ra, rb in zip(a.predict(image_of(data), texts), b.predict(image_of(data), texts)):
        assert ra["box"] == rb["box"] and ra["score"] == rb["score"] and torch.equal(ra["mask"], rb["mask"])
    assert os.stat(os.path.join(out, "model.safetensors")).st_mode & 0o044 == 0o044 & ~_umask()


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def test_bf16_export_holds_the_rounded_weights(ckpt, tmp_path):
    out = model_folder.export(ckpt, str(tmp_path / "m16"), dtype="bf16")
    weights = load_file(os.path.join(out, "model.safetensors"))
    state = checkpoint.load(ckpt)["model"]
    assert {v.dtype for k, v in weights.items() if state[k].is_floating_point()} == {torch.bfloat16}
    assert os.path.getsize(os.path.join(out, "model.safetensors")) < 0.6 * os.path.getsize(ckpt)
    loaded = model_folder.load(out)
    for k, v in loaded.model.state_dict().items():
        assert v.dtype == state[k].dtype  # computes in fp32
        expect = state[k].to(torch.bfloat16).to(v.dtype) if v.is_floating_point() else state[k]
        assert torch.equal(v, expect), k


def test_loading_a_folder_unpickles_nothing(ckpt, data, tmp_path, monkeypatch):
    out = model_folder.export(ckpt, str(tmp_path / "m"))

    def refuse(*a, **k):
        raise AssertionError("a model folder must load without unpickling")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    [r] = ssrvg_ext.Predictor.from_pretrained(out, device="cpu").predict(image_of(data), "the red circle")
    assert len(r["box"]) == 4
    with pytest.raises(ValueError, match="unpickling"):  # the patch is live: a checkpoint does unpickle
        ssrvg_ext.Predictor(ckpt, device="cpu")


def test_weights_that_do_not_fit_are_listed(ckpt, tmp_path):
    out = model_folder.export(ckpt, str(tmp_path / "m"))
    path = os.path.join(out, "model.safetensors")
    w = load_file(path)
    names = sorted(w)
    del w[names[0]]
    w["extra.weight"] = torch.zeros(3)
    w[names[1]] = torch.zeros(7, 7)
    save_file(w, path)
    with pytest.raises(ValueError) as e:
        model_folder.load(out)
    msg = str(e.value)
    assert f"1 missing ({names[0]})" in msg and "1 unexpected (extra.weight)" in msg
    assert f"{names[1]}: (7, 7) in the file" in msg


def test_not_a_model_folder_is_a_clear_error(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ssrvg_ext.Predictor.from_pretrained(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ssrvg_ext.Predictor.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not an ssrvg_ext model config"):
        ssrvg_ext.Predictor.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ssrvg_ext.Predictor.from_pretrained(str(tmp_path))
    out = model_folder.export(ckpt, str(tmp_path / "m"))
    with open(os.path.join(out, "model.safetensors"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        model_folder.load(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        model_folder.export(ckpt, out)


def test_model_card_has_the_evaluation_and_the_commands(ckpt, tmp_path):
    from ssrvg_ext.cli.export import main

    run = os.path.dirname(ckpt)
    with open(os.path.join(run, "eval_testB.json"), "w") as f:
        json.dump({"split": "testB", "shuffle_text": False,
                   "metrics": {"n": 9, "Acc@0.5": 0.5, "mIoU": 0.4, "oIoU": 0.45, "Prec@0.5": 0.3}}, f)
    out = str(tmp_path / "card")
    try:
        main(["--checkpoint", ckpt, "--out", out])
    finally:
        os.remove(os.path.join(run, "eval_testB.json"))
    card = open(os.path.join(out, "README.md")).read()
    assert "| testB" in card and "50.00%" in card and "40.00%" in card
    assert "ssrvg-train --config configs/tiny_synthetic.yaml" in card
    assert f"ssrvg-export --checkpoint {ckpt} --out {out}" in card
    assert "format `refer`" in card


def test_pretrained_text_encoder_folder_travels_with_the_model(tmp_path, data):
    """A model whose text encoder came from a transformers folder: the model folder holds its
    architecture and tokenizer, so it loads where the original folder does not exist."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from ssrvg_ext.data.tokenizer import HFTokenizer

    src = tmp_path / "bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "circle", "green", "star", "big", "left"]
    src.mkdir()
    (src / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(src / "vocab.txt")).save_pretrained(str(src))
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(str(src))
    cfg = load_config(os.path.join(ROOT, "configs/tiny_synthetic.yaml"),
                      SMALL + [f"model.text.name_or_path={src}", "model.text.pretrained=true"])
    tok = HFTokenizer(str(src), cfg["data"]["max_len"])
    ckpt = str(tmp_path / "run" / "best.pth")
    write_checkpoint(ckpt, cfg, tok)
    out = model_folder.export(ckpt, str(tmp_path / "m"))
    a = ssrvg_ext.Predictor(ckpt, device="cpu").predict(image_of(data), "the big red circle")[0]
    import shutil

    shutil.rmtree(src)
    b = ssrvg_ext.Predictor.from_pretrained(out, device="cpu").predict(image_of(data), "the big red circle")[0]
    assert a["box"] == b["box"] and torch.equal(a["mask"], b["mask"])
    assert os.path.isfile(os.path.join(out, "text_encoder", "config.json"))
    assert os.path.isfile(os.path.join(out, "tokenizer", "tokenizer.json"))


def test_eval_takes_a_model_folder(ckpt, data, tmp_path, monkeypatch):
    from ssrvg_ext.cli import eval as ev

    out = model_folder.export(ckpt, str(tmp_path / "m"))
    results = {}
    for flag, path in (("--checkpoint", ckpt), ("--model", out)):
        dest = str(tmp_path / f"{flag[2:]}.json")
        monkeypatch.setattr(sys, "argv", ["ssrvg-eval", flag, path, "--split", "val", "--out", dest])
        ev.main()
        results[flag] = json.load(open(dest))
    assert results["--model"]["metrics"] == results["--checkpoint"]["metrics"]
    assert results["--model"]["metrics"]["n"] > 0
    monkeypatch.setattr(sys, "argv", ["ssrvg-eval", "--model", out, "--ema", "--split", "val"])
    with pytest.raises(SystemExit):
        ev.main()
