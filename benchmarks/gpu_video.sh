#!/usr/bin/env bash
# On a GPU lease: the method presets and the clip model train and evaluate on CUDA (a few steps each,
# bf16 autocast), then video variants train side by side on the embedded video set, each writing
# its per-epoch validation J&F (motion / appearance) to $OUT. Uses the machine's python3 + torch,
# wheels from .whl/ and the library prebuilt in .gpu_prebuilt/ (benchmarks/gpu_prepare.sh).
#
#   DEADLINE=420 benchmarks/gpu_video.sh
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-420}
START=$(date +%s)
PY=python3
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT" SSRVG_REQUIRE_EXT=1
if [ -d .whl ] && ! $PY -c "import pycocotools" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/ssrvg_site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/ssrvg_site"
fi
SUFFIX=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
[ -f ".gpu_prebuilt/_C$SUFFIX" ] && cp ".gpu_prebuilt/_C$SUFFIX" .gpu_prebuilt/_build_info.json ssrvg_ext/
left() { echo $((DEADLINE - ($(date +%s) - START))); }
{ nvidia-smi --query-gpu=name --format=csv,noheader; $PY -c "import torch, ssrvg_ext.extension as e; print(torch.__version__, e.AVAILABLE)"; } | tee "$OUT/machine.txt"

$PY -m ssrvg_ext.cli.make_synthetic_video --out /tmp/v > "$OUT/video_data.log" 2>&1 &
$PY -m ssrvg_ext.cli.make_synthetic --out /tmp/img --images 120 --eval-images 10 > /dev/null 2>&1
wait

# 1. every preset (each method's components, all four together, the clip model) on CUDA: 6 steps + eval
smoke() {
  local cfg=$1 name; name=$(basename "$cfg" .yaml)
  shift
  timeout 150 $PY -m ssrvg_ext.cli.train --config "$cfg" --out "/tmp/smoke_$name" --max-steps 6 train.epochs=1 "$@" \
    > "/tmp/smoke_$name.log" 2>&1
  echo "$name rc=$?: $(tail -c 300 /tmp/smoke_$name.log | tr '\n' ' ')"
}
IMG="data.ann_dir=/tmp/img data.image_dir=/tmp/img/images"
{ for m in segvg magnet sgmg cmpc all; do smoke "configs/methods/$m.yaml" $IMG & done
  smoke configs/tiny_video.yaml data.ann_dir=/tmp/v data.image_dir=/tmp/v & wait; } > "$OUT/smoke.txt" 2>&1
cat "$OUT/smoke.txt"

# 2. video variants side by side until the deadline: per-epoch J&F in log.jsonl
V="data.ann_dir=/tmp/v data.image_dir=/tmp/v train.workers=0"
variant() {
  local name=$1
  shift
  OMP_NUM_THREADS=3 timeout $(( $(left) - 10 )) $PY -m ssrvg_ext.cli.train --config configs/tiny_video.yaml \
    --out "/tmp/run_$name" $V "$@" > "/tmp/run_$name.log" 2>&1
  cp "/tmp/run_$name/log.jsonl" "$OUT/$name.jsonl" 2>/dev/null
}
variant temporal train.epochs=8 &
variant perframe train.epochs=8 model.temporal.layers=0 model.temporal.link_queries=false &
variant nolink train.epochs=8 model.temporal.link_queries=false &
variant clip4 train.epochs=8 data.clip_len=4 &
wait
for f in "$OUT"/*.jsonl; do
  echo "== $f"
  $PY -c "
import json, sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if 'time_s' in d:
        print(d['epoch'], d['time_s'], *(f'{k[4:]}={v:.3f}' for k, v in d.items() if k.startswith('val_J&F')))" "$f"
done
echo "== done in $(( $(date +%s) - START ))s"
