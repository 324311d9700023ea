"""Evaluation, detectron2's way: :func:`inference_on_dataset` runs the model over a loader and
hands every batch's predictions to an evaluator (``reset`` / ``process`` / ``evaluate``), one per
task. ``ssrvg-eval``, the validation of every training epoch and the benchmarks all go through it;
:func:`~.data.task_of` picks the evaluator (images or videos).

* :class:`GroundingEvaluator` -- REC Acc@0.5, RES mIoU / oIoU / Prec@0.5:0.9 at the original
  resolution with exact integer intersections and unions (:mod:`ssrvg_ext.evaluation.metrics`).
* :class:`VideoEvaluator` -- every frame of every expression predicted once (windows of
  ``data.clip_len`` frames), kept as RLE at the frame's size; on annotated splits J and F per
  expression (DAVIS protocol, :mod:`ssrvg_ext.evaluation.video_metrics`), their means, J&F, and the
  same per expression ``kind`` when the records carry one (the embedded set: motion / appearance).
* :class:`AnnotatedFrameEvaluator` -- the A2D-Sentences / JHMDB-Sentences protocol: only the
  annotated frames count; Prec@0.5:0.9, overall and mean IoU, and mask mAP over 0.5:0.95 ranked by
  the predictions' scores.

Each process evaluates its share of the loader; ``evaluate`` gathers the predictions on every rank
(DistributedSampler pads with repeats: keyed by index, each sample counts once) and checks that
every sample was covered.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..data.readers.rvos import annotated_frame, read_palette_mask
from ..evaluation import box_iou, grounding_metrics, mask_stats, mask_stats_batch
from ..evaluation.video_metrics import jf_object, jf_summary, mask_ap, segmentation_summary
from ..ops import rle
from . import dist
from .data import to_device


class DatasetEvaluator:
    """The evaluator protocol: ``reset()`` before a pass, ``process(batch, predictions)`` for every
    batch (``predictions``: :meth:`~ssrvg_ext.models.SSRVG.predict`'s, one per row), ``evaluate()``
    -> (metrics, per-sample results) once all batches were processed (on every rank)."""

    def reset(self) -> None:
        self.mine: dict = {}

    def process(self, batch: dict, predictions: list[dict]) -> None:
        raise NotImplementedError

    def gathered(self) -> dict:
        merged = {}
        for part in dist.gather_objects(self.mine):
            merged.update(part)
        return merged

    def evaluate(self) -> tuple[dict, list[dict]]:
        raise NotImplementedError


def _rle_json(r: dict) -> dict:  # a pycocotools RLE with its counts as text (JSON, gathering over ranks)
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


class GroundingEvaluator(DatasetEvaluator):
    """REC / RES on a :class:`~ssrvg_ext.data.RefDataset`: per expression its box, RLE mask, box IoU
    and mask intersection / union (box-only records: none, their mask is their box)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.reset()

    def process(self, batch, predictions):
        masks = [p["mask"] for p in predictions]
        rles = rle.encode(torch.stack(masks)) if len({tuple(m.shape) for m in masks}) == 1 else [rle.encode(m) for m in masks]
        recs = [self.dataset.records[meta["index"]] for meta in batch["meta"]]
        with_mask = [i for i, rec in enumerate(recs) if not rec.box_only]
        stats = dict(zip(with_mask, mask_stats_batch([masks[i] for i in with_mask], [recs[i].rle for i in with_mask],
                                                     [rles[i] for i in with_mask])))
        for i, (p, r, meta, rec) in enumerate(zip(predictions, rles, batch["meta"], recs)):
            inter, union = stats.get(i, (None, None))
            self.mine[meta["index"]] = {"sent_id": rec.sent_id, "text": meta["text"], "kind": rec.kind,
                                        "box": [round(float(v), 2) for v in p["box"]], "mask": _rle_json(r),
                                        "box_iou": box_iou(p["box"], rec.box_xyxy), "inter": inter, "union": union}

    def evaluate(self):
        merged = self.gathered()
        results = [merged[i] for i in sorted(merged)]
        if len(results) != len(self.dataset):
            raise RuntimeError(f"evaluation covered {len(results)} of {len(self.dataset)} samples")
        for r in results:
            if r["inter"] is not None:
                r["mask_iou"] = r["inter"] / r["union"] if r["union"] else 1.0
        metrics = grounding_metrics(results)
        kinds = sorted({r["kind"] for r in results if r["kind"]})
        if len(kinds) > 1:  # the expression forms the data names (the embedded set: attr, rel, ordinal)
            for kind in kinds:
                part = grounding_metrics([r for r in results if r["kind"] == kind])
                metrics.update({f"{k}[{kind}]": part[k] for k in ("n", "Acc@0.5", "mIoU") if k in part})
        return metrics, results


class VideoEvaluator(DatasetEvaluator):
    """J&F on a :class:`~ssrvg_ext.data.clips.ClipDataset`: metrics ``n`` and, on annotated splits,
    ``J``, ``F``, ``J&F``, recalls, ``J&F[<kind>]`` / ``n[<kind>]``; one result per expression
    (video, exp_id, text, kind, frames, per-frame RLE masks, J / F with their per-frame values)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.reset()

    def process(self, batch, predictions):
        t = batch["clip_len"]
        keys = [(clip["index"], f, c * t + k) for c, clip in enumerate(batch["clips"])
                for k, (f, own) in enumerate(zip(clip["frames"], clip["own"])) if own]
        rles = rle.encode(torch.stack([predictions[row]["mask"] for _, _, row in keys]))  # a window's frames share a size
        self.mine.update({(i, f): _rle_json(r) for (i, f, _), r in zip(keys, rles)})

    def evaluate(self):
        merged = self.gathered()
        results, objects, by_kind = [], [], {}
        for i, rec in enumerate(self.dataset.records):
            n = len(rec.frames)
            missing = [f for f in range(n) if (i, f) not in merged]
            if missing:
                raise RuntimeError(f"evaluation missed frames {missing[:5]} of video {rec.video} expression {rec.exp_id}")
            masks = [merged[(i, f)] for f in range(n)]
            res = {"video": rec.video, "exp_id": rec.exp_id, "text": rec.text, "kind": rec.extra.get("kind"),
                   "frames": rec.frames, "masks": masks}
            if rec.anno_paths is not None:
                where = f"video {rec.video} expression {rec.exp_id}"
                gt = torch.from_numpy(np.stack([read_palette_mask(p, rec.obj_id, where) for p in rec.anno_paths]))
                pred = rle.decode([{"size": m["size"], "counts": m["counts"].encode("ascii")} for m in masks])
                if tuple(pred.shape) != tuple(gt.shape):
                    raise ValueError(f"{where}: predicted masks {tuple(pred.shape)} but annotations {tuple(gt.shape)}")
                jf = jf_object(pred, gt)
                res.update(jf)
                objects.append(jf)
                by_kind.setdefault(res["kind"], []).append(jf)
            results.append(res)
        metrics = {"n": len(results)}
        if objects:
            metrics.update(jf_summary(objects))
            for kind, objs in sorted(by_kind.items(), key=lambda kv: str(kv[0])):
                if kind is not None and len(by_kind) > 1:
                    metrics[f"J&F[{kind}]"] = jf_summary(objs)["J&F"]
                    metrics[f"n[{kind}]"] = len(objs)
        return metrics, results


class AnnotatedFrameEvaluator(VideoEvaluator):
    """A2D-Sentences and JHMDB-Sentences (MTTR's and SgMg's evaluation): per expression and annotated
    frame, the prediction (one per frame, with its score) against the ground truth at the original
    resolution: ``oIoU``, ``mIoU``, ``Prec@0.5:0.9`` (:func:`segmentation_summary`) and ``mAP``,
    ``AP@0.5``, ``AP@0.75`` (:func:`mask_ap`, COCO's rules). Frames are predicted as for
    :class:`VideoEvaluator`; ``annotation(record, frame) -> (H, W) bool or None`` reads the ground truth."""

    def __init__(self, dataset, annotation=annotated_frame):
        super().__init__(dataset)
        self.annotation = annotation

    def process(self, batch, predictions):
        t = batch["clip_len"]
        for c, clip in enumerate(batch["clips"]):
            for k, (f, own) in enumerate(zip(clip["frames"], clip["own"])):
                if own:
                    p = predictions[c * t + k]
                    self.mine[(clip["index"], f)] = {**_rle_json(rle.encode(p["mask"])), "score": float(p["score"])}

    def evaluate(self):
        merged = self.gathered()
        stats, samples, results = [], [], []
        for i, rec in enumerate(self.dataset.records):
            for f, frame in enumerate(rec.frames):
                gt = self.annotation(rec, f)
                if gt is None:
                    continue
                if (i, f) not in merged:
                    raise RuntimeError(f"evaluation missed frame {frame} of video {rec.video} expression {rec.exp_id}")
                m = merged[(i, f)]
                pred = {"size": m["size"], "counts": m["counts"].encode("ascii")}
                if tuple(pred["size"]) != gt.shape:
                    raise ValueError(f"video {rec.video} frame {frame}: predicted mask {tuple(pred['size'])} but "
                                     f"annotation {gt.shape}")
                gt_rle = rle.encode(torch.from_numpy(np.ascontiguousarray(gt, dtype=np.uint8)))
                inter, union = mask_stats(pred, gt_rle)
                stats.append((inter, union))
                samples.append({"gt": gt_rle, "preds": [pred], "scores": [m["score"]]})
                results.append({"video": rec.video, "exp_id": rec.exp_id, "text": rec.text, "frame": frame,
                                "mask": {"size": m["size"], "counts": m["counts"]}, "score": m["score"],
                                "inter": inter, "union": union})
        if not stats:
            raise ValueError("no annotated frame in the dataset")
        return {"n": len(stats), **segmentation_summary(stats), **mask_ap(samples)}, results


@torch.no_grad()
def inference_on_dataset(model, loader, evaluator: DatasetEvaluator, device, amp_dtype=None,
                         desc: str = "eval") -> tuple[dict, list[dict]]:
    """Runs ``model.predict`` (the model, or the module inside DDP) on every batch of ``loader`` in
    eval mode under autocast ``amp_dtype`` and returns ``evaluator.evaluate()``: the metrics and
    the per-sample results (every rank gets them all)."""
    core = model.module if hasattr(model, "module") else model
    core.eval()
    evaluator.reset()
    for batch in tqdm(loader, desc=desc, disable=not dist.is_main() or None, dynamic_ncols=True):
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            predictions = core.predict(batch)
        evaluator.process(batch, predictions)
    return evaluator.evaluate()
