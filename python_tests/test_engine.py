"""Training, evaluation and demo end to end on CPU with a tiny synthetic dataset and model."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as cocomask

from ssrvg_ext.config import load_config
from ssrvg_ext.data.synthetic.images import generate
from ssrvg_ext.engine import checkpoint
from ssrvg_ext.evaluation import grounding_metrics, mask_stats, mask_stats_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "model.d_model=32", "model.mask_dim=16", "model.text.hidden=32", "model.text.layers=1",
    "model.fusion.layers=1", "model.fusion.ffn=32", "model.decoder.layers=2", "model.decoder.ffn=32",
    "data.input_size=64", "train.batch_size=4", "train.workers=0", "train.epochs=3", "train.warmup_steps=2",
    "data.early_input_size=48", "data.early_input_epochs=1",  # epoch 0 at 48 px: resume crosses the switch
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    generate(out, num_images=24, seed=5)
    return out


def overrides(data):
    return TINY + [f"data.ann_dir={data}", f"data.image_dir={os.path.join(data, 'images')}"]


def run_tool(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, **kw)


# ---- metrics on hand-made predictions ----
def test_metrics_hand_computed():
    results = [
        {"box_iou": 0.9, "inter": 10, "union": 10},    # IoU 1.0
        {"box_iou": 0.5, "inter": 30, "union": 100},   # IoU 0.3
        {"box_iou": 0.49, "inter": 0, "union": 50},    # IoU 0.0
        {"box_iou": 0.7, "inter": 75, "union": 100},   # IoU 0.75
    ]
    m = grounding_metrics(results)
    assert m["Acc@0.5"] == 0.75
    assert m["mIoU"] == pytest.approx((1.0 + 0.3 + 0.0 + 0.75) / 4)
    assert m["oIoU"] == pytest.approx((10 + 30 + 0 + 75) / (10 + 100 + 50 + 100))
    assert m["mIoU"] != pytest.approx(m["oIoU"])
    assert m["Prec@0.5"] == 0.5 and m["Prec@0.7"] == 0.5 and m["Prec@0.8"] == 0.25 and m["Prec@0.9"] == 0.25


def test_mask_stats_exact():
    a = torch.zeros(6, 7, dtype=torch.uint8)
    b = torch.zeros(6, 7, dtype=torch.uint8)
    a[1:4, 1:5] = 1  # 12 px
    b[2:6, 3:7] = 1  # 16 px, overlap rows 2-3 x cols 3-4 = 4
    enc = lambda m: cocomask.encode(m.numpy().copy(order="F"))  # noqa: E731
    assert mask_stats(enc(a), enc(b)) == (4, 24)


# ---- end to end ----
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_mask_stats_batch_equals_per_expression_stats(rng, device):
    """The batched statistics (ground truth decoded where the predictions are) equal the RLE ones,
    with sizes mixed, empty and full masks included; a size mismatch is an error."""
    preds, gts = [], []
    for i in range(9):
        h, w = [(5, 7), (12, 3), (5, 7)][i % 3]
        p = (torch.rand(h, w, generator=rng) < 0.5).to(torch.uint8)
        g = (torch.rand(h, w, generator=rng) < 0.4).to(torch.uint8)
        if i == 4:
            p.zero_()
        if i == 5:
            g.fill_(1)
        preds.append(p.to(device))
        gts.append(cocomask.encode(np.asfortranarray(g.numpy())))
    got = mask_stats_batch(preds, gts)
    want = [mask_stats(cocomask.encode(np.asfortranarray(p.cpu().numpy())), g) for p, g in zip(preds, gts)]
    assert got == want
    # the CPU path from the predictions' own RLEs, a few pairs per IoU call
    from ssrvg_ext.ops import rle

    big = [(torch.rand(48, 64, generator=rng) < 0.5).to(torch.uint8) for _ in range(7)]
    big_gts = [cocomask.encode(np.asfortranarray((torch.rand(48, 64, generator=rng) < 0.3).to(torch.uint8).numpy()))
               for _ in range(7)]
    exact = [(int((p.bool() & torch.from_numpy(cocomask.decode(g)).bool()).sum()),
              int((p.bool() | torch.from_numpy(cocomask.decode(g)).bool()).sum())) for p, g in zip(big, big_gts)]
    assert mask_stats_batch(big, big_gts, rle.encode(torch.stack(big)), chunk=2) == exact
    with pytest.raises(ValueError, match="ground truth"):
        mask_stats_batch([preds[0]], [gts[1]])


def test_box_only_split_file_mixed_into_training(data, tmp_path):
    """A box-only source in the ReSC / TransVG split-file format trains beside the mask-annotated
    set (its records supervise the mask with their boxes); evaluating it reports REC metrics only."""
    from ssrvg_ext.data import load_refer
    from ssrvg_ext.engine.trainer import train

    recs = load_refer(data, os.path.join(data, "images"), "unc", ["train"])[:12]
    tuples = [(os.path.basename(r.image_path), f"{r.ann_id}.pth",
               [r.box_xyxy[0], r.box_xyxy[1], r.box_xyxy[2] - r.box_xyxy[0], r.box_xyxy[3] - r.box_xyxy[1]], r.text,
               [("r1", ["none"])] * 8) for r in recs]
    os.makedirs(tmp_path / "splits" / "unc")
    for split in ("train", "val"):
        torch.save(tuples, tmp_path / "splits" / "unc" / f"unc_{split}.pth")
    images = os.path.join(data, "images")
    extra = (f"data.extra_train=[{{format: splitfile, ann_dir: {tmp_path / 'splits'}, image_dir: {images}, "
             f"name: unc, split: train}}]")
    cfg = load_config("configs/tiny_synthetic.yaml", overrides(data) + ["data.aux_labels=[]", "data.crop=true", extra,
                                                                       "train.epochs=1"])
    from ssrvg_ext.engine.data import load_records

    mixed = load_records(cfg, "train")
    assert sum(r.box_only for r in mixed) == 12 and any(not r.box_only for r in mixed)
    metrics = train(cfg, str(tmp_path / "run"), max_steps=3)
    assert "mIoU" in metrics  # validation on the mask-annotated set
    box_cfg = load_config("configs/tiny_synthetic.yaml", overrides(data) + [
        "data.format=splitfile", f"data.ann_dir={tmp_path / 'splits'}", "data.aux_labels=[]", "data.crop=true"])
    from ssrvg_ext.engine.data import make_dataset, make_loader, task_of
    from ssrvg_ext.engine.evaluation import inference_on_dataset
    from ssrvg_ext.engine.inference import load_for_inference

    loaded = load_for_inference(str(tmp_path / "run" / "last.pth"))
    ds = make_dataset(box_cfg, load_records(box_cfg, "val"), train=False)
    m, preds = inference_on_dataset(loaded.model, make_loader(box_cfg, ds, loaded.tokenizer, train=False)[0],
                                    task_of(box_cfg).evaluator(ds), torch.device("cpu"))
    assert m["n"] == 12 and "Acc@0.5" in m and "mIoU" not in m and len(preds) == 12


def test_train_eval_demo_end_to_end(data, tmp_path):
    out = str(tmp_path / "run")
    # tools/train.py, tools/eval.py and tools/demo.py: the documented way from a clone (= the console scripts)
    r = run_tool(["tools/train.py", "--config", "configs/tiny_synthetic.yaml", "--out", out, *overrides(data),
                  "train.epochs=1"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "last.pth")) and os.path.isfile(os.path.join(out, "config.yaml"))
    logs = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    epoch_rec = [x for x in logs if "val_Acc@0.5" in x]
    assert epoch_rec and 0 <= epoch_rec[-1]["val_mIoU"] <= 1
    assert "train_attr" in epoch_rec[-1]  # the dense object-label loss is on in the tiny preset
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert "aux_classes" not in saved["model"]  # data-derived: kept in the checkpoint, not in the config
    ckpt = checkpoint.load(os.path.join(out, "last.pth"))
    assert ckpt["aux_classes"]["category"] == ["circle", "diamond", "square", "star", "triangle"]
    # an explicit --config has no label classes: eval keeps the checkpoint's, so the weights load
    r = run_tool(["tools/eval.py", "--checkpoint", os.path.join(out, "last.pth"), "--split", "testB",
                  "--config", "configs/tiny_synthetic.yaml", "--out", str(tmp_path / "ev.json"), *overrides(data)],
                 timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.load(open(tmp_path / "ev.json"))
    assert ev["metrics"]["n"] == len(ev["predictions"]) > 0
    kinds = {p["kind"] for p in ev["predictions"]}  # the embedded set names each expression's form
    assert kinds <= {"attr", "rel", "ordinal"} and len(kinds) > 1
    assert sum(ev["metrics"][f"n[{k}]"] for k in kinds) == ev["metrics"]["n"]
    for k in kinds:
        part = [p for p in ev["predictions"] if p["kind"] == k]
        assert abs(ev["metrics"][f"Acc@0.5[{k}]"] - sum(p["box_iou"] >= 0.5 for p in part) / len(part)) < 1e-12
    p = ev["predictions"][0]
    assert set(p) >= {"box", "mask", "text", "sent_id"} and isinstance(p["mask"]["counts"], str)
    # several evaluations in one process, with the shuffled-expression control, into a folder
    r = run_tool(["-m", "ssrvg_ext.cli.eval", "--checkpoint", os.path.join(out, "last.pth"), "--out-dir", str(tmp_path / "evals"),
                  "--split", "val", "testB", "--control", "val", *overrides(data)], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    written = sorted(os.listdir(tmp_path / "evals"))
    assert written == ["eval_testB.json", "eval_val.json", "eval_val_shuffled.json"]
    again = json.load(open(tmp_path / "evals" / "eval_testB.json"))
    assert again["metrics"] == ev["metrics"] and not again["shuffle_text"]
    shuffled = json.load(open(tmp_path / "evals" / "eval_val_shuffled.json"))
    plain = json.load(open(tmp_path / "evals" / "eval_val.json"))
    assert shuffled["shuffle_text"] and [p["text"] for p in shuffled["predictions"]] != [p["text"] for p in plain["predictions"]]
    r = run_tool(["-m", "ssrvg_ext.cli.eval", "--checkpoint", os.path.join(out, "last.pth"), "--split", "val", "testB",
                  "--out", str(tmp_path / "one.json")], timeout=300)
    assert r.returncode != 0 and "--out-dir" in r.stderr
    img = os.path.join(data, "images", "synth_000001.jpg")
    r = run_tool(["tools/demo.py", "--checkpoint", os.path.join(out, "last.pth"), "--image", img,
                  "--text", "the big red circle", "--out", str(tmp_path / "demo.png")], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "box (x0, y0, x1, y1)" in r.stdout and os.path.getsize(tmp_path / "demo.png") > 0


def _params(path):
    return checkpoint.load(path)["model"]


def test_kill_and_resume_matches_uninterrupted(data, tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    args = ["-m", "ssrvg_ext.cli.train", "--config", "configs/tiny_synthetic.yaml", *overrides(data)]
    r = run_tool(args + ["--out", full], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    # start the same run, kill it hard once its first checkpoint exists, then resume
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *args, "--out", killed], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not os.path.isfile(os.path.join(killed, "last.pth")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoint.load(os.path.join(killed, "last.pth"))
    assert saved["epoch"] < 2, "the run finished before it was killed"
    t0 = time.time()
    r = run_tool(args + ["--out", killed, "--resume", "auto"], timeout=900)
    resumed_wall = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _params(os.path.join(full, "last.pth")), _params(os.path.join(killed, "last.pth"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    # time_s counts on from the checkpoint: the resumed epochs add at most the resumed process' wall time
    with open(os.path.join(killed, "log.jsonl")) as f:
        times = {rec["epoch"]: rec["time_s"] for rec in map(json.loads, f) if "time_s" in rec}
    assert times[saved["epoch"]] == saved["time_s"] > 0
    last = max(times)
    assert last > saved["epoch"] and saved["time_s"] < times[last] <= saved["time_s"] + resumed_wall + 0.1
    assert checkpoint.load(os.path.join(killed, "last.pth"))["time_s"] == times[last]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("exprs_per_image", [1, 2])  # DistributedSampler / the image-group sampler
def test_ddp_two_processes_gloo_counts_every_sample_once(data, tmp_path, exprs_per_image):
    out = str(tmp_path / "ddp")
    r = run_tool(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                  f"--master_port={_free_port()}", "-m", "ssrvg_ext.cli.train",
                  "--config", "configs/tiny_synthetic.yaml", "--out", out, *overrides(data), "train.epochs=1",
                  f"data.exprs_per_image={exprs_per_image}",
                  # the second run also takes the crop that keeps every object, without object labels
                  *(["data.crop=objects", "data.aux_labels=[]"] if exprs_per_image == 2 else [])],
                 timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    from ssrvg_ext.data import load_refer
    n_val = len(load_refer(data, os.path.join(data, "images"), splits=["val"]))
    logs = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [x["val_n"] for x in logs if "val_n" in x] == [n_val]


def test_corrupt_checkpoint_and_missing_data_fail_clearly(data, tmp_path):
    bad = tmp_path / "last.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match="unreadable or corrupt"):
        checkpoint.load(str(bad))
    r = run_tool(["-m", "ssrvg_ext.cli.eval", "--checkpoint", str(bad)], timeout=300)
    assert r.returncode != 0 and "unreadable or corrupt" in r.stderr
    r = run_tool(["-m", "ssrvg_ext.cli.train", "--config", "configs/tiny_synthetic.yaml", "--out", str(tmp_path / "x"),
                  *overrides(data), f"data.ann_dir={tmp_path / 'nowhere'}"], timeout=300)
    assert r.returncode != 0 and "nowhere" in r.stderr and "refs(unc).p" in r.stderr


def test_progressive_input_size():
    from ssrvg_ext.engine.data import train_input_size
    cfg = load_config(os.path.join(ROOT, "configs/tiny_synthetic.yaml"), ["data.early_input_size=96",
                                                                           "data.early_input_epochs=2"])
    assert [train_input_size(cfg, e) for e in range(4)] == [96, 96, 160, 160]
    cfg = load_config(os.path.join(ROOT, "configs/base.yaml"))
    assert train_input_size(cfg, 0) == cfg["data"]["input_size"]  # off by default


def test_config_overrides_and_inheritance():
    cfg = load_config(os.path.join(ROOT, "configs/refcoco_swin_b.yaml"), ["train.epochs=2", "model.fusion.spectrum=true"])
    assert cfg["model"]["backbone"]["name"] == "swin_base_patch4_window7_224"
    assert cfg["model"]["backbone"]["kwargs"] == {"img_size": 640}  # inherited from swin_t
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["fusion"]["spectrum"] is True
    assert cfg["loss"]["giou"] == 2.0  # from base.yaml


def test_second_training_into_a_busy_folder_stops_clearly(data, tmp_path):
    """Two trainings into one folder would resume the same last.pth and overwrite each other's checkpoints:
    the second stops with a message naming the first's process, having written nothing; a killed holder
    leaves nothing to clean up (the next run trains)."""
    from ssrvg_ext.engine.trainer import RunFolderBusy, run_lock

    out = str(tmp_path / "run")
    with run_lock(out):  # in one process too: a second lock on the folder is refused, a later one taken
        with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()}"):
            with run_lock(out):
                pass
    with run_lock(out):
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ssrvg_ext.engine.trainer import run_lock\n"
                               f"with run_lock({out!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["-m", "ssrvg_ext.cli.train", "--config", "configs/tiny_synthetic.yaml", *overrides(data),
                "train.epochs=1", "--out", out, "--resume", "auto", "--max-steps", "2"]
        r = run_tool(args, timeout=600)
        assert r.returncode != 0 and f"is being trained into by pid {holder.pid}" in r.stderr
        assert "Traceback" not in r.stderr and sorted(os.listdir(out)) == [".train.lock"]
    finally:
        holder.kill()
        holder.wait()
    r = run_tool(args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "last.pth"))


def test_resumed_moments_take_their_parameters_layout():
    """AdamW moments saved in the default layout (a run before model.backbone.channels_last), resumed into
    a channels-last weight: load_optimizer_state lays them out as the weight, and the steps after equal the
    default-layout run's (the fused kernel reads a weight and its moments as flat arrays: moments in
    another layout would update the wrong elements)."""
    from ssrvg_ext.engine.optim import fused_if_supported, load_optimizer_state
    g = torch.Generator().manual_seed(0)
    w0, grad = torch.randn(32, 16, 3, 3, generator=g), torch.randn(32, 16, 3, 3, generator=g)
    ref = torch.nn.Parameter(w0.clone())
    ref_opt = torch.optim.AdamW([ref], lr=0.1, **fused_if_supported())
    ref.grad = grad.clone()
    ref_opt.step()
    saved = copy.deepcopy(ref_opt.state_dict())
    p = torch.nn.Parameter(ref.detach().clone().contiguous(memory_format=torch.channels_last))
    opt = torch.optim.AdamW([p], lr=0.1, **fused_if_supported())
    load_optimizer_state(opt, saved)
    moments = [v for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
    assert len(moments) == 2 and all(v.stride() == p.stride() for v in moments)
    for _ in range(2):
        ref.grad = grad.clone()
        ref_opt.step()
        p.grad = grad.clone().contiguous(memory_format=torch.channels_last)
        opt.step()
    torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-6, atol=1e-6)
