"""Model building blocks. Each module fits on a screen and calls the ops through ssrvg_ext.ops."""

from .ms_deform_attn import MSDeformAttn  # noqa: F401
from .build import build_criterion, build_model  # noqa: F401
from .criterion import Criterion  # noqa: F401
from .ssrvg import SSRVG, postprocess  # noqa: F401
