#!/usr/bin/env bash
# Quantization on the GPU (issue 14), one call of about 10 minutes, from the repo root after
# gpu_bench.sh's setup (editable install, PYTHONPATH=/tmp/isite):
#   bash benchmarks/gpu_bench.sh quant      (or: bash benchmarks/quant_bench.sh)
# 1. GPU tests of the quantized kernels (w4a16, FP8 KV cache, FP8 _scaled_mm linear)
# 2. per-layer relative error + kernel times on the 8B shapes
# 3. bf16 vs fp8+fp8-KV vs int4-awq: bench latency (8B, batch 1) and throughput 128/128 x1000
# Results: $OUT/quant-*/ (JSON), log lines on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 INFLIGHT_NO_PROGRESS=1 INFLIGHT_LOG_LEVEL=INFO  # INFO: the KV pool size and quantization lines
B="python3 -m inflight.tools.cli bench"
echo "== GPU kernel tests (quantization)"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_w4a16.py tests/kernels/test_fp8_kv_cache.py \
    tests/kernels/test_paged_decode_attention.py tests/kernels/test_kv_cache_write.py 2>&1 | tail -4
echo "== per-layer relative error and kernel times (Llama-3.1-8B shapes)"
timeout 120 python3 benchmarks/quant_layer_error.py 2>&1 | tail -14
for q in bf16 fp8 int4-awq; do
  case $q in
    bf16) args="--dtype bfloat16" ;;
    fp8) args="--dtype bfloat16 --quantization fp8 --kv-cache-dtype fp8" ;;
    int4-awq) args="--dtype bfloat16 --quantization awq" ;;
  esac
  echo "== $q latency 8B b1 (128 in / 256 out)"
  timeout 75 $B latency --model llama-3.1-8b --isl 128 --osl 256 $args --out "$OUT/quant-$q" 2>&1 \
    | grep -E "KV cache|quantization|tok_s|ms_per|Error|error" | head -6
  echo "== $q throughput 8B 128/128 x1000"
  timeout 110 $B throughput --model llama-3.1-8b --isl 128 --osl 128 --num-requests 1000 \
    --max-batch-size 1024 --max-num-tokens 16384 $args --out "$OUT/quant-$q" 2>&1 \
    | grep -E "KV cache|quantization|tok_s|req_s|Error|error" | head -6
done
