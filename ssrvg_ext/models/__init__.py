"""Model building blocks. Each module fits on a screen and calls the ops through ssrvg_ext.ops."""

from .ms_deform_attn import MSDeformAttn  # noqa: F401
