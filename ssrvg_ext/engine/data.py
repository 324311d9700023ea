"""Data for training and evaluation: records, tokenizers, transforms, datasets and loaders."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..data import Collate, HFTokenizer, ImageGroupBatchSampler, RefDataset, WordTokenizer, build_transforms, load_refer
from ..data.clips import ClipCollate, ClipDataset, load_video_labels
from ..data.readers.refer import load_instance_labels
from ..data.readers.rvos import load_ytvos
from ..data.readers.splitfile import load_split_file
from . import dist


def read_source(fmt: str, ann_dir: str, image_dir: str, name: str, split: str):
    """Records of one split of one source: ``refer`` (the RefCOCO release format; ``name`` = the
    refs file's split_by) or ``splitfile`` (ReSC / TransVG split files; ``name`` = unc, unc+, gref,
    gref_umd, referit or flickr; box-only)."""
    if fmt == "refer":
        return load_refer(ann_dir, image_dir, name, [split])
    if fmt == "splitfile":
        return load_split_file(ann_dir, name, split, image_dir)
    raise ValueError(f"data.format must be refer, splitfile, ytvos, a2d or jhmdb; got {fmt!r}")


class ImageTask:
    """Referring expressions on images (data.format refer or splitfile): what differs between images
    and videos in loading, batching, augmenting and evaluating, decided once by :func:`task_of`."""
    video = False

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def records(self, split: str):
        d = self.cfg["data"]
        return read_source(d["format"], d["ann_dir"], d["image_dir"], d["split_by"], split)

    def instances(self, records):
        d = self.cfg["data"]
        if d["format"] != "refer" or d["extra_train"]:
            raise ValueError("data.aux_labels and data.crop=objects read every object from instances.json: they need "
                             "data.format=refer and no data.extra_train")
        return load_instance_labels(d["ann_dir"], d["aux_labels"] or [], {r.image_id for r in records}, d["aux_shapes"])

    def dataset(self, records, train: bool, instances=None):
        return RefDataset(records, make_transform(self.cfg, train), cache_images=self.cfg["data"]["cache_images"],
                          instances=instances)

    def collate(self, tokenizer):
        return Collate(tokenizer)

    def start_epoch(self, dataset, epoch: int) -> None:
        """Progressive resizing: the epoch's training input size."""
        dataset.transform = make_transform(self.cfg, True, train_input_size(self.cfg, epoch))

    def eval_batch_size(self, dataset) -> int:
        return self.cfg["train"]["batch_size"]

    def evaluator(self, dataset):
        from .evaluation import GroundingEvaluator

        return GroundingEvaluator(dataset)


class VideoTask(ImageTask):
    """Referring video segmentation (data.format ytvos): one record per expression of a video,
    batches of clips, J&F evaluation over whole videos (docs/video.md)."""
    video = True

    def records(self, split: str):
        d = self.cfg["data"]
        if d["extra_train"]:
            raise ValueError("data.extra_train is not supported with data.format=ytvos")
        return load_ytvos(d["ann_dir"], split, annotated=split in d["annotated_splits"])

    def instances(self, records):  # labels of the objects in <ann_dir>/<train split>/meta.json; every frame's id map
        d = self.cfg["data"]
        if d["crop"] == "objects":
            raise ValueError("data.crop=objects is image-only: set data.crop=false for videos")
        if d["aux_shapes"] != "masks":
            raise ValueError("data.aux_shapes=boxes is image-only: the video label maps are the masks' (set masks)")
        return load_video_labels(d["ann_dir"], d["train_split"], d["aux_labels"], {r.video for r in records})

    def dataset(self, records, train: bool, instances=None):
        d = self.cfg["data"]
        return ClipDataset(records, d["clip_len"], d["input_size"], train, d["flip"], d["jitter"], d["cache_images"],
                           sampling=d["clip_sampling"], reverse=d["clip_reverse"],
                           labels=instances)

    def collate(self, tokenizer):
        return ClipCollate(tokenizer)

    def start_epoch(self, dataset, epoch: int) -> None:
        pass  # clips keep their size

    def eval_batch_size(self, dataset) -> int:
        if any(len(w) != dataset.clip_len for _, w, _ in dataset.items):
            return 1  # windows of videos shorter than a clip: one window a batch
        return self.cfg["train"]["batch_size"]

    def evaluator(self, dataset):
        from .evaluation import VideoEvaluator

        return VideoEvaluator(dataset)


class AnnotatedVideoTask(VideoTask):
    """The annotated-frame protocols (data.format a2d: A2D-Sentences, from its .mp4 clips; jhmdb:
    JHMDB-Sentences, evaluation only; :mod:`~ssrvg_ext.data.annotated`): one clip per annotated frame,
    only that frame supervised; oIoU, mIoU, Prec@K and mAP on the annotated frames at the original
    resolution."""

    def records(self, split: str):
        from ..data.annotated import a2d_records, jhmdb_records

        d = self.cfg["data"]
        if d["extra_train"]:
            raise ValueError(f"data.extra_train is not supported with data.format={d['format']}")
        if d["format"] == "a2d":
            return a2d_records(d["ann_dir"], split, d["frame_cache"])
        if split != "test":
            raise ValueError(f"JHMDB-Sentences is an evaluation set: its split is test, not {split!r} (train on A2D, "
                             "then evaluate its checkpoint with data.format=jhmdb)")
        return jhmdb_records(d["ann_dir"])

    def instances(self, records):
        raise ValueError(f"data.aux_labels and data.crop=objects are not available for data.format="
                         f"{self.cfg['data']['format']} (the annotations label the referred object only)")

    def eval_batch_size(self, dataset) -> int:
        return self.cfg["train"]["batch_size"]  # one window of clip_len frames per record

    def evaluator(self, dataset):
        from .evaluation import AnnotatedFrameEvaluator

        return AnnotatedFrameEvaluator(dataset)


def task_of(cfg: dict) -> ImageTask:
    """The one place that tells images from videos: :class:`VideoTask` for data.format=ytvos,
    :class:`AnnotatedVideoTask` for a2d and jhmdb."""
    fmt = cfg["data"]["format"]
    if fmt == "ytvos":
        return VideoTask(cfg)
    if fmt in ("a2d", "jhmdb"):
        return AnnotatedVideoTask(cfg)
    return ImageTask(cfg)


def load_records(cfg: dict, split: str, shuffle_text: bool = False):
    """The records of ``split`` of the config's dataset; for the training split, plus those of every
    ``data.extra_train`` source (e.g. a box-only set beside a mask-annotated one)."""
    d = cfg["data"]
    recs = task_of(cfg).records(split)
    if split == d["train_split"]:
        for i, s in enumerate(d["extra_train"]):
            missing = {"format", "ann_dir", "image_dir", "name", "split"} - set(s)
            if missing:
                raise ValueError(f"data.extra_train[{i}] needs {sorted(missing)}; got {s}")
            recs = recs + read_source(s["format"], s["ann_dir"], s["image_dir"], s["name"], s["split"])
    if shuffle_text:  # control: pair every image with another expression of the same split
        texts = [r.text for r in recs]
        random.Random(0).shuffle(texts)
        recs = [type(r)(**{**r.__dict__, "text": t}) for r, t in zip(recs, texts)]
    return recs


def load_train_instances(cfg: dict, records):
    """Every object of the records' images, when the config needs them: labels for the dense auxiliary
    loss (their classes: :func:`label_classes`) and the masks that crop="objects" keeps whole. None
    when neither is asked for."""
    d = cfg["data"]
    if not (d["aux_labels"] or d["crop"] == "objects"):
        return None
    return task_of(cfg).instances(records)


def label_classes(instances) -> dict | None:
    """{label: [values]} of the dense object-label loss, or None (built into the model, and saved in
    its checkpoints, by the trainer)."""
    return ({k: list(v) for k, v in instances.classes.items()} or None) if instances is not None else None


def make_tokenizer(cfg: dict, train_texts=None, state: dict | None = None):
    """From a checkpoint's saved state; a local HF tokenizer folder (``data.tokenizer``, by default the
    pretrained text encoder's folder: its weights need its vocabulary); or trained on the training
    texts (a word-level vocabulary, for a text encoder trained from scratch)."""
    d, text = cfg["data"], cfg["model"]["text"]
    if state is not None:
        if state["kind"] == "word":
            from tokenizers import Tokenizer as HFTok

            return WordTokenizer(HFTok.from_str(state["json"]), state["max_len"])
        return HFTokenizer(state["path"], state["max_len"])
    path = d["tokenizer"] or (text["name_or_path"] if text.get("pretrained") else None)
    if path:
        return HFTokenizer(path, d["max_len"])
    return WordTokenizer.train(train_texts, d["max_len"])


def tokenizer_state(tok) -> dict:
    if isinstance(tok, WordTokenizer):
        return {"kind": "word", "json": tok.tok.to_str(), "max_len": tok.max_len}
    return {"kind": "hf", "path": tok.tok.name_or_path, "max_len": tok.max_len}


def _seed_worker(_):
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_transform(cfg: dict, train: bool, size: int | None = None):
    d = cfg["data"]
    return build_transforms(train, size or d["input_size"], d["flip"], d["crop"], d["jitter"])


def train_input_size(cfg: dict, epoch: int) -> int:
    """``data.early_input_size`` for the first ``data.early_input_epochs`` epochs, else ``data.input_size``."""
    d = cfg["data"]
    return d["early_input_size"] if d["early_input_size"] and epoch < d["early_input_epochs"] else d["input_size"]


def make_dataset(cfg: dict, records, train: bool, instances=None) -> RefDataset | ClipDataset:
    return task_of(cfg).dataset(records, train, instances)


def loader_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of a rank's DataLoader generator for an epoch: distinct per rank and epoch."""
    return seed * 1000 + epoch + rank * 1_000_003


def make_loader(cfg: dict, ds: RefDataset | ClipDataset, tokenizer, train: bool, epoch_seed: int = 0):
    """A loader over ``ds`` (made once, so its image cache lives across epochs) and its sampler (call
    ``set_epoch`` on it when not None). The shuffling is seeded by the epoch so that a resumed run
    sees the same order. Training images with ``data.exprs_per_image`` k > 1 batch groups of k
    expressions of one image (:class:`~ssrvg_ext.data.ImageGroupBatchSampler`); clips come
    ``train.batch_size`` clips of ``data.clip_len`` frames a batch."""
    t = cfg["train"]
    task = task_of(cfg)
    k = int(cfg["data"]["exprs_per_image"])
    common = dict(num_workers=t["workers"], collate_fn=task.collate(tokenizer), worker_init_fn=_seed_worker,
                  persistent_workers=False)
    if train and k > 1 and not task.video:
        sampler = ImageGroupBatchSampler(ds.records, k, t["batch_size"], t["seed"], dist.rank(), dist.world_size())
        return DataLoader(ds, batch_sampler=sampler, **common), sampler
    sampler = DistributedSampler(ds, shuffle=train, seed=t["seed"]) if dist.world_size() > 1 else None
    # Seeds the shuffle (one process) and the workers' base seed; the rank term gives every rank its
    # own augmentation stream in its workers (0 on a single process: unchanged there).
    g = torch.Generator().manual_seed(loader_seed(t["seed"], epoch_seed, dist.rank()))
    batch = t["batch_size"] if train else task.eval_batch_size(ds)
    loader = DataLoader(ds, batch_size=batch, shuffle=train and sampler is None, sampler=sampler,
                        drop_last=train, generator=g, **common)
    return loader, sampler


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
