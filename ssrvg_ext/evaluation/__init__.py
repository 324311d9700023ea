"""REC / RES metrics built on the RLE ops."""

from .metrics import box_iou, grounding_metrics, mask_stats, mask_stats_batch  # noqa: F401
