import os

import pytest
import torch

import ssrvg_ext  # noqa: F401  (loads the ops once for the whole session)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def rng():
    """A fresh seed every run (printed on failure) so inputs are never the same tuned set."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
