"""Public ops: one module per op family, each with its compiled kernels and a reference.

    from ssrvg_ext.ops import rle            # COCO RLE encode/decode/iou, mask_iou
    from ssrvg_ext.ops import coco_mask      # a drop-in for pycocotools.mask (same names and conventions)
    from ssrvg_ext.ops import upsampled_mask_loss     # fused mask losses
    from ssrvg_ext.ops import mask_postprocess        # masks at the original size (inference)
    from ssrvg_ext.ops import ms_deform_attn          # deformable attention
"""

from . import coco_mask, reference, rle  # noqa: F401
from .mask_loss import (LOSSES, unfused_mask_losses, upsampled_mask_loss,  # noqa: F401
                        upsampled_mask_loss_terms, upsampled_mask_losses, upsampled_mask_sums)
from .mask_postprocess import mask_postprocess  # noqa: F401
from .ms_deform_attn import ms_deform_attn  # noqa: F401
