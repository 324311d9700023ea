"""ssrvg_ext: referring expression grounding (box + mask) on C++/CUDA-accelerated PyTorch ops.

Importing the package loads the compiled operator library (``ssrvg_ext._C``) once; if it is
missing the ops fall back to their pure-PyTorch references with one warning saying why
(``SSRVG_REQUIRE_EXT=1`` turns that into an error).
"""

from . import extension  # noqa: F401  (loads _C)
from . import ops  # noqa: F401

__version__ = "0.1.0"


def __getattr__(name):  # ssrvg_ext.Predictor / VideoPredictor without importing the models on `import ssrvg_ext`
    if name in ("Predictor", "VideoPredictor"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'ssrvg_ext' has no attribute {name!r}")
