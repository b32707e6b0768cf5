#!/bin/sh
# CUDA compiler launcher (CUDA_COMPILER_LAUNCHER) for bertrt._cuda: runs the nvcc command given after
# LOGDIR and keeps its ptxas report (-Xptxas -v) in LOGDIR/<object name>.ptxas.log, where
# tests/test_cuda_build.py reads the per-kernel spill counts. ptxas' "info" lines are kept out of the
# build output; warnings and errors still reach it.
logdir=$1
shift
out=unnamed
prev=
for arg in "$@"; do
  if [ "$prev" = "-o" ]; then out=$arg; fi
  prev=$arg
done
mkdir -p "$logdir"
log="$logdir/$(basename "$out").ptxas.log"
"$@" > "$log.tmp" 2>&1
rc=$?
grep -v -e '^ptxas info' -e '^    [0-9]* bytes stack frame' "$log.tmp" >&2
mv "$log.tmp" "$log"
exit $rc
