"""Data: the RefCOCO-format reader, the embedded synthetic dataset, transforms, tokenizers, batching."""

from .refer import Record, load_refer, load_refs_pickle  # noqa: F401
from .dataset import Collate, ImageGroupBatchSampler, RefDataset  # noqa: F401
from .tokenizer import HFTokenizer, Tokenizer, WordTokenizer  # noqa: F401
from .transforms import build_transforms, swap_left_right  # noqa: F401
