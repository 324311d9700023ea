"""The web demo: a small local HTTP server (standard library only) around a Predictor.

    ssrvg-demo --web --model models/tiny_synthetic          # then open the printed http://127.0.0.1:PORT/

Routes: ``GET /`` the page (static/index.html + app.js), ``GET /api/info`` the model and the limits,
``GET /examples/<i>`` an example image, ``POST /api/predict?text=...&text=...`` with an image file
as the body (one result per expression), and for a video model ``POST /api/clip?text=...`` with
the clip's frames as the body, one after another, their byte lengths in the ``X-Frame-Lengths``
header, or with a video file as the body (decoded with PyAV; its frames come back as JPEGs). Answers are JSON; an error is ``{"error": message}`` with a 4xx status, and the server goes on.

Hostile uploads: the body's declared length is checked before anything is read (413), an image's
pixel count and sides are checked from its header before it is decoded (a decompression bomb is
refused unread), anything that is not a JPEG / PNG / BMP / GIF / WebP image is refused with a
message, and one model call runs at a time. The server binds to localhost unless told otherwise.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from PIL import Image

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "MPO")
EXAMPLE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class UploadError(ValueError):
    """A request the demo refuses; ``status`` is the HTTP status of the answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_bytes: int = 10 * 2**20       # one request's body
    max_pixels: int = 16 * 2**20      # width x height of one image
    max_side: int = 8192              # its longer side
    max_expressions: int = 8
    max_text: int = 200               # characters of one expression
    max_frames: int = 64              # frames of one clip


def decode_image(data: bytes, limits: Limits) -> torch.Tensor:
    """An uploaded file -> (3, H, W) uint8, checked before decoding; :class:`UploadError` otherwise."""
    from PIL import ImageOps, UnidentifiedImageError

    if not data:
        raise UploadError("the upload is empty: choose an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own guard, before ours
        n = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"{int(n.group(1)) / 1e6:.0f} megapixels" if n else "an enormous size"
        raise UploadError(f"the image declares {declared}; this demo takes at most {limits.max_pixels / 1e6:.1f} "
                          "megapixels (refused before decoding: a decompression bomb)", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise UploadError("that file is not an image this demo reads (JPEG, PNG, BMP, GIF or WebP), "
                          "or its header is corrupt or declares an enormous size") from None
    if im.format not in FORMATS:
        raise UploadError(f"{im.format} images are not accepted: upload a JPEG, PNG, BMP, GIF or WebP file")
    w, h = im.size
    if w < 1 or h < 1 or w * h > limits.max_pixels or max(w, h) > limits.max_side:
        raise UploadError(f"the image is {w} x {h} pixels; this demo takes at most {limits.max_pixels / 1e6:.1f} "
                          f"megapixels and {limits.max_side} pixels a side (ssrvg-demo --max-pixels / --max-side)", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = ImageOps.exif_transpose(im)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            rgb = np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        raise UploadError(f"the image could not be decoded: it is truncated or corrupt ({type(e).__name__})") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def mask_png(mask: torch.Tensor) -> str:
    """(H, W) 0/1 mask -> base64 of a grayscale PNG (0 / 255), drawn by the page at the image's size."""
    buf = io.BytesIO()
    Image.fromarray((mask.numpy().astype(np.uint8) * 255)).save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class DemoApp:
    """What the routes do, without HTTP (tests call it directly too). ``predictor``: a
    :class:`~ssrvg_ext.Predictor` or :class:`~ssrvg_ext.VideoPredictor`; ``examples``: image files
    offered on the page."""

    def __init__(self, predictor, examples=(), limits: Limits | None = None, name: str = "model"):
        from ..predictor import VideoPredictor

        self.predictor, self.limits, self.name = predictor, limits or Limits(), name
        self.video = isinstance(predictor, VideoPredictor)
        self.examples = [e for e in examples if os.path.isfile(e)]
        self.lock = threading.Lock()

    def info(self) -> dict:
        lim = self.limits
        return {"name": self.name, "video": self.video, "examples": [os.path.basename(e) for e in self.examples],
                "limits": {"max_bytes": lim.max_bytes, "max_pixels": lim.max_pixels, "max_side": lim.max_side,
                           "max_expressions": lim.max_expressions, "max_text": lim.max_text, "max_frames": lim.max_frames}}

    def texts(self, query: dict, most: int) -> list[str]:
        texts = [t.strip() for t in query.get("text", []) if t.strip()]
        if not texts:
            raise UploadError("type an expression (for example: the small red circle on the left)")
        if len(texts) > most:
            raise UploadError(f"{len(texts)} expressions; this demo takes at most {most} at once")
        long = [t for t in texts if len(t) > self.limits.max_text]
        if long:
            raise UploadError(f"an expression is {len(long[0])} characters long; at most {self.limits.max_text}")
        return texts

    def predict(self, body: bytes, query: dict) -> dict:
        if self.video:
            raise UploadError("this is a video model: give it the frames of a clip (POST /api/clip)")
        texts = self.texts(query, self.limits.max_expressions)
        img = decode_image(body, self.limits)
        with self.lock:
            t0 = time.perf_counter()
            results = self.predictor.predict(img, texts)
            ms = (time.perf_counter() - t0) * 1000
        return {"width": int(img.shape[2]), "height": int(img.shape[1]), "time_ms": round(ms, 1),
                "results": [{"text": r["text"], "box": r["box"], "score": round(float(r["score"]), 4),
                             "mask_pixels": int(r["mask"].sum()), "mask_png": mask_png(r["mask"])} for r in results]}

    def decode_video(self, body: bytes) -> list[torch.Tensor]:
        """An uploaded video file -> its frames, checked (frame size from the header, frame count)."""
        import tempfile

        from ..data.video_io import read_video

        with tempfile.NamedTemporaryFile(suffix=".video") as f:
            f.write(body)
            f.flush()
            try:
                frames = read_video(f.name, self.limits.max_frames, self.limits.max_pixels)
            except ImportError:
                raise UploadError("this server cannot read video files (PyAV is not installed): upload the frames") from None
            except (ValueError, FileNotFoundError) as e:
                raise UploadError(str(e).replace(f.name, "the upload")) from None
        return [torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous() for x in frames]

    def clip(self, body: bytes, query: dict, lengths: str | None) -> dict:
        """The frames of a clip one after another (``lengths``: their byte lengths), or one video file
        (``lengths`` None; the answer then carries each frame as a JPEG for the page to show)."""
        if not self.video:
            raise UploadError("this is an image model: upload one image (POST /api/predict)")
        [text] = self.texts(query, 1)
        if lengths is None:
            if not body:
                raise UploadError("the upload is empty: choose a video file or the frames of a clip")
            frames = self.decode_video(body)
            out = self.run_clip(frames, text)
            for f, img in zip(out["frames"], frames):
                buf = io.BytesIO()
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=90)
                f["frame_jpg"] = base64.b64encode(buf.getvalue()).decode("ascii")
            return out
        try:
            sizes = [int(x) for x in (lengths or "").split(",") if x.strip()]
        except ValueError:
            raise UploadError("X-Frame-Lengths must be the frames' byte lengths, separated by commas") from None
        if not sizes or any(s <= 0 for s in sizes) or sum(sizes) != len(body):
            raise UploadError("X-Frame-Lengths does not add up to the body: send the frames one after another")
        if len(sizes) > self.limits.max_frames:
            raise UploadError(f"{len(sizes)} frames; this demo takes at most {self.limits.max_frames}")
        frames, at = [], 0
        for i, s in enumerate(sizes):
            try:
                frames.append(decode_image(body[at:at + s], self.limits))
            except UploadError as e:
                raise UploadError(f"frame {i + 1}: {e}", e.status) from None
            at += s
        if any(f.shape != frames[0].shape for f in frames):
            raise UploadError("the frames of a clip must all have one size")
        return self.run_clip(frames, text)

    def run_clip(self, frames: list[torch.Tensor], text: str) -> dict:
        with self.lock:
            t0 = time.perf_counter()
            r = self.predictor.predict(frames, text)
            ms = (time.perf_counter() - t0) * 1000
        return {"width": int(frames[0].shape[2]), "height": int(frames[0].shape[1]), "time_ms": round(ms, 1),
                "text": text, "frames": [{"box": [round(float(v), 2) for v in b], "mask_pixels": int(m.sum()),
                                          "mask_png": mask_png(m)} for m, b in zip(r["masks"], r["boxes"])]}


class Handler(BaseHTTPRequestHandler):
    app: DemoApp  # set on the subclass that make_server builds
    timeout = 60  # a client that stops sending is dropped, not waited for
    server_version = "ssrvg-demo"
    STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript")}

    def log_message(self, fmt, *args):  # one short line per request on stderr, as http.server does
        if os.environ.get("SSRVG_DEMO_QUIET") != "1":
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; style-src 'self' "
                                                    "'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self):
        path = urlsplit(self.path).path
        if path in self.STATIC_FILES:
            name, ctype = self.STATIC_FILES[path]
            with open(os.path.join(STATIC, name), "rb") as f:
                return self._send(200, f.read(), ctype)
        if path == "/api/info":
            return self._json(200, self.app.info())
        if path.startswith("/examples/"):
            try:
                f = self.app.examples[int(path.rsplit("/", 1)[1])]
            except (ValueError, IndexError):
                return self._json(404, {"error": "no such example"})
            with open(f, "rb") as fh:
                return self._send(200, fh.read(), "image/" + ("png" if f.lower().endswith(".png") else "jpeg"))
        return self._json(404, {"error": f"no page at {path}"})

    def do_POST(self):
        url = urlsplit(self.path)
        try:
            if url.path not in ("/api/predict", "/api/clip"):
                raise UploadError(f"no endpoint at {url.path}", 404)
            n = self.headers.get("Content-Length")
            if n is None or not n.isdigit():
                raise UploadError("the request has no Content-Length", 411)
            if int(n) > self.app.limits.max_bytes:
                self.close_connection = True  # the body is not read
                raise UploadError(f"the upload is {int(n) / 2**20:.1f} MiB; this demo takes at most "
                                  f"{self.app.limits.max_bytes / 2**20:.1f} MiB (ssrvg-demo --max-upload-mb)", 413)
            body = self.rfile.read(int(n))
            if len(body) != int(n):
                raise UploadError("the upload was cut short")
            query = parse_qs(url.query, keep_blank_values=False, max_num_fields=64)
            if url.path == "/api/predict":
                return self._json(200, self.app.predict(body, query))
            return self._json(200, self.app.clip(body, query, self.headers.get("X-Frame-Lengths")))
        except UploadError as e:
            return self._json(e.status, {"error": str(e)})
        except ValueError as e:  # parse_qs's field limit, the predictor's own checks
            return self._json(400, {"error": str(e)})
        except Exception as e:  # a bug must not take the server down: say it on the page, keep serving
            self.log_error("failed: %r", e)
            return self._json(500, {"error": f"the model failed on this input ({type(e).__name__}: {e})"})


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for ``app`` bound to ``host``:``port`` (0: a free port; ``server.server_address``
    says which). Call ``serve_forever()`` on it (``shutdown()`` from another thread stops it)."""
    handler = type("DemoHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
