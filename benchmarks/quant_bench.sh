#!/usr/bin/env bash
# Quantization on the GPU (issue 14), one call of about 6 minutes, from the repo root after
# gpu_bench.sh's setup (editable install, PYTHONPATH=/tmp/isite):
#   bash benchmarks/gpu_bench.sh quant      (or: bash benchmarks/quant_bench.sh)
# 1. GPU tests of the quantized kernels (fused FP8 quantization, FP8 GEMV, the FP8 dispatch
#    with CUDA-graph capture, w4a16, FP8 KV cache)                          <= 150 s
# 2. per-layer kernel times on the 8B shapes, M = 1..4096, and the M=1 GEMV config sweep
#    (benchmarks/quant_kernel_bench.py; SWEEP=0 skips the sweep)           <= 150 + 180 s
# 3. end to end, 8B dummy weights: bf16 (the in-run baseline; BASELINE=0 skips it) and
#    fp8+fp8-KV batch-1 latency and 128/128 x1000 throughput, int4-awq batch-1 latency
#                                                                 <= 2 x (75 + 110) + 75 s
# 4. optional, PERPLEXITY=1 (after the rest) or PERPLEXITY=only (alone: one device call):
#    benchmarks/quant_perplexity.py trains a ~46M Llama on the stdlib source for PPL_MINUTES
#    (default 4), then held-out perplexity bf16 / fp8 / fp8+FP8 KV / int4-awq    <= 480 s
#    (PPL_ARGS: more flags, e.g. --tiny for a CPU check of the step)
# Each step has its own timeout: a kernel that hangs or fails to compile costs its step only.
# Results: $OUT/quant-*/ (JSON), log lines on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 INFLIGHT_NO_PROGRESS=1 INFLIGHT_LOG_LEVEL=INFO  # INFO: the KV pool size and quantization lines
B="python3 -m inflight.tools.cli bench"
perplexity() {
  echo "== perplexity: small Llama trained ${PPL_MINUTES:-4} min on the stdlib, bf16 vs fp8 vs int4-awq"
  timeout 480 python3 benchmarks/quant_perplexity.py --minutes "${PPL_MINUTES:-4}" ${PPL_ARGS:-} \
      --out "$OUT/quant-ppl-ckpt" --json "$OUT/quant-perplexity.json" 2>&1 | grep -E "^#|^\||Error|Killed"
  rm -rf "$OUT/quant-ppl-ckpt" "$OUT/quant-ppl-ckpt-int4-awq"  # checkpoints: not results
}
if [ "${PERPLEXITY:-0}" = only ]; then perplexity; exit 0; fi
echo "== GPU kernel tests (quantization)"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_fp8_quant.py tests/kernels/test_fp8_gemv.py \
    tests/kernels/test_fp8_linear.py tests/kernels/test_w4a16.py tests/kernels/test_fp8_kv_cache.py \
    --tb=short 2>&1 | tee "$OUT/quant-tests.log" | grep -E "^E  |^FAILED|passed|failed" | head -60
    # (the whole log comes back in $OUT: the first GPU run's 21 failures left no reason behind)
echo "== per-layer kernel times (Llama-3.1-8B shapes)"
timeout 150 python3 benchmarks/quant_kernel_bench.py --json "$OUT/quant-kernels.json" 2>&1 | tail -40
if [ "${SWEEP:-1}" != 0 ]; then
  echo "== M=1 GEMV launch-config sweep"
  timeout 180 python3 benchmarks/quant_kernel_bench.py --m "" --sweep --json "$OUT/quant-sweep.json" 2>&1 | tail -12
fi
run() {  # name, timeout, bench args...
  local q=$1 t=$2; shift 2
  local args
  case $q in
    bf16) args="--dtype bfloat16" ;;
    fp8) args="--dtype bfloat16 --quantization fp8 --kv-cache-dtype fp8" ;;
    int4-awq) args="--dtype bfloat16 --quantization awq" ;;
  esac
  timeout "$t" $B "$@" $args --out "$OUT/quant-$q" 2>&1 \
    | grep -E "KV cache|quantization|Triton kernel|tok_s|req_s|ms_per|Error|error" | head -8
}
if [ "${BASELINE:-1}" != 0 ]; then  # issue 14 wants bf16 in the same run (BASELINE=0 skips)
  echo "== bf16 latency 8B b1 (128 in / 256 out), the in-run baseline"
  run bf16 75 latency --model llama-3.1-8b --isl 128 --osl 256
  echo "== bf16 throughput 8B 128/128 x1000, the in-run baseline"
  run bf16 110 throughput --model llama-3.1-8b --isl 128 --osl 128 --num-requests 1000 \
      --max-batch-size 1024 --max-num-tokens 16384
fi
echo "== fp8 latency 8B b1 (128 in / 256 out)"
run fp8 75 latency --model llama-3.1-8b --isl 128 --osl 256
echo "== fp8 throughput 8B 128/128 x1000"
run fp8 110 throughput --model llama-3.1-8b --isl 128 --osl 128 --num-requests 1000 \
    --max-batch-size 1024 --max-num-tokens 16384
echo "== int4-awq latency 8B b1 (128 in / 256 out)"
run int4-awq 75 latency --model llama-3.1-8b --isl 128 --osl 256
if [ "${PERPLEXITY:-0}" = 1 ]; then perplexity; fi
