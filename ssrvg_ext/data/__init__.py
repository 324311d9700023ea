"""Data, by kind:

* ``readers/`` -- one module per published layout, each turning files into records;
* ``synthetic/`` -- the embedded image and video datasets' generators;
* ``dataset.py`` (images) and ``clips.py`` (videos) -- datasets and their collate functions;
* ``transforms.py`` -- resizing, padding, flips, crops, colour jitter; ``tokenizer.py`` -- tokenizers.
"""

from .readers.refer import Record, load_refer, load_refs_pickle  # noqa: F401
from .dataset import Collate, ImageGroupBatchSampler, RefDataset  # noqa: F401
from .tokenizer import HFTokenizer, Tokenizer, WordTokenizer  # noqa: F401
from .transforms import build_transforms, swap_left_right  # noqa: F401
