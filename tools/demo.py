"""`python tools/demo.py ...`: the same tool as `ssrvg-demo` (`python -m ssrvg_ext.cli.demo`), for the
mmdetection / detectron2 habit of running the tools from a clone; `--help` lists the options."""

from ssrvg_ext.cli.demo import main

if __name__ == "__main__":
    main()
