"""`python tools/train.py ...`: the same tool as `ssrvg-train` (`python -m ssrvg_ext.cli.train`), for the
mmdetection / detectron2 habit of running the tools from a clone; `--help` lists the options."""

from ssrvg_ext.cli.train import main

if __name__ == "__main__":
    main()
