"""Export a training checkpoint as a model folder to share: model.safetensors (weights only),
config.json (the exact model config), the tokenizer files and a README.md model card.

    ssrvg-export --checkpoint runs/tiny_synthetic/best.pth --out models/tiny_synthetic [--dtype bf16] [--ema]

The folder loads with ``Predictor.from_pretrained(DIR)``, ``VideoPredictor.from_pretrained(DIR)``,
``ssrvg-eval --model DIR`` and ``ssrvg-demo --model DIR`` (nothing in it is unpickled). The model
card's evaluation table is read from the eval_*.json that ssrvg-eval wrote beside the checkpoint.
"""

import argparse
import shlex
import sys

from ssrvg_ext.model_folder import DTYPES, export


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a best.pth / last.pth of ssrvg-train")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="of the floating weights (default fp32)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights (train.ema)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = p.parse_args(argv)
    command = "ssrvg-export " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        out = export(a.checkpoint, a.out, a.dtype, a.ema, a.overwrite, command=command)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        sys.exit(f"ssrvg-export: {e}")
    print(f"wrote {out}/ (model.safetensors, config.json, tokenizer, README.md)")


if __name__ == "__main__":
    main()
