#!/usr/bin/env bash
# GPU validation in one run: build, info, CUDA tests, host-sync and CUDA-graph checks,
# compute-sanitizer, GPU benchmarks. Every step has a time limit and the whole run a deadline, so
# it fits a short GPU lease. Logs go to $LOG (default: gpu_check_out/); results.json and a tarball
# of the logs are refreshed in $OUT after every step (when OUT is set), so a run cut short still
# returns what it did.
#
#   benchmarks/gpu_check.sh                      # all steps
#   STEPS="build tests sync" benchmarks/gpu_check.sh
#   DEADLINE=420 benchmarks/gpu_check.sh         # seconds for the whole run (default 450)
#
# Uses the machine's python3 and its torch (nothing is downloaded). Missing Python packages are
# installed from wheels in .whl/ if that folder exists; a library prebuilt for this python + torch
# in .gpu_prebuilt/ skips the build step (both made on a CPU machine by benchmarks/gpu_prepare.sh).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${LOG:-$ROOT/gpu_check_out}
mkdir -p "$LOG"
STEPS=${STEPS:-"build info memcheck racecheck initcheck tests sync bench_rle bench_mask_loss bench_msda ncu bench_model"}
DEADLINE=${DEADLINE:-450}
START=$(date +%s)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" SSRVG_REQUIRE_EXT=1
STATUS="$LOG/steps.tsv"
: > "$STATUS"

# results.json from the logs so far (python below), and the logs as one tarball, into $OUT.
collect() {
  $PY benchmarks/gpu_check_summary.py "$LOG" > /dev/null 2>&1
  if [ -n "${OUT:-}" ]; then
    local tmp="$OUT/tmp.$BASHPID"  # written then renamed: the background steps collect too
    cp "$LOG/results.json" "$tmp.json" 2>/dev/null && mv -f "$tmp.json" "$OUT/results.json"
    tar czf "$tmp.tgz" -C "$LOG" . 2>/dev/null && mv -f "$tmp.tgz" "$OUT/logs.tar.gz"
  fi
}

left() { echo $((DEADLINE - ($(date +%s) - START))); }

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with the smaller of LIMIT and the time left,
# logs to $OUT/NAME.log, records "NAME rc seconds" in steps.tsv.
step() {
  local name=$1 limit=$2
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  local rest
  rest=$(left)
  if [ "$rest" -lt 15 ]; then
    printf '%s\tskipped\t0\n' "$name" >> "$STATUS"
    echo "== $name: skipped (deadline)"
    return 0
  fi
  [ "$limit" -gt "$rest" ] && limit=$rest
  echo "== $name (limit ${limit}s)"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$STATUS"
  echo "   rc=$rc after ${dt}s; last lines:"
  tail -n 4 "$LOG/$name.log" | sed 's/^/   | /'
  collect
}

echo "== machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc; $PY --version
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  which nvcc compute-sanitizer ncu; nvcc --version | tail -2; } > "$LOG/machine.log" 2>&1
cat "$LOG/machine.log"

# Python packages this machine lacks, from carried wheels (never from the network).
if [ -d .whl ] && ! $PY -c "import pycocotools" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/ssrvg_site .whl/*.whl > "$LOG/wheels.log" 2>&1
  export PYTHONPATH="$PYTHONPATH:/tmp/ssrvg_site"
fi

# Build: skipped when a prebuilt library for this python + torch loads (benchmarks/gpu_prepare.sh).
SUFFIX=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
if [ -f ".gpu_prebuilt/_C$SUFFIX" ]; then
  cp ".gpu_prebuilt/_C$SUFFIX" .gpu_prebuilt/_build_info.json ssrvg_ext/
fi
if $PY -c "import ssrvg_ext.extension as e, sys; sys.exit(0 if e.AVAILABLE and e.has_kernel('ms_deform_attn', 'cuda') else 1)" 2>/dev/null; then
  echo "== build: a prebuilt CUDA library loads; not rebuilding"
  printf 'build\tprebuilt\t0\n' >> "$STATUS"
else
  step build 300 env MAX_JOBS="$(nproc)" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" FORCE_CUDA=1 \
    $PY setup.py build_ext --inplace
fi
step info 60 $PY -m ssrvg_ext.info

# compute-sanitizer over a driver that calls every kernel once: memcheck (no caching allocator, so
# each tensor is its own allocation), racecheck (our kernels only) and initcheck on the smallest
# inputs. It runs in the background beside the tests and the sync checks (nothing timed), and the
# benchmarks wait for it.
SAN="compute-sanitizer --error-exitcode 99 --print-limit 100"
KFILTER="--kernel-name kns=ssrvg"
compute-sanitizer --help 2>/dev/null | grep -q -- "--kernel-name" || KFILTER="--filter kns=ssrvg"
sanitizers() {
  step memcheck 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SAN --tool memcheck --leak-check no \
    $PY benchmarks/gpu_kernels_once.py
  step racecheck 80 $SAN --tool racecheck $KFILTER $PY benchmarks/gpu_kernels_once.py --tiny
  # initcheck sees every kernel: a filter would hide the writes of torch's own kernels (cumsum,
  # fill) and report their outputs as uninitialised when ours read them.
  step initcheck 80 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 $SAN --tool initcheck \
    $PY benchmarks/gpu_kernels_once.py --tiny
}
sanitizers > "$LOG/sanitizers.out" 2>&1 &
SAN_PID=$!

# CUDA tests: every op's test file (CPU-vs-CUDA agreement, dtypes, determinism, opcheck) and the
# first-run device cases.
step tests 200 $PY -m pytest -q -p no:cacheprovider python_tests/test_devices.py python_tests/test_ms_deform_attn.py \
  python_tests/test_mask_loss.py python_tests/test_rle.py python_tests/test_extension.py \
  python_tests/test_engine.py::test_mask_stats_batch_equals_per_expression_stats -rs --junitxml="$LOG/tests.xml"
step sync 120 $PY benchmarks/gpu_sync_graph.py --json "$LOG/sync_graph.json"

wait $SAN_PID
cat "$LOG/sanitizers.out"

# Benchmarks, alone on the GPU; each prints ratios against a baseline timed in the same run.
step bench_rle 90 $PY benchmarks/bench_rle.py --n 1000 100 --repeat 5 --json "$LOG/bench_rle.json"
step bench_mask_loss 120 $PY benchmarks/bench_mask_loss.py --device cuda --repeat 10 --profile --json "$LOG/bench_mask_loss.json"
step bench_msda 150 $PY benchmarks/bench_ms_deform_attn.py --device cuda --repeat 10 --compile-cases enc512 \
  --json "$LOG/bench_msda.json"
# Nsight Compute on our kernels in the benchmark cases (speed-of-light: the fraction of the memory
# and compute peaks each kernel reaches).
step ncu 90 ncu --clock-control none --kernel-name-base demangled --kernel-name regex:ssrvg --section SpeedOfLight --section LaunchStats \
  $PY benchmarks/gpu_profile_case.py
step bench_model 150 $PY benchmarks/bench_gpu_model.py --batch 8 --rounds 4 --steps 3 --json "$LOG/bench_model.json"

collect
$PY benchmarks/gpu_check_summary.py "$LOG"
echo "== done in $(( $(date +%s) - START ))s; logs in $LOG"
