#!/usr/bin/env bash
# One prepared run for a session that is lent a GPU (the device tool's `run`,
# ~10 minutes): build with CUDA, run the GPU tests, then the measurements the
# open issues ask for.  Everything is logged under $OUT (the device tool
# brings that folder back); summary.txt has the tail of each step.
#
#     bash benchmarks/gpu_session.sh gpu    # build, GPU tests, issue 9's tables   (< 10 min)
#     bash benchmarks/gpu_session.sh cpu    # build, issue 10's 16-core tables      (< 10 min)
#     bash benchmarks/gpu_session.sh tc     # build, tensor-core tests, sanitizer, issue 12's tables (< 10 min)
#
# (one device `run` call each: a call may last 10 minutes).  OUT defaults to
# ./gpu_out.  Each step has its own time limit, so one slow step cannot eat
# the session.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$repo/gpu_out}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run it from outside the source tree, log it, keep its tail
  local name=$1 limit=$2
  shift 2
  echo "== $name" | tee -a "$summary"
  local t0=$SECONDS
  (cd "$OUT" && timeout "$limit" "$@") > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log" >> "$summary"
  echo "-- $name: exit $rc, $((SECONDS - t0)) s" | tee -a "$summary"
}

part="${1:-gpu}"
step build 90 bash -c "cd '$repo' && WHYGPU_CUDA=ON python -m pip install --no-build-isolation --no-deps ."
step info 20 python -m whygpu info
if [ "$part" = gpu ]; then
  step gpu_tests 180 python -m pytest -p no:cacheprovider -m cuda -q -rs "$repo/tests/test_cuda.py" \
    "$repo/tests/test_nn_cuda.py" "$repo/tests/test_interrupt.py"
  # issue 9: the training step against PyTorch (strict fp32) and the CPU; SGEMM against cuBLAS
  step step_table 150 python "$repo/benchmarks/gpu_step_table.py" --batches 32 256 1024 8192 --rounds 3
  step sgemm 60 python -m whygpu ladder --kernels cuda_warptile --gpu-sizes 1024,2048,4095,4096,8192 \
    --repeats 5 --out "$OUT/ladder"
  step mlp_shapes 50 python -m pytest -p no:cacheprovider -s -q "$repo/benchmarks/test_bench_cuda_mlp_shapes.py"
elif [ "$part" = tc ]; then
  # issue 12: rungs 15-16 first checked (every tensor-core test, incl. cuda_wgmma's on a Hopper GPU) ...
  step tc_tests 200 python -m pytest -p no:cacheprovider -m cuda -q -rs -x "$repo/tests/test_cuda_tensor_cores.py" \
    "$repo/tests/test_nn_cuda.py" -k "tensor or mixed or precision or rung or wgmma or matmul or hypothesis"
  step sanitizer 90 compute-sanitizer --tool memcheck --error-exitcode 1 python -c "
import numpy as np, whygpu
rng = np.random.default_rng(0)
for k in ('cuda_mma', 'cuda_mma_bf16', 'cuda_wgmma'):
    for m, n, kk in ((1, 1, 1), (129, 257, 17), (300, 130, 333)):
        a, b = rng.standard_normal((m, kk), np.float32), rng.standard_normal((kk, n), np.float32)
        try:
            c = whygpu.matmul(a, b, kernel=k)
        except whygpu.KernelUnavailableError as e:
            print(e); break
        print(k, m, n, kk, float(np.abs(c - a.astype(np.float64) @ b).max()))
"
  # ... then measured: GFLOP/s against cuBLAS at 4096 and 8192, errors, bf16 training
  step tc_table 240 python "$repo/benchmarks/tensor_core_table.py" --sizes 4096 8192 --batches 1024 8192
else
  # issue 10: the openmp rung against OpenBLAS, and the non-matmul part of a step, at every thread count
  step blas 300 python "$repo/benchmarks/openmp_vs_blas.py" --threads 1 2 4 8 16 --rounds 2
  step overhead 150 python "$repo/benchmarks/step_overhead.py" --threads 1 2 4 8 16 --rounds 3
fi
echo "logs in $OUT" | tee -a "$summary"
