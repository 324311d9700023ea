"""Predictor: a trained model, loaded once, that grounds expressions in images.

    >>> from ssrvg_ext import Predictor
    >>> p = Predictor("runs/tiny_synthetic/best.pth", device="cuda")
    >>> p = Predictor.from_pretrained("models/tiny_synthetic")   # a model folder of ssrvg-export
    >>> [r] = p.predict("photo.jpg", "the man in the red shirt")
    >>> r["box"], r["mask"].shape, r["score"]        # xyxy in the photo's pixels, (H, W) uint8, in (0, 1)
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .data import Collate
from .data.dataset import read_image
from .engine.data import make_transform, task_of, to_device
from .engine.inference import load_for_inference
from .engine.optim import amp_setup
from .models import postprocess
from .ops import rle

ImageLike = Union[str, Image.Image, np.ndarray, torch.Tensor]


def as_image_tensor(image: ImageLike) -> torch.Tensor:
    """A path (EXIF orientation applied), PIL image, (H, W, 3) uint8 array or (3, H, W) uint8 tensor
    -> (3, H, W) uint8 tensor."""
    if isinstance(image, str):
        return read_image(image)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    if torch.is_tensor(image):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W) uint8; got {tuple(image.shape)} {image.dtype}")
        return image.cpu().contiguous()
    raise TypeError(f"an image must be a path, PIL image, numpy array or tensor; got {type(image).__name__}")


class Predictor:
    """``checkpoint``: a ``best.pth`` / ``last.pth`` of ssrvg-train, or a model folder of ssrvg-export
    (:meth:`from_pretrained`). ``device``: default the GPU when
    there is one. ``amp``: "auto" (bf16 / fp16 on a GPU, off on the CPU, as training), "off", "bf16",
    "fp16". ``ema``: use the EMA weights when the checkpoint has them."""

    def __init__(self, checkpoint: str, device: torch.device | str | None = None, amp: str = "auto", ema: bool = False,
                 batch_size: int = 16):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loaded = load_for_inference(checkpoint, ema=ema, device=self.device)
        self.model, self.tokenizer, self.cfg = loaded.model, loaded.tokenizer, loaded.cfg
        if amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, off, bf16 or fp16; got {amp!r}")
        self.amp_dtype = (amp_setup({"train": {"amp": "auto"}}, self.device)[0] if amp == "auto" else
                          {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp])
        self.transform = make_transform(self.cfg, train=False)
        self.collate = Collate(self.tokenizer)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, folder: str, device: torch.device | str | None = None, amp: str = "auto",
                        batch_size: int = 16) -> "Predictor":
        """The model folder ``folder`` written by ssrvg-export (safetensors weights, config.json, the
        tokenizer files): read without unpickling anything; its names and shapes are checked."""
        from .model_folder import read_meta

        read_meta(folder)  # a clear error for anything that is not a model folder
        return cls(folder, device=device, amp=amp, batch_size=batch_size)

    def _pairs(self, images, expressions) -> list[tuple[ImageLike, str]]:
        one_image = not isinstance(images, (list, tuple))
        if isinstance(expressions, str):
            expressions = [expressions]
        if one_image:
            return [(images, e) for e in expressions]
        if len(images) != len(expressions):
            raise ValueError(f"{len(images)} images but {len(expressions)} expressions (give one expression per image, "
                             "or one image with several expressions)")
        return list(zip(images, expressions))

    @torch.no_grad()
    def predict(self, images: ImageLike | Sequence[ImageLike], expressions: str | Sequence[str], as_rle: bool = False,
                threshold: float = 0.0) -> list[dict]:
        """One result per (image, expression): ``box`` [x0, y0, x1, y1] in the image's pixels, ``mask``
        (H, W) uint8 at the image's size (a COCO RLE dict with ``as_rle``), ``score`` in (0, 1): the
        sigmoid of the best language-token match (how well the expression found an object; the mean
        mask probability inside the mask for models without token proposals), and ``text``.
        ``threshold``: the mask logit above which a pixel is in (0: probability 0.5)."""
        pairs = self._pairs(images, expressions)
        results = []
        for start in range(0, len(pairs), self.batch_size):
            samples = []
            for i, (image, text) in enumerate(pairs[start:start + self.batch_size]):
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"expression {start + i} is empty or not a string: {text!r}")
                img = as_image_tensor(image)
                h, w = img.shape[-2:]
                samples.append(self.transform({"image": img, "box": torch.tensor([0.0, 0.0, float(w), float(h)]),
                                               "mask": torch.zeros(h, w, dtype=torch.uint8), "text": text,
                                               "meta": {"index": start + i, "orig_size": (int(h), int(w))}}))
            batch = to_device(self.collate(samples), self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.model(batch["images"], batch["text_ids"], batch["text_mask"])
            for p, meta in zip(postprocess(out, batch["meta"], threshold), batch["meta"]):
                mask = p["mask"].cpu()
                results.append({"box": [round(float(v), 2) for v in p["box"]], "score": p["score"], "text": meta["text"],
                                "mask": rle.encode(mask) if as_rle else mask})
        return results


class VideoPredictor:
    """A model trained on clips (a video config, docs/video.md) that segments the object an
    expression refers to in every frame of a video, in windows of ``data.clip_len`` frames as
    evaluation does. ``device`` / ``amp`` / ``ema``: as :class:`Predictor`.

        >>> vp = VideoPredictor("runs/tiny_video/best.pth")
        >>> r = vp.predict(["f0.jpg", "f1.jpg", ...], "the square moving to the left")
        >>> r["masks"].shape, r["boxes"].shape       # (T, H, W) uint8, (T, 4) xyxy; a zero box: no object
    """

    def __init__(self, checkpoint: str | Predictor, device: torch.device | str | None = None, amp: str = "auto",
                 ema: bool = False):
        """``checkpoint`` may also be a :class:`Predictor` of a video model (its model is shared)."""
        self.image = checkpoint if isinstance(checkpoint, Predictor) else Predictor(checkpoint, device, amp, ema)
        if not task_of(self.image.cfg).video:
            raise ValueError(f"{checkpoint} was not trained on videos (data.format={self.image.cfg['data']['format']}); "
                             "use Predictor")
        self.clip_len = int(self.image.cfg["data"]["clip_len"])

    @classmethod
    def from_pretrained(cls, folder: str, device: torch.device | str | None = None, amp: str = "auto") -> "VideoPredictor":
        """A model folder of ssrvg-export holding a video model (as :meth:`Predictor.from_pretrained`)."""
        from .model_folder import read_meta

        read_meta(folder)
        return cls(folder, device=device, amp=amp)

    @torch.no_grad()
    def predict(self, frames: str | Sequence[ImageLike], expression: str, threshold: float = 0.0) -> dict:
        """``frames``: the video's frames in order (paths, PIL images, arrays or tensors, one size), a
        (T, H, W, 3) uint8 array, a video file (decoded with PyAV) or a folder of frames (in name
        order). Returns ``masks`` (T, H, W) uint8, ``boxes`` (T, 4) xyxy in pixels (zeros where the
        mask is empty), and ``text``."""
        from .data.clips import box_of, owned_windows

        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"the expression is empty or not a string: {expression!r}")
        imgs = [as_image_tensor(f) for f in load_frames(frames)]
        if not imgs:
            raise ValueError("no frames")
        size = tuple(imgs[0].shape[-2:])
        if any(tuple(im.shape[-2:]) != size for im in imgs):
            raise ValueError("the frames of a video must have one size")
        p = self.image
        masks = [None] * len(imgs)
        for win, own in owned_windows(len(imgs), self.clip_len):
            samples = [p.transform({"image": imgs[t], "box": torch.zeros(4), "mask": torch.zeros(size, dtype=torch.uint8),
                                    "text": expression, "meta": {"index": t, "orig_size": size}}) for t in win]
            batch = to_device(p.collate(samples), p.device)
            with torch.autocast(p.device.type, dtype=p.amp_dtype, enabled=p.amp_dtype is not None):
                out = p.model(batch["images"], batch["text_ids"], batch["text_mask"], clip_len=len(win))
            for t, mine, pred in zip(win, own, postprocess(out, batch["meta"], threshold)):
                if mine:
                    masks[t] = pred["mask"].cpu()
        m = torch.stack(masks)
        return {"masks": m, "boxes": torch.stack([box_of(x) for x in m]), "text": expression}


FRAME_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_frames(frames) -> Sequence[ImageLike]:
    """A video file or a folder of frames (str) -> its frames; a (T, H, W, 3) array -> its T frames;
    a sequence of frames as it is."""
    if isinstance(frames, str):
        if os.path.isdir(frames):
            names = sorted(n for n in os.listdir(frames) if n.lower().endswith(FRAME_EXT))
            if not names:
                raise ValueError(f"no frames ({', '.join(FRAME_EXT)}) in the folder {frames}")
            return [os.path.join(frames, n) for n in names]
        from .data.video_io import read_video

        return list(read_video(frames))
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        return list(frames)
    return frames


def load_predictor(path: str, device: torch.device | str | None = None, amp: str = "auto") -> Predictor | VideoPredictor:
    """A :class:`VideoPredictor` for a model trained on clips, else a :class:`Predictor`, of a
    checkpoint or model folder (loaded once)."""
    p = Predictor(path, device=device, amp=amp)
    return VideoPredictor(p) if task_of(p.cfg).video else p
