#!/usr/bin/env bash
# The CPU ratio table of docs/performance.md (issue 13): the same workload through the offline
# engine, the `llm` model and the `ensemble` through a real tritonserver, tiny Llama.
#   bash benchmarks/cpu_ratio.sh [OUT]          # OUT default bench-results/cpu-ratio
# Env: N (requests, 300), ISL (32), OSL (64), SET (extra `--set k=v` for both repositories,
# e.g. SET="engine_process=off" for the in-thread engine), RATES (optional load curve on llm).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-results/cpu-ratio}
N=${N:-300}; ISL=${ISL:-32}; OSL=${OSL:-64}
mkdir -p "$OUT"
export INFLIGHT_NO_PROGRESS=1
TINY=$(python -c "from inflight.testing.tiny import tiny_model_dir; print(tiny_model_dir('llama'))")
REPO=$(mktemp -d /tmp/cpu-ratio-repo.XXXX); LLMREPO=$(mktemp -d /tmp/cpu-ratio-llm.XXXX)
sets=(--set max_seq_len=512 --set max_batch_size=256 --set max_num_tokens=8192)
for kv in ${SET:-}; do sets+=(--set "$kv"); done
inflight repo build --model tiny:llama --out "$REPO" --layout ensemble --force "${sets[@]}" >/dev/null
inflight repo build --model tiny:llama --out "$LLMREPO" --layout llm --force "${sets[@]}" >/dev/null
cp -r "$LLMREPO/llm" "$REPO/llm"; rm -rf "$LLMREPO"
echo "== offline"
inflight bench throughput --model tiny:llama --num-requests "$N" --isl "$ISL" --osl "$OSL" \
    --max-seq-len 512 --out "$OUT" 2>&1 | grep -E "req_s|output_tok_s" | head -2
PORT=$((18000 + RANDOM % 2000))
inflight serve "$REPO" --http-port $((PORT + 1)) --grpc-port "$PORT" --metrics-port $((PORT + 2)) \
    > "$OUT/tritonserver.log" 2>&1 &
SERVER=$!
for i in $(seq 1 180); do curl -sf localhost:$((PORT + 1))/v2/health/ready >/dev/null && break; sleep 1; done
echo "server ready after ${i}s"
for m in llm ensemble llm ensemble; do
  echo "== $m"
  inflight bench serve --url localhost:$PORT --served-model "$m" --dataset fixed --num-requests "$N" \
      --isl "$ISL" --osl "$OSL" --tokenizer "$TINY" --out "$OUT/$m" 2>&1 | grep -E '"(req_s|output_tok_s|errors)"' | tr -d '\n'; echo
done
if [ -n "${RATES:-}" ]; then
  inflight bench serve --url localhost:$PORT --served-model llm --dataset fixed --num-requests "$N" \
      --isl "$ISL" --osl "$OSL" --tokenizer "$TINY" --request-rate "$RATES" --out "$OUT/curve" 2>&1 | tail -12
fi
kill -INT $SERVER; wait $SERVER
rm -rf "$REPO"
