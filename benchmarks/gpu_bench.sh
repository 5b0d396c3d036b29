#!/usr/bin/env bash
# Runs on the GPU machine (H100/H200), from the repo root, with the wheels prepared by
# ../shared/tools/device-wheels.sh in .whl/ (tritonclient, python-rapidjson, tritonserver).
#   bash benchmarks/gpu_bench.sh test      # kernel + engine parity tests on the GPU
#   bash benchmarks/gpu_bench.sh latency     # batch-1 latency, 8B (+ HF baseline) and 1B shapes
#   bash benchmarks/gpu_bench.sh throughput  # offline throughput benchmarks (+ HF baseline)
#   bash benchmarks/gpu_bench.sh serve     # tritonserver ensemble benchmark vs the offline engine
#   bash benchmarks/gpu_bench.sh profile   # torch.profiler of decode steps (8B b1/b256, 1B b1)
#   bash benchmarks/gpu_bench.sh reuse     # TTFT of a repeated 4k prompt with prefix reuse
#   bash benchmarks/gpu_bench.sh quant     # issue 14: quantized kernel tests, per-layer error, bf16 vs
#                                          # fp8+fp8-KV vs int4-awq latency b1 and throughput 128/128 (quant_bench.sh)
#   bash benchmarks/gpu_bench.sh fp8-tc    # issue 14: the tensor-core FP8 decode kernel: tests, per-layer
#                                          # times, config sweep, b1 decode per INFLIGHT_FP8_DECODE_KERNEL
#   bash benchmarks/gpu_bench.sh fp8-attn  # issue 14: FP8-KV attention, INFLIGHT_FP8_KV_DOTS (DOTS, default bf16 fp16-pairs):
#                                          # tests, batch-256 profile, 1000/1000
#   bash benchmarks/gpu_bench.sh attn-sweep  # issue 14: decode attention launch configs per cache (bf16, e4m3
#                                          # with bf16 dots / fp16 pairs; decode_attention_sweep.py), the
#                                          # attention GPU tests, batch-256 decode profiles (bf16 and FP8 KV)
#   bash benchmarks/gpu_bench.sh quant-e2e # issue 14: 2048/128 and 1000/1000, bf16 vs FP8 + FP8 KV, and a
#                                          # batch-256 decode profile each way
#   bash benchmarks/gpu_bench.sh serve13-prep  # device call 1 of the serving modes (carry .whl): server bundle
#                                          # and every wheel of .whl (pyzmq, msgspec, py-spy, the OpenAI stack), build
#   bash benchmarks/gpu_bench.sh serve13   # issue 13, device call 2 (carry .whl2), right after: offline engine,
#                                          # llm and ensemble through tritonserver (1000 ShareGPT-like, batch 256),
#                                          # load curve 2..inf req/s, py-spy of stub + engine process; summary
#                                          # (SET="engine_process=off" for the in-stub engine thread;
#                                          # LAYOUTS=llm: the llm layout only)
#   bash benchmarks/gpu_bench.sh graphs    # issue 13: mixed-step CUDA graphs, GPU test + b1 TTFT A/B
#                                          # (served: SET="cuda_graph_max_tokens=512" ... serve13)
#   bash benchmarks/gpu_bench.sh openai    # issue 16, after serve13-prep (carry .whl), carry .whl2: llm layout
#                                          # over gRPC vs through the OpenAI front end, same server
#                                          # (OPENAI_WORKERS=4: the front end's worker processes)
#   bash benchmarks/gpu_bench.sh overlap-ab # issue 13: 8B b1 latency, overlap_min_running 0 / 8 alternating
#   bash benchmarks/gpu_bench.sh quant-targets # issue 14: FP8 + FP8 KV b1, 128/128, 2048/128, bf16 beside
#   bash benchmarks/gpu_bench.sh tp-test   # issue 15 (kind nvidia-h200-x2): the TP=2 GPU tests (NCCL and
#                                          # symmetric-memory all-reduce, CUDA graphs, bf16 logits vs TP=1),
#                                          # all-reduce latency (benchmarks/allreduce_bench.py)
#   bash benchmarks/gpu_bench.sh tp        # issue 15: 8B batch-1 latency at TP=1 (GPU 0), TP=2 nccl, TP=2 symm;
#                                          # 128/128 x1000 at TP=2 nccl and symm (TP_THROUGHPUT, TP_LATENCY: pairs);
#   bash benchmarks/gpu_bench.sh tp70      # issue 15: the Llama-3.1-70B shape at TP=2 (b1, 128/128)
#   bash benchmarks/gpu_bench.sh tp-debug  # issue 15: a hanging TP test, py-spy of every process after 45 s
#   bash benchmarks/gpu_bench.sh tp-serve  # issue 15, after serve13-prep (carry .whl2): offline TP=2 vs the
#                                          # llm model at TP=2 through tritonserver, 1000 ShareGPT-like
#   bash benchmarks/gpu_bench.sh ab OLD.tar [build|latency|throughput|scheduler]
#                                          # this tree vs an older one (git archive COMMIT > OLD.tar),
#                                          # same machine, alternating old/new; both built as wheels
# Results (JSON, PNG, logs) go to $OUT (default bench-results/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 INFLIGHT_NO_PROGRESS=1
if [ "${1:-}" = ab ]; then  # A/B of two trees: own wheels, own site dirs, no editable install
  OLD=${2:?usage: gpu_bench.sh ab OLD.tar [build|latency|throughput|scheduler]}
  WHAT=${3:-all}
  if [ ! -d /tmp/isite/pytriton ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/isite .whl/tritonclient-*.whl .whl/python_rapidjson-*.whl
  fi
  [ -d /tmp/ab-old-src ] || { mkdir -p /tmp/ab-old-src && tar xf "$OLD" -C /tmp/ab-old-src; }
  for side in old new; do
    src=$([ $side = old ] && echo /tmp/ab-old-src || pwd)
    if [ ! -d /tmp/ab-$side/inflight ]; then
      python3 -m pip wheel -q --no-deps --no-build-isolation -w /tmp/ab-wheel-$side "$src" 2>&1 | tail -3
      python3 -m pip install -q --no-deps --no-compile --target /tmp/ab-$side /tmp/ab-wheel-$side/inflight-*.whl
    fi
  done
  # the CLI module moved in issue 11's package rooms: find it per side
  cli() { if [ -f /tmp/ab-$1/inflight/tools/cli.py ]; then echo inflight.tools.cli; else echo inflight.cli; fi; }
  sbench() { if [ -d /tmp/ab-$1/inflight/tools/bench ]; then echo inflight.tools.bench.scheduler_bench; else echo inflight.bench.scheduler_bench; fi; }
  side() { local s=$1; shift; PYTHONPATH=/tmp/ab-$s:/tmp/isite python3 "$@"; }
  for s in old new; do side $s -c "import inflight, inflight._core; print('$s', inflight.__file__)"; done
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  [ "$WHAT" = build ] && exit 0
  order="old new"; [ "$WHAT" = scheduler ] && order="old new old new"
  for s in $order; do  # alternating
    case $WHAT in all|latency)
      echo "== $s latency 8B b1"; side $s -m $(cli $s) bench latency --model llama-3.1-8b --isl 128 --osl 256 --out "$OUT/ab-$s" 2>&1 | tail -3 ;; esac
    case $WHAT in all|throughput)
      echo "== $s throughput 8B 128/128 x1000"
      side $s -m $(cli $s) bench throughput --model llama-3.1-8b --isl 128 --osl 128 --num-requests 1000 --max-batch-size 1024 --max-num-tokens 16384 --out "$OUT/ab-$s" 2>&1 | tail -3 ;; esac
    case $WHAT in all|scheduler)
      echo "== $s scheduler bench"; side $s -m $(sbench $s) --scenarios decode256,mixed256 --steps 200 2>&1 | tail -2 ;; esac
  done
  exit 0
fi
if [ ! -d /tmp/isite/pytriton ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/isite .whl/tritonclient-*.whl .whl/python_rapidjson-*.whl
  tar xJf .whl/tritonserver-py312.tar.xz -C /tmp/isite
fi
export PYTHONPATH=/tmp/isite
# the engine's IPC (pyzmq, msgspec: engine process, tensor-parallel ranks) on a fresh machine
if ! python3 -c "import zmq, msgspec" 2>/dev/null && ls .whl/pyzmq-*.whl .whl/msgspec-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/isite .whl/pyzmq-*.whl \
      .whl/msgspec-*.whl 2>&1 | grep -v "^WARNING" | tail -2
fi
python3 -c "import inflight._core" 2>/dev/null || python3 -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
B="python3 -m inflight.tools.cli bench"
case "${1:-all}" in
  quant)
    bash benchmarks/quant_bench.sh
    ;;
  fp8-tc)  # issue 14: the tensor-core FP8 decode kernel (kernels/fp8_skinny_mm.py): GPU tests,
    # per-layer times at M = 1, 4, 16, its launch-config sweep, then FP8 batch-1 decode end to
    # end with each INFLIGHT_FP8_DECODE_KERNEL (and bf16, the in-run baseline); < 10 min
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_fp8_skinny_mm.py \
        tests/kernels/test_fp8_linear.py tests/kernels/test_fp8_gemv.py --tb=short 2>&1 \
        | tee "$OUT/tc-tests.log" | grep -E "^E  |^FAILED|passed|failed" | head -30
    timeout 100 python3 benchmarks/quant_kernel_bench.py --m 1,4,16 --json "$OUT/tc-kernels.json" 2>&1 | tail -13
    timeout 220 python3 benchmarks/quant_kernel_bench.py --m "" --sweep-skinny --json "$OUT/tc-sweep.json" 2>&1 | tail -16
    L=(latency --model llama-3.1-8b --isl 128 --osl 256 --dtype bfloat16)
    echo "== bf16 b1 latency"
    timeout 60 $B "${L[@]}" --out "$OUT/tc-bf16" 2>&1 | grep -E "tok_s|ms_per|rror" | head -4
    for kern in ${KERNELS:-gemv tc-w8a16 tc-w8a8}; do
      echo "== fp8 + fp8 KV b1 latency, INFLIGHT_FP8_DECODE_KERNEL=$kern"
      INFLIGHT_FP8_DECODE_KERNEL=$kern timeout 60 $B "${L[@]}" --quantization fp8 --kv-cache-dtype fp8 \
          --out "$OUT/tc-$kern" 2>&1 | grep -E "tok_s|ms_per|rror|Triton kernel" | head -4
    done
    ;;
  fp8-attn)  # issue 14: attention over the FP8 KV cache, the INFLIGHT_FP8_KV_DOTS choices in
    # DOTS: GPU tests, the batch-256 decode profile and 1000/1000 each way, bf16-cache
    # 1000/1000 as the in-run baseline; < 9 min for three choices
    # (DOTS: the choices to run; ATTN_QUICK=1: only their 1000/1000, no tests, profiles, baseline)
    DOTS=${DOTS:-bf16 fp16-pairs}
    [ "${ATTN_QUICK:-0}" = 1 ] || timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_fp8_kv_cache.py \
        tests/kernels/test_triton_backend.py tests/kernels/test_paged_decode_attention.py \
        tests/kernels/test_paged_prefill_attention.py --tb=short 2>&1 | tee "$OUT/attn-tests.log" \
        | grep -E "^E  |^FAILED|passed|failed" | head -20
    F=(--model llama-3.1-8b --dtype bfloat16 --quantization fp8 --kv-cache-dtype fp8)
    for dots in $DOTS; do
      [ "${ATTN_QUICK:-0}" = 1 ] && break
      echo "== FP8 KV, $dots dots: batch-256 decode profile"
      INFLIGHT_FP8_KV_DOTS=$dots timeout 60 $B profile "${F[@]}" --batch 256 --out "$OUT/attn-$dots" 2>&1 \
          | grep -E "^profile:|rror" | head -3
    done
    for dots in $DOTS; do
      echo "== FP8 + FP8 KV 1000/1000 x384, $dots dots"
      INFLIGHT_FP8_KV_DOTS=$dots timeout 100 $B throughput "${F[@]}" --max-num-tokens 16384 --isl 1000 --osl 1000 \
          --num-requests 384 --max-batch-size 512 --out "$OUT/attn-$dots" 2>&1 | grep -E "output_tok_s|rror"
    done
    [ "${ATTN_QUICK:-0}" = 1 ] && exit 0
    echo "== bf16 1000/1000 x384 (in-run baseline)"
    timeout 100 $B throughput --model llama-3.1-8b --dtype bfloat16 --max-num-tokens 16384 --isl 1000 --osl 1000 \
        --num-requests 384 --max-batch-size 512 --out "$OUT/attn-bf16cache" 2>&1 | grep -E "output_tok_s|rror"
    ;;
  attn-sweep)  # issue 14: the decode attention kernel's launch configs per cache dtype, then the
    # attention GPU tests and a batch-256 decode profile per cache (the kernel's share of a step); < 8 min
    timeout 300 python3 benchmarks/decode_attention_sweep.py --variants ${VARIANTS:-bf16,fp8,fp8-fp16-pairs} \
        --json "$OUT/attn-sweep.json" 2>&1 | tee "$OUT/attn-sweep.log" | grep -v "^  (" | head -60
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_paged_decode_attention.py \
        tests/kernels/test_paged_prefill_attention.py tests/kernels/test_fp8_kv_cache.py --tb=short 2>&1 \
        | tee "$OUT/attn-tests.log" | grep -E "^E  |^FAILED|passed|failed" | head -20
    for q in bf16 fp8; do
      a=(--dtype bfloat16); [ $q = fp8 ] && a+=(--quantization fp8 --kv-cache-dtype fp8)
      echo "== $q profile, batch 256"
      timeout 60 $B profile --model llama-3.1-8b --batch 256 "${a[@]}" --out "$OUT/prof-$q" 2>&1 \
          | grep -E "^profile:|rror" | head -4
    done
    ;;
  quant-e2e)  # issue 14's other workloads, bf16 and FP8 + FP8 KV alternating, then a profile
    # of one decode step at batch 256 each way (where the FP8 step's time goes); < 10 min
    T=(--model llama-3.1-8b --max-num-tokens 16384)
    for q in bf16 fp8; do
      a=(--dtype bfloat16); [ $q = fp8 ] && a+=(--quantization fp8 --kv-cache-dtype fp8)
      echo "== $q 2048/128 x200"
      timeout 100 $B throughput "${T[@]}" --isl 2048 --osl 128 --num-requests 200 "${a[@]}" --out "$OUT/q-$q" 2>&1 | tail -1
      echo "== $q 1000/1000 x384"
      timeout 150 $B throughput "${T[@]}" --isl 1000 --osl 1000 --num-requests 384 --max-batch-size 512 "${a[@]}" --out "$OUT/q-$q" 2>&1 | tail -1
    done
    for q in bf16 fp8; do
      a=(--dtype bfloat16); [ $q = fp8 ] && a+=(--quantization fp8 --kv-cache-dtype fp8)
      echo "== $q profile, batch 256"
      timeout 60 $B profile --model llama-3.1-8b --batch 256 "${a[@]}" --out "$OUT/q-$q" 2>&1 | tail -25
    done
    ;;
  tp-test|tp-debug|tp|tp70|tp-serve)  # issue 15: never enable NVLink multicast on the shared machines
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    nvidia-smi topo -m | head -4
    if [ "$1" = tp-debug ]; then  # a hanging TP test: py-spy every process after 45 s
      (timeout 100 python3 -m pytest -x -q -p no:cacheprovider -s "tests/kernels/test_gpu_tensor_parallel.py::test_tiny_tp2_equals_tp1[llama]" > "$OUT/tp-debug.log" 2>&1 &)
      sleep 45
      for pid in $(pgrep -f "python3"); do echo "=== $pid $(tr '\0' ' ' < /proc/$pid/cmdline | cut -c1-150)"; timeout 20 /tmp/isite/bin/py-spy dump --pid $pid 2>&1 | head -60; done > "$OUT/tp-debug-stacks.txt"
      sleep 55; tail -30 "$OUT/tp-debug.log"
      timeout 60 python3 benchmarks/allreduce_bench.py --batches 1,64,2048 2>&1 | grep -v Warning | tail -20
      exit 0
    fi
    if [ "$1" = tp-test ]; then  # the TP tests on GPUs, with each all-reduce path; all-reduce latency
      for ar in ${ARS:-nccl symm}; do  # ARS: the all-reduce paths to test
        echo "== TP tests, INFLIGHT_TP_ALLREDUCE=$ar"
        INFLIGHT_TP_ALLREDUCE=$ar timeout 200 python3 -m pytest -q -p no:cacheprovider -s \
          tests/kernels/test_gpu_tensor_parallel.py 2>&1 | tee "$OUT/tp-tests-$ar.log" \
          | grep -E "TP2 vs TP1|passed|failed|Error" | tail -12
      done
      timeout 120 python3 benchmarks/allreduce_bench.py --batches 1,8,64,256,2048 2>&1 | tee "$OUT/allreduce.txt" | grep -v Warning
      exit 0
    fi
    T8="--model llama-3.1-8b --isl 128 --osl 128 --num-requests 1000 --max-batch-size 1024 --max-num-tokens 16384"
    AR=${AR:-symm}  # the all-reduce path of the TP=2 runs
    if [ "$1" = tp70 ]; then
      echo "== 70B TP=2 ($AR) batch-1 latency (140 GB bf16: TP=1 does not fit one H200)"
      INFLIGHT_TP_ALLREDUCE=$AR timeout 280 $B latency --model llama-3.1-70b --isl 128 --osl 128 --tp 2 --max-seq-len 2048 --out "$OUT/tp2-70b" 2>&1 | tail -1
      echo "== 70B TP=2 ($AR) throughput 128/128 x1000"
      INFLIGHT_TP_ALLREDUCE=$AR timeout 280 $B throughput ${T8/llama-3.1-8b/llama-3.1-70b} --max-seq-len 2048 --tp 2 --out "$OUT/tp2-70b" 2>&1 | tail -1
      exit 0
    fi
    if [ "$1" = tp-serve ]; then  # call 2 of 2 after serve13-prep (carry .whl2): Triton at TP=2
      [ -d /tmp/isite/pytriton ] || { echo "run 'gpu_bench.sh serve13-prep' (carry .whl) first"; exit 1; }
      source .whl2/device-serve-env.sh venv
      INFLIGHT_TP_ALLREDUCE=$AR timeout 420 python3 benchmarks/serve_ratio.py --model llama-3.1-8b --dtype bfloat16 \
          --dataset sharegpt --num-requests "${N:-1000}" --max-batch-size 256 --tp 2 --layouts llm \
          --out "$OUT/tp2-serve" 2>&1 | grep -vE "^\s*$|it/s\]|Loading weights"
      pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub; pkill -9 -x inflight-engine
      exit 0
    fi
    set -- ${TP_LATENCY:-1 nccl 2 nccl 2 symm}  # 8B batch-1 latency: (TP, all-reduce) pairs
    while [ $# -ge 2 ]; do
      gpus=$([ $1 = 1 ] && echo 0 || echo 0,1)
      echo "== 8B TP=$1 ($2) batch-1 latency"
      CUDA_VISIBLE_DEVICES=$gpus INFLIGHT_TP_ALLREDUCE=$2 timeout 150 $B latency --model llama-3.1-8b --isl 128 --osl 256 --tp $1 --out "$OUT/tp$1-$2" 2>&1 | tail -1
      shift 2
    done
    set -- ${TP_THROUGHPUT:-2 nccl 2 symm}  # 128/128 x1000: (TP, all-reduce) pairs; symm halved it once: A/B
    while [ $# -ge 2 ]; do
      gpus=$([ $1 = 1 ] && echo 0 || echo 0,1)
      echo "== 8B TP=$1 ($2) throughput 128/128 x1000"
      CUDA_VISIBLE_DEVICES=$gpus INFLIGHT_TP_ALLREDUCE=$2 timeout 200 $B throughput $T8 --tp $1 --out "$OUT/tp$1-$2" 2>&1 | tail -1
      shift 2
    done
    ;;
  overlap-ab)  # issue 13: batch-1 latency with overlapped steps always (overlap_min_running=0) and
    # only from 8 running sequences on (8: a lone request runs synchronous steps), alternating; < 3 min
    for m in 0 8 0 8; do
      echo "== 8B b1 latency, overlap_min_running=$m"
      timeout 60 $B latency --model llama-3.1-8b --isl 128 --osl 256 --overlap-min-running $m \
          --out "$OUT/overlap-$m" 2>&1 | grep -E "tok_s|ttft|ms_per|rror" | head -4
    done
    ;;
  quant-targets)  # issue 14's throughput targets with the FP8 defaults of the day, bf16 beside each
    # (same commands as docs/performance.md's bf16 rows): FP8 + FP8 KV batch-1, then 128/128 x1000
    # and 2048/128 x200, FP8 then bf16; < 7 min
    F=(--dtype bfloat16 --quantization fp8 --kv-cache-dtype fp8)
    echo "== FP8 + FP8 KV b1 latency"
    timeout 60 $B latency --model llama-3.1-8b --isl 128 --osl 256 "${F[@]}" --out "$OUT/qt-fp8" 2>&1 \
        | grep -E "tok_s|ms_per|rror" | head -4
    for w in "128 128 1000 --max-batch-size 1024" "2048 128 200"; do
      set -- $w
      for q in fp8 bf16; do
        a=(--dtype bfloat16); [ $q = fp8 ] && a=("${F[@]}")
        echo "== $q $1/$2 x$3"
        timeout 100 $B throughput --model llama-3.1-8b --isl $1 --osl $2 --num-requests $3 "${@:4}" \
            --max-num-tokens 16384 "${a[@]}" --out "$OUT/qt-$q" 2>&1 | grep -E "output_tok_s|rror"
      done
    done
    ;;
  graphs)  # issue 13: CUDA graphs for steps with prompt tokens (cuda_graph_max_tokens), A/B
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_mixed_graphs.py --tb=short 2>&1 \
        | tee "$OUT/mixed-graphs-tests.log" | grep -E "^E  |^FAILED|passed|failed" | head -20
    for g in 0 512 0 512; do  # alternating: batch-1 TTFT (128-token prompt) and decode
      echo "== 8B b1 latency, cuda_graph_max_tokens=$g"
      timeout 120 $B latency --model llama-3.1-8b --isl 128 --osl 256 --cuda-graph-max-tokens $g \
          --out "$OUT/graphs-$g" 2>&1 | tail -1
    done
    ;;
  test)
    python3 -m pytest -q -p no:cacheprovider tests/kernels tests/unit/test_engine_parity.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
    ;;
  latency)
    $B latency --model llama-3.1-8b --isl 128 --osl 256 --baseline hf --out "$OUT" 2>&1 | tail -4
    $B latency --model llama-3.2-1b --isl 128 --osl 256 --out "$OUT" 2>&1 | tail -4
    ;;
  profile)
    $B profile --model llama-3.1-8b --batch 1 --trace --out "$OUT" 2>&1 | tail -45
    $B profile --model llama-3.1-8b --batch 1 --overlap-scheduler off --out "$OUT/overlap-off" 2>&1 | grep -E "wall_ms|gpu_busy|decode_tok"
    $B profile --model llama-3.1-8b --batch 256 --out "$OUT" 2>&1 | tail -45
    $B profile --model llama-3.2-1b --batch 1 --out "$OUT" 2>&1 | grep -E "wall_ms|gpu_busy|decode_tok"
    ;;
  reuse)
    $B reuse --model llama-3.1-8b --prompt-len 4096 --max-seq-len 8192 --out "$OUT" 2>&1 | tail -14
    ;;
  throughput)
    N=${SCALE:-1}
    timeout 200 $B throughput --model llama-3.1-8b --isl 128 --osl 128 --num-requests $((1000 * N)) --max-batch-size 1024 --max-num-tokens 16384 --baseline hf --hf-requests 128 --out "$OUT" 2>&1 | tail -4
    timeout 120 $B throughput --model llama-3.1-8b --isl 2048 --osl 128 --num-requests $((200 * N)) --max-num-tokens 16384 --out "$OUT" 2>&1 | tail -4
    timeout 200 $B throughput --model llama-3.1-8b --isl 1000 --osl 1000 --num-requests $((384 * N)) --max-batch-size 512 --max-num-tokens 16384 --out "$OUT" 2>&1 | tail -4
    ;;
  openai)  # issue 16: the same llm server over gRPC and through the OpenAI front end, alternating
    [ -x /tmp/isite/bin/py-spy ] && python3 -c "import sys; sys.path.insert(0, '/tmp/isite'); import uvicorn" 2>/dev/null \
      || { echo "run 'gpu_bench.sh serve13-prep' (carry .whl) first, back to back"; exit 1; }
    pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub; sleep 1
    source .whl2/device-serve-env.sh venv   # the stub's numpy-1.26 venv (it adds /tmp/isite)
    python3 -c "
import shutil
from inflight.tools.bench.cli import resolve_bench_model
from inflight.tools.repo import build
model, tok, _ = resolve_bench_model('llama-3.1-8b')
shutil.rmtree('/tmp/serve-llm', ignore_errors=True)
build(model, '/tmp/serve-llm', 'llm', {'load_format': 'dummy', 'dtype': 'bfloat16', 'max_seq_len': '4096',
      'max_batch_size': '256', 'stream_interval': '1', 'tokenizer_dir': tok}, force=True)
print('repo ready', flush=True)"
    python3 -m inflight.tools.cli serve /tmp/serve-llm --http-port 8000 --grpc-port 8001 --metrics-port 8002 \
        --openai-port 9000 --openai-workers ${OPENAI_WORKERS:-4} > /tmp/tritonserver.log 2>&1 &
    SERVER=$!
    for i in $(seq 1 300); do curl -sf localhost:9000/health >/dev/null && break; kill -0 $SERVER 2>/dev/null || break; sleep 1; done
    if curl -sf localhost:9000/health >/dev/null; then echo "server + openai front end ready after ${i}s"
    else echo "NOT ready after ${i}s"; tail -40 /tmp/tritonserver.log; exit 1; fi
    for ep in grpc openai grpc openai; do
      url=localhost:8001; [ $ep = openai ] && url=localhost:9000
      echo "== $ep"
      timeout 240 $B serve --endpoint $ep --url $url --served-model llm --dataset sharegpt --num-requests 1000 \
          --out "$OUT/openai-$ep" 2>&1 | grep -E '^serve:|failed|"(errors|wall_s|req_s|output_tok_s|chunks|client_cpu_s)"'
    done
    # CPU time of the front end's parent and workers over the whole run (client_cpu_s above is
    # each load generator's own CPU: near wall_s would mean the generator was the bottleneck)
    ps -eo pid,ppid,time,args | grep -E "frontends.openai|spawn_main" | grep -v grep | cut -c1-110
    kill -INT $SERVER; sleep 5
    pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub
    ;;
  serve13-prep)  # issue 13, call 1 of 2 (carry .whl): tritonserver bundle, pyzmq, msgspec, py-spy, build
    # every wheel of .whl: pyzmq, msgspec, py-spy, and the OpenAI front end's stack (fastapi,
    # uvicorn, pydantic, httptools, ...: the `openai` mode's server and load generator need them)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/isite \
        $(ls .whl/*.whl | grep -vE "/(tritonclient|python_rapidjson)-") 2>&1 | grep -v "^WARNING" | tail -3
    PYTHONPATH=/tmp/isite python3 -c "import zmq, msgspec, uvicorn, pydantic, httptools, inflight._core; print('prep ok: pyzmq', zmq.__version__, 'msgspec', msgspec.__version__, 'uvicorn', uvicorn.__version__)"
    ls /tmp/isite/bin/py-spy
    ;;
  serve13)  # issue 13, call 2 of 2 (carry .whl2): offline vs llm vs ensemble, load curve, py-spy; < 10 min
    [ -d /tmp/isite/pytriton ] && [ -x /tmp/isite/bin/py-spy ] || { echo "run 'gpu_bench.sh serve13-prep' (carry .whl) first, back to back"; exit 1; }
    pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub; pkill -9 -x inflight-engine; sleep 1
    source .whl2/device-serve-env.sh venv   # the stub's numpy-1.26 venv (DESIGN.md, known limits)
    export PATH=/tmp/isite/bin:$PATH
    extra=(); for kv in ${SET:-}; do extra+=(--set "$kv"); done   # SET="engine_process=off": the old design
    timeout 555 python3 benchmarks/serve_ratio.py --model llama-3.1-8b --dtype bfloat16 --dataset sharegpt \
        --num-requests "${N:-1000}" --max-batch-size 256 --rates "${RATES:-2,10,20,30,40,inf}" \
        --curve-requests "${CURVE_N:-100}" --layouts "${LAYOUTS:-llm,ensemble}" --pyspy \
        --out "$OUT/serve13${SET:+-${SET//[^a-z0-9]/_}}" ${extra[@]+"${extra[@]}"} 2>&1 \
        | grep -vE "^\s*$|it/s\]|Loading weights"
    # the engine's warm-up, and any kernel it left to compile while serving (late_compiles.py)
    grep -hE "warm-up:|after warm-up|captured CUDA graphs" "$OUT"/serve13*/tritonserver-*.log | cut -c1-400 | sort | uniq -c | head -20
    pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub; pkill -9 -x inflight-engine
    ;;
  serve)
    pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub; sleep 1  # leftovers of an earlier run
    python3 - "$OUT" <<'EOF'
import json, os, sys, subprocess
from inflight.tools.bench.cli import resolve_bench_model
from inflight.tools.bench.dataset import sharegpt_like
from inflight.tools.bench.offline import make_engine, run_engine
from inflight.tools.repo import build
out = sys.argv[1]
model, tok, _ = resolve_bench_model("llama-3.1-8b")
kw = {"load_format": "dummy", "dtype": "bfloat16", "max_seq_len": "4096", "max_batch_size": "256",
      "stream_interval": os.environ.get("STREAM_INTERVAL", "1")}
repo = "/tmp/serve-repo"
import shutil; shutil.rmtree(repo, ignore_errors=True)
build(model, repo, "ensemble", {**kw, "tokenizer_dir": tok}, force=True)
print("repo ready", flush=True)
EOF
    # Needs a tritonserver whose python stub reads numpy 2 arrays (>= 2.52) when this
    # environment has numpy 2: `inflight serve` refuses the nvidia-pytriton 2.51 stub then
    # (see docs/performance.md, "The Triton serve benchmark on the GPU").
    python3 -m inflight.tools.cli serve /tmp/serve-repo --http-port 8000 --grpc-port 8001 --metrics-port 8002 \
        > /tmp/tritonserver.log 2>&1 &
    SERVER=$!
    for i in $(seq 1 240); do curl -sf localhost:8000/v2/health/ready >/dev/null && break; kill -0 $SERVER 2>/dev/null || break; sleep 1; done
    if curl -sf localhost:8000/v2/health/ready >/dev/null; then echo "server ready after ${i}s"
    else echo "server NOT ready after ${i}s"; tail -40 /tmp/tritonserver.log; fi
    timeout 60 $B serve --served-model ensemble --dataset sharegpt --num-requests 8 --out "$OUT/smoke" 2>&1 | grep -E "errors|req_s|failed|Error" | head -5
    if grep -q '"errors": 0' "$OUT/smoke/serve-ensemble-sharegpt-8.json" 2>/dev/null; then
      timeout 200 $B serve --served-model ensemble --dataset sharegpt --num-requests 1000 --out "$OUT" 2>&1 | grep -vE "^\s*$" | tail -40
    else echo "smoke run failed: skipping the 1000-request run"; fi
    curl -s localhost:8002/metrics | grep -E "^(nv_trt_llm|inflight)" | grep -v bucket > "$OUT/serve-metrics.txt"
    kill -INT $SERVER; sleep 5
    pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub  # the stubs outlive a killed server
    grep -iE "error|fail|traceback" /tmp/tritonserver.log | head -20; tail -c 20000 /tmp/tritonserver.log > "$OUT/tritonserver.log"
    for i in $(seq 1 60); do [ "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)" -lt 2000 ] && break; sleep 1; done
    [ -n "${SKIP_OFFLINE:-}" ] && exit 0
    python3 - "$OUT" <<'EOF'
import json, sys
from inflight.tools.bench.cli import resolve_bench_model
from inflight.tools.bench.dataset import sharegpt_like
from inflight.tools.bench.offline import make_engine, run_engine
from inflight.tools.bench.report import save
from transformers import AutoTokenizer
out = sys.argv[1]
model, tok, _ = resolve_bench_model("llama-3.1-8b")
t = AutoTokenizer.from_pretrained(tok)
wl = sharegpt_like(1000, len(t) - 3, 0)
# the same prompts as the serve run, re-tokenized the way preprocessing does
wl = type(wl)([t(t.decode(p))["input_ids"] for p in wl.prompts], wl.output_lens)
eng = make_engine(model, tok, load_format="dummy", dtype="bfloat16", max_seq_len=4096, max_batch_size=256)
res = run_engine(eng, wl, desc="offline")
res = {k: v for k, v in res.items() if not k.startswith("_")}
save({"model": "llama-3.1-8b", "inflight": res}, out, "offline-sharegpt-1000")
print(json.dumps(res, indent=1))
EOF
    ;;
esac
