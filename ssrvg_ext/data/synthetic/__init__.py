"""The embedded synthetic datasets (nothing to download): :mod:`.images` writes a referring-expression
set in RefCOCO's release format, :mod:`.videos` a referring video set in Ref-YouTube-VOS's layout."""
