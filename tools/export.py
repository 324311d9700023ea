"""`python tools/export.py ...`: the same tool as `ssrvg-export` (`python -m ssrvg_ext.cli.export`), run
from a clone; `--help` lists the options."""

from ssrvg_ext.cli.export import main

if __name__ == "__main__":
    main()
