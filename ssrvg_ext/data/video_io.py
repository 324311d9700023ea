"""Video files in and out, through PyAV (the ``video`` extra: ``pip install av``).

PyAV binds FFmpeg's libraries in-process (no ``ffmpeg`` executable to find), ships them in its
wheels for Linux, macOS and Windows, is maintained, and decodes every container and codec FFmpeg
does; torchvision's video reader is deprecated and decord is unmaintained. Frames come out as RGB
uint8 in presentation order.

* :func:`read_video` -- a file -> its frames (T, H, W, 3) uint8, for prediction.
* :func:`decode_to_cache` -- a file -> its frames as JPEGs in a cache folder, decoded once: a second
  call (another run) reuses them while the source file is unchanged (size and modification time).
  Training on A2D-Sentences reads its ``.mp4`` clips this way.
* :func:`write_video` -- frames -> an H.264 ``.mp4`` (MPEG-4 part 2 where the FFmpeg build lacks x264).

A file that cannot be opened, is truncated, or has no video frame is a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import os

import numpy as np

CACHE_INFO = "frames.json"  # written last: a cache folder without it is incomplete and decoded again


def _av():
    try:
        import av
    except ImportError:
        raise ImportError("reading and writing video files needs PyAV (pip install av, or pip install "
                          "ssrvg_ext[video]); frame folders need nothing") from None
    return av


def _frames(path: str, max_frames: int | None = None, max_pixels: int | None = None):
    """Yields the frames of ``path`` as (H, W, 3) uint8 arrays, with errors that name the file;
    ``max_frames`` / ``max_pixels`` (per frame, checked from the stream header before decoding):
    limits beyond which the video is refused with a ValueError."""
    av = _av()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path}: no such file")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"video {path} cannot be opened: not a video file, or truncated or corrupt "
                         f"({type(e).__name__}: {e})") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        w, h = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and w * h > max_pixels:
            raise ValueError(f"video {path} is {w} x {h} pixels a frame; at most {max_pixels / 1e6:.1f} megapixels")
        n = 0
        try:
            for frame in container.decode(stream):
                if max_frames is not None and n >= max_frames:
                    raise ValueError(f"video {path} has more than {max_frames} frames; at most {max_frames}")
                yield frame.to_ndarray(format="rgb24")
                n += 1
        except (av.error.FFmpegError, OSError) as e:
            raise ValueError(f"video {path} is truncated or corrupt after {n} frames ({type(e).__name__}: {e})") from None
        expected = stream.frames
        if n == 0:
            raise ValueError(f"video {path} has no decodable frame (truncated or corrupt?)")
        if expected and n < expected:
            raise ValueError(f"video {path} is truncated: its header announces {expected} frames, {n} could be decoded")


def read_video(path: str, max_frames: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """The frames of the video file ``path``, (T, H, W, 3) uint8 RGB; a video over ``max_frames``
    frames or ``max_pixels`` pixels a frame is refused (ValueError) without decoding the rest."""
    return np.stack(list(_frames(path, max_frames, max_pixels)))


def _stamp(path: str) -> dict:
    st = os.stat(path)
    return {"source": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def cached_frames(path: str, folder: str) -> list[str] | None:
    """The frame files of ``folder`` when it holds a complete decode of the unchanged ``path``."""
    info = os.path.join(folder, CACHE_INFO)
    if not os.path.isfile(info):
        return None
    try:
        with open(info) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    stamp = _stamp(path)
    if any(meta.get(k) != v for k, v in stamp.items() if k != "source"):
        return None
    names = meta.get("frames") or []
    paths = [os.path.join(folder, n) for n in names]
    return paths if paths and all(os.path.isfile(p) for p in paths) else None


def decode_to_cache(path: str, folder: str, quality: int = 95) -> list[str]:
    """The frames of ``path`` as ``folder/00001.jpg``, ... (1-based, as A2D numbers them), decoded on
    the first call and reused afterwards. The frames are written beside ``folder`` and renamed into
    place, so an interrupted decode leaves nothing that looks complete."""
    from PIL import Image

    hit = cached_frames(path, folder)
    if hit is not None:
        return hit
    from ..engine.checkpoint import atomic_folder

    names = []
    with atomic_folder(folder) as tmp:
        for t, frame in enumerate(_frames(path)):
            names.append(f"{t + 1:05d}.jpg")
            Image.fromarray(frame).save(os.path.join(tmp, names[-1]), quality=quality)
        with open(os.path.join(tmp, CACHE_INFO), "w") as f:
            json.dump({**_stamp(path), "frames": names}, f)
    return [os.path.join(folder, n) for n in names]


def write_video(frames, path: str, fps: float = 10.0) -> str:
    """Writes (T, H, W, 3) uint8 frames (an array or a list of arrays) as an .mp4 at ``fps``; odd
    sizes are padded by one pixel (H.264 needs even ones). Returns ``path``."""
    av = _av()
    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    H, W = h + h % 2, w + w % 2
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    from fractions import Fraction

    with av.open(path, mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        for f in frames:
            if f.shape[:2] != (h, w):
                raise ValueError(f"frames of one video must have one size; got {f.shape[:2]} after {(h, w)}")
            if (H, W) != (h, w):
                f = np.pad(f, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
