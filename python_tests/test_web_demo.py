"""The web demo (ssrvg-demo --web): its routes and hostile uploads over HTTP, and the page itself
driven in a headless Chromium (the system's chromium + chromedriver; skipped, with the reason, where
they are not installed -- .ci/run installs them)."""

import http.client
import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import ssrvg_ext
from ssrvg_ext import model_folder
from ssrvg_ext.config import load_config
from ssrvg_ext.data import WordTokenizer
from ssrvg_ext.data.synthetic.images import generate
from ssrvg_ext.engine import checkpoint
from ssrvg_ext.engine.data import tokenizer_state
from ssrvg_ext.models import build_model
from ssrvg_ext.predictor import load_predictor
from ssrvg_ext.web.server import DemoApp, Limits, make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["the red circle", "the big blue square on the left", "the green star"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    generate(out, num_images=6, seed=4)
    return out


def export_untrained(tmp, config, seed=0):
    cfg = load_config(os.path.join(ROOT, config), ["data.aux_labels=[]"])
    tok = WordTokenizer.train(TEXTS, cfg["data"]["max_len"])
    torch.manual_seed(seed)
    model = build_model(cfg, vocab_size=tok.vocab_size)
    ckpt = os.path.join(tmp, "best.pth")
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg, "tokenizer": tokenizer_state(tok),
                            "aux_classes": None, "ema": None, "epoch": 0, "step": 0}, ckpt)
    return model_folder.export(ckpt, os.path.join(tmp, "model"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # seed 7: untrained masks that cover part of the test image (68 % and 75 %; many seeds' cover nearly all
    # of it or nothing, and the drawn overlay would then tell nothing)
    return export_untrained(str(tmp_path_factory.mktemp("web")), "configs/tiny_synthetic.yaml", seed=7)


class Served:
    def __init__(self, app):
        self.app = app
        self.server = make_server(app, "127.0.0.1", 0)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def post(self, path, body, headers=None):
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def served(model_dir, data):
    os.environ["SSRVG_DEMO_QUIET"] = "1"
    s = Served(DemoApp(load_predictor(model_dir, device="cpu"), [image_of(data, 2)], Limits(max_pixels=2000 * 2000)))
    yield s
    s.close()


def image_of(data, i=1):
    return os.path.join(data, "images", f"synth_{i:06d}.jpg")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring w x h gray pixels, with a tiny (cut) compressed body: decoding it
    would need w * h bytes."""
    import struct

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    row = b"\x00" + b"\x00" * w
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(64)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


# ---- the routes, over HTTP ----
def test_predict_answers_as_the_predictor(served, model_dir, data):
    body = open(image_of(data), "rb").read()
    status, ans = served.post("/api/predict?text=the+red+circle&text=the+green+star", body)
    assert status == 200, ans
    want = ssrvg_ext.Predictor.from_pretrained(model_dir, device="cpu").predict(image_of(data), ["the red circle", "the green star"])
    assert [r["text"] for r in ans["results"]] == ["the red circle", "the green star"]
    for got, w in zip(ans["results"], want):
        assert got["box"] == w["box"] and got["score"] == pytest.approx(w["score"], abs=1e-4)
        mask = np.array(Image.open(io.BytesIO(__import__("base64").b64decode(got["mask_png"])))) > 127
        assert np.array_equal(mask, w["mask"].numpy().astype(bool))
    assert ans["width"] == Image.open(image_of(data)).width and ans["time_ms"] > 0
    with urllib.request.urlopen(served.url + "/api/info") as r:
        info = json.loads(r.read())
    assert info["video"] is False and info["examples"] == ["synth_000002.jpg"]
    with urllib.request.urlopen(served.url + "/examples/0") as r:
        assert r.read() == open(image_of(data, 2), "rb").read()


@pytest.mark.parametrize("case", ["text", "truncated", "bomb", "huge_header", "over_limit", "no_text", "many_texts", "long_text",
                                  "empty", "tiff"])
def test_hostile_uploads_get_a_message_and_the_server_goes_on(served, data, case):
    jpg = open(image_of(data), "rb").read()
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    body, query, want = {
        "text": (b"#!/bin/sh\nrm -rf /\n", "text=x", "not an image"),
        "truncated": (jpg[: len(jpg) // 2], "text=x", "truncated or corrupt"),
        "bomb": (png_bytes(Image.new("L", (2500, 2500))), "text=x", "2500 x 2500 pixels"),
        "huge_header": (bomb_png(60000, 60000), "text=x", "declares 3600 megapixels; this demo takes at most"),
        "over_limit": (bomb_png(3000, 3000), "text=x", "3000 x 3000 pixels"),
        "no_text": (jpg, "text=+", "type an expression"),
        "many_texts": (jpg, "&".join(["text=a"] * 9), "at most 8"),
        "long_text": (jpg, "text=" + "a" * 201, "at most 200"),
        "empty": (b"", "text=x", "empty"),
        "tiff": (tiff.getvalue(), "text=x", "TIFF images are not accepted"),
    }[case]
    status, ans = served.post("/api/predict?" + query, body)
    assert 400 <= status < 500 and want in ans["error"], (status, ans)
    status, ans = served.post("/api/predict?text=the+red+circle", jpg)  # still serving
    assert status == 200 and len(ans["results"]) == 1


def test_oversized_body_is_refused_before_it_is_read(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.putrequest("POST", "/api/predict?text=x")
    conn.putheader("Content-Length", str(10 * 2**30))  # 10 GiB announced, none sent
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "at most 10.0 MiB" in json.loads(r.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("POST", "/api/predict?text=x", body=b"abc", headers={"Content-Length": "abc"})
    r = conn.getresponse()
    assert r.status == 411
    conn.close()


def test_video_model_takes_the_frames_of_a_clip(tmp_path, data):
    model = export_untrained(str(tmp_path), "configs/tiny_video.yaml")
    s = Served(DemoApp(load_predictor(model, device="cpu")))
    try:
        still = np.array(Image.open(image_of(data)).convert("RGB"))
        clip = [Image.fromarray(np.roll(still, 6 * t, axis=1)) for t in range(3)]  # a scene panning by
        frames = [png_bytes(f) for f in clip]
        status, ans = s.post("/api/clip?text=the+red+circle", b"".join(frames),
                             {"X-Frame-Lengths": ",".join(str(len(f)) for f in frames)})
        assert status == 200, ans
        want = ssrvg_ext.VideoPredictor.from_pretrained(model, device="cpu").predict(
            clip, "the red circle")
        assert len(ans["frames"]) == 3
        for t, f in enumerate(ans["frames"]):
            mask = np.array(Image.open(io.BytesIO(__import__("base64").b64decode(f["mask_png"])))) > 127
            assert np.array_equal(mask, want["masks"][t].numpy().astype(bool))
        status, ans = s.post("/api/clip?text=x", b"".join(frames), {"X-Frame-Lengths": "1,2"})
        assert status == 400 and "does not add up" in ans["error"]
        pytest.importorskip("av")
        from ssrvg_ext.data.video_io import read_video, write_video

        mp4 = write_video([np.array(f) for f in clip], str(tmp_path / "clip.mp4"))
        status, ans = s.post("/api/clip?text=the+red+circle", open(mp4, "rb").read())  # a video file as it is
        assert status == 200, ans
        decoded = read_video(mp4)
        want = ssrvg_ext.VideoPredictor.from_pretrained(model, device="cpu").predict(decoded, "the red circle")
        assert len(ans["frames"]) == 3 and all("frame_jpg" in f for f in ans["frames"])
        for t, f in enumerate(ans["frames"]):
            mask = np.array(Image.open(io.BytesIO(__import__("base64").b64decode(f["mask_png"])))) > 127
            assert np.array_equal(mask, want["masks"][t].numpy().astype(bool))
        status, ans = s.post("/api/clip?text=x", b"#!/bin/sh not a video")
        assert status == 400 and "cannot be opened" in ans["error"] and "/tmp" not in ans["error"]
        s.app.limits.max_frames = 2
        status, ans = s.post("/api/clip?text=x", open(mp4, "rb").read())
        assert status == 400 and "more than 2 frames" in ans["error"]
        status, ans = s.post("/api/predict?text=x", frames[0])
        assert status == 400 and "video model" in ans["error"]
    finally:
        s.close()


# ---- the page, in a real browser ----
def browser():
    chromium = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if (not chromium or not driver) and os.environ.get("SSRVG_REQUIRE_BROWSER") == "1":
        pytest.fail("SSRVG_REQUIRE_BROWSER=1 but no Chromium + chromedriver is installed")
    if not chromium or not driver:
        pytest.skip("no Chromium + chromedriver installed (Debian / Ubuntu: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (make setup installs it)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never try to download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


@pytest.fixture(scope="module")
def page(served):
    drv = browser()
    yield drv
    drv.quit()


def run_query(drv, served, path, texts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(served.url + "/")
    WebDriverWait(drv, 60).until(lambda d: d.find_element(By.ID, "go").is_enabled())
    drv.find_element(By.ID, "file").send_keys(path)
    box = drv.find_element(By.ID, "text")
    box.clear()
    box.send_keys("\n".join(texts))
    drv.find_element(By.ID, "go").click()
    WebDriverWait(drv, 120).until(lambda d: d.find_element(By.ID, "stage").get_attribute("data-done") in ("1", "error"))
    return drv.find_element(By.ID, "stage").get_attribute("data-done")


def overlay_alpha(drv):
    w, h, alpha = drv.execute_script(
        "const c = document.getElementById('overlay'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const a = []; for (let i = 3; i < d.length; i += 4) a.push(d[i]); return [c.width, c.height, a];")
    return np.array(alpha, dtype=np.uint8).reshape(h, w)


def test_page_draws_the_predictors_answer(page, served, model_dir, data):
    from selenium.webdriver.common.by import By

    texts = ["the red circle", "the green star"]
    assert run_query(page, served, image_of(data), texts) == "1", page.find_element(By.ID, "error").text
    want = ssrvg_ext.Predictor.from_pretrained(model_dir, device="cpu").predict(image_of(data), texts)
    rows = page.find_elements(By.CSS_SELECTOR, "#results tr.result")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == texts
    assert [json.loads(r.get_attribute("data-box")) for r in rows] == [w["box"] for w in want]
    assert [round(float(r.get_attribute("data-score")), 4) for r in rows] == [round(w["score"], 4) for w in want]
    assert "ms on the server" in page.find_element(By.ID, "status").text
    # the drawn overlay is the union of the masks, away from the box outlines (anti-aliased strokes)
    alpha = overlay_alpha(page)
    img = Image.open(image_of(data))
    assert alpha.shape == (img.height, img.width)
    union = np.zeros_like(alpha, dtype=bool)
    near_outline = np.zeros_like(union)
    ys, xs = np.mgrid[: alpha.shape[0], : alpha.shape[1]]
    for w in want:
        union |= w["mask"].numpy().astype(bool)
        x0, y0, x1, y1 = w["box"]
        on_x = (np.abs(xs - x0) < 3) | (np.abs(xs - x1) < 3)
        on_y = (np.abs(ys - y0) < 3) | (np.abs(ys - y1) < 3)
        near_outline |= (on_x & (ys > y0 - 3) & (ys < y1 + 3)) | (on_y & (xs > x0 - 3) & (xs < x1 + 3))
    assert union[~near_outline].any() and (~union[~near_outline]).any()  # a mask that tells something
    assert np.array_equal(alpha[~near_outline] > 0, union[~near_outline])


def test_page_shows_the_servers_refusal(page, served, data, tmp_path):
    from selenium.webdriver.common.by import By

    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"this is not a picture")
    assert run_query(page, served, str(fake), ["the red circle"]) == "error"
    assert "not an image" in page.find_element(By.ID, "error").text
    big = tmp_path / "big.png"
    Image.new("L", (2100, 2100)).save(big)
    assert run_query(page, served, str(big), ["the red circle"]) == "error"
    assert "2100 x 2100 pixels" in page.find_element(By.ID, "error").text
    assert run_query(page, served, image_of(data), ["the red circle"]) == "1"  # and the server goes on


def test_video_page_draws_every_frame(tmp_path, data):
    from selenium.webdriver.common.by import By

    model = export_untrained(str(tmp_path), "configs/tiny_video.yaml")
    s = Served(DemoApp(load_predictor(model, device="cpu")))
    drv = browser()
    try:
        still = np.array(Image.open(image_of(data)).convert("RGB"))
        paths = []
        for t in range(3):  # names out of order on purpose: the page sorts the frames by name
            paths.append(str(tmp_path / f"frame_{2 - t}.png"))
            Image.fromarray(np.roll(still, 6 * (2 - t), axis=1)).save(paths[-1])
        assert run_query(drv, s, "\n".join(paths), ["the red circle"]) == "1", drv.find_element(By.ID, "error").text
        want = ssrvg_ext.VideoPredictor.from_pretrained(model, device="cpu").predict(sorted(paths), "the red circle")
        rows = drv.find_elements(By.CSS_SELECTOR, "#results tr.result")
        assert len(rows) == 3
        assert [json.loads(r.get_attribute("data-box")) for r in rows] == [[round(float(v), 2) for v in b]
                                                                          for b in want["boxes"]]
        for t in (0, 2):
            drv.execute_script(f"const f = document.getElementById('frame'); f.value = '{t}';"
                               "f.dispatchEvent(new Event('input'));")
            from selenium.webdriver.support.ui import WebDriverWait
            WebDriverWait(drv, 30).until(lambda d: d.find_element(By.ID, "stage").get_attribute("data-frame") == str(t))
            alpha = overlay_alpha(drv)
            mask = want["masks"][t].numpy().astype(bool)
            x0, y0, x1, y1 = want["boxes"][t].tolist()
            ys, xs = np.mgrid[: mask.shape[0], : mask.shape[1]]
            away = ~(((np.abs(xs - x0) < 3) | (np.abs(xs - x1) < 3) | (np.abs(ys - y0) < 3) | (np.abs(ys - y1) < 3)))
            assert np.array_equal(alpha[away] > 0, mask[away])
        pytest.importorskip("av")
        from ssrvg_ext.data.video_io import read_video, write_video

        mp4 = write_video([np.array(Image.open(p)) for p in sorted(paths)], str(tmp_path / "clip.mp4"))
        assert run_query(drv, s, mp4, ["the red circle"]) == "1", drv.find_element(By.ID, "error").text
        want = ssrvg_ext.VideoPredictor.from_pretrained(model, device="cpu").predict(read_video(mp4), "the red circle")
        alpha = overlay_alpha(drv)  # frame 1, drawn over the frame the server decoded
        assert alpha.shape == want["masks"][0].shape and len(drv.find_elements(By.CSS_SELECTOR, "#results tr.result")) == 3
    finally:
        drv.quit()
        s.close()
