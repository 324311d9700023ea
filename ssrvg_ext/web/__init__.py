"""The web demo (``ssrvg-demo --web``): :mod:`ssrvg_ext.web.server` and its page in ``static/``."""
