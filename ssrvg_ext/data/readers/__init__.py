"""Dataset readers: each turns one published layout into records (docs/data.md).

* :mod:`.refer` -- RefCOCO / RefCOCO+ / RefCOCOg (``refs(<split_by>).p`` + ``instances.json``) and the
  embedded synthetic set;
* :mod:`.splitfile` -- ReSC / TransVG split files (ReferItGame, Flickr30k, ...; boxes only);
* :mod:`.rvos` -- Ref-YouTube-VOS, Ref-DAVIS17, A2D-Sentences and JHMDB-Sentences.
"""
