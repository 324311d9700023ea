"""Public ops: one module per op family, each with its compiled kernels and a reference.

    from ssrvg_ext.ops import rle            # COCO RLE encode/decode/iou, mask_iou
"""

from . import reference, rle  # noqa: F401
