"""Train SSRVG-REC.

    python -m ssrvg_ext.cli.train --config configs/tiny_synthetic.yaml [--out runs/tiny] [--resume auto|CKPT] [key=value ...]
    torchrun --nproc_per_node=K ssrvg_ext.cli.train --config ...     # several GPUs (or CPU processes with gloo)
"""

import argparse
import os
import shlex
import sys


from ssrvg_ext.config import load_config
from ssrvg_ext.engine.trainer import RunFolderBusy, train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' for <out>/last.pth if present")
    p.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides like train.epochs=3")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    try:
        train(cfg, out, args.resume, args.max_steps, command="ssrvg-train " + shlex.join(sys.argv[1:]))
    except RunFolderBusy as e:
        sys.exit(f"ssrvg-train: {e}")


if __name__ == "__main__":
    main()
