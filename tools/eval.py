"""`python tools/eval.py ...`: the same tool as `ssrvg-eval` (`python -m ssrvg_ext.cli.eval`), for the
mmdetection / detectron2 habit of running the tools from a clone; `--help` lists the options."""

from ssrvg_ext.cli.eval import main

if __name__ == "__main__":
    main()
