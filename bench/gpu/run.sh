#!/usr/bin/env bash
# bench/gpu/run.sh: one command on a GPU machine — build the CUDA backend, run `ctest -L gpu`,
# run the GPU benchmarks and their anchors (PyTorch SDPA on dense KV, copy bandwidth; HF
# transformers with KVKEEP_BENCH_HF=1), the host-tier swap bandwidth, and with KVKEEP_GGUF=FILE
# parity and decode speed of a real GGUF model against HF transformers, with
# KVKEEP_AGENTS_TRACE=FILE the agents experiment (bench/gpu/agents.sh), with
# KVKEEP_BENCH_REMOTE=1 the remote tier's reload from Redis into device blocks against
# recompute on the 8B shape (bench/remote_tier_bench --device cuda, redis-benchmark as the
# anchor); print a short table last (also $OUT/table.txt). KVKEEP_BENCH_ATTENTION=0 /
# KVKEEP_BENCH_MODEL=0 / KVKEEP_CTEST=0 / KVKEEP_BENCH_SWAP=0 skip those parts.
#
#   bash bench/gpu/run.sh
#
# Build: configures <repo>/build-gpu with -DKVKEEP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a.
# On a machine without kvkeep's Debian -dev dependencies (spdlog, GTest, FAISS, ...), set
# KVKEEP_GPU_PREBUILT=<dir> to a build directory made elsewhere by bench/gpu/prebuild.sh
# (test and bench executables, CTest files and the shared libraries they need).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export OUT=${OUT:-$ROOT/build-gpu/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ -n "${KVKEEP_GPU_PREBUILT:-}" ]; then
  PRE=$(cd "$ROOT/$KVKEEP_GPU_PREBUILT" 2>/dev/null || cd "$KVKEEP_GPU_PREBUILT" && pwd)
  # CTest files name the directory the build was made in; make that path resolve here.
  ORIG=$(cat "$PRE/ORIGINAL_BUILD_DIR")
  if [ ! -e "$ORIG" ]; then mkdir -p "$(dirname "$ORIG")" && ln -s "$PRE" "$ORIG"; fi
  BUILD=$ORIG
  export LD_LIBRARY_PATH="$PRE/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
  # The carried redis-server and redis-benchmark (wrappers with their own libraries).
  [ -d "$PRE/redis/bin" ] && export PATH="$PRE/redis/bin:$PATH"
else
  BUILD=$ROOT/build-gpu
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DKVKEEP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DCMAKE_BUILD_TYPE=Release || { echo "configure failed (missing -dev packages? see KVKEEP_GPU_PREBUILT)"; exit 1; }
  TARGETS=$(cd "$ROOT/tests/cuda" && ls *_test.cc | sed 's/\.cc$//')
  BENCHES=$(cd "$ROOT/bench/gpu" && ls *_bench.cu *_bench.cc 2>/dev/null | sed 's/\.cu$//; s/\.cc$//')
  cmake --build "$BUILD" --target $TARGETS $BENCHES kvkeep kvkeepd policy_bench remote_tier_bench \
    -j"$(nproc)" || exit 1
fi
KVKEEP=$BUILD/kvkeep
[ -x "$KVKEEP" ] || KVKEEP=$BUILD/bin/kvkeep  # a prebuilt directory keeps it in bin/

CTEST_RC=skipped
if [ "${KVKEEP_CTEST:-1}" = 1 ]; then
  echo "=== ctest -L gpu"
  (cd "$BUILD" && ctest -L gpu --output-on-failure --timeout 900) 2>&1 | tee "$OUT/ctest.log"
  CTEST_RC=${PIPESTATUS[0]}
fi

if [ "${KVKEEP_BENCH_ATTENTION:-1}" = 1 ]; then
  echo "=== attention benchmarks and their anchors"
  timeout 300 "$BUILD/bench/gpu_attention_bench" 2>&1 | tee "$OUT/gpu_attention_bench.log"
  timeout 300 python3 "$ROOT/bench/gpu/anchors.py" > "$OUT/anchors.log" 2>&1 || tail -5 "$OUT/anchors.log"
fi
if [ "${KVKEEP_BENCH_MODEL:-1}" = 1 ]; then
  echo "=== 8B-shape model (synthetic weights) and HF transformers"
  timeout "${KVKEEP_MODEL_TIMEOUT:-420}" "$BUILD/bench/gpu_model_bench" 2>&1 | tee "$OUT/gpu_model_bench.log"
  [ "${KVKEEP_BENCH_HF:-1}" = 1 ] && timeout 300 python3 "$ROOT/bench/gpu/anchors.py" --hf > "$OUT/anchors_hf.log" 2>&1 || tail -5 "$OUT/anchors_hf.log"
fi
if [ "${KVKEEP_BENCH_SWAP:-1}" = 1 ]; then
  echo "=== host-tier swap bandwidth against cudaMemcpyAsync"
  timeout 120 "$BUILD/bench/tiers_swap_bench" 2>&1 | tee "$OUT/tiers_swap_bench.log"
fi
if [ "${KVKEEP_BENCH_REMOTE:-0}" = 1 ]; then
  # Issue 16: reload of a 4k/16k/32k-token history from Redis into device blocks against
  # its prefill, on the 8B shape; the model directory is shared with agents.sh.
  echo "=== remote tier: Redis reload into device blocks against recompute (8B shape)"
  MODEL_8B=${KVKEEP_8B_MODEL:-/tmp/kvkeep-llama3-8b-shape}
  [ -f "$MODEL_8B/config.json" ] || "$KVKEEP" make-model --preset llama3-8b-shape --seed 1 --out "$MODEL_8B"
  timeout 420 "$BUILD/bench/remote_tier_bench" --device cuda --model "$MODEL_8B" \
    --lengths 4096,16384,32768 --repeats 3 --json "$OUT/remote_tier_bench.json" 2>&1 |
    grep -v '^{' | tee "$OUT/remote_tier_bench.log"
fi
if [ -n "${KVKEEP_GGUF:-}" ]; then
  # A real GGUF model (issue 14): CUDA against the CPU reference, then decode speed against
  # HF transformers on the same file (needs the `gguf` Python package there).
  echo "=== parity --device cuda on $KVKEEP_GGUF"
  timeout 300 "$KVKEEP" parity --model "$KVKEEP_GGUF" --device cuda --against cpu --max-tokens 16 \
    --prompt "Water is made of" 2>&1 | tee "$OUT/parity_gguf.log"
  timeout 300 "$KVKEEP" parity --model "$KVKEEP_GGUF" --device cuda --against cpu --max-tokens 32 \
    --prompt "Write a Python function that returns the n-th Fibonacci number, with a docstring." \
    2>&1 | tee -a "$OUT/parity_gguf.log"
  echo "=== GGUF decode: kvkeep CUDA, then HF transformers"
  timeout 300 "$BUILD/bench/gguf_decode_bench" "$KVKEEP_GGUF" 2>&1 | tee "$OUT/gguf_decode_bench.log"
  timeout 400 python3 "$ROOT/bench/gpu/hf_gguf_anchor.py" "$KVKEEP_GGUF" > "$OUT/hf_gguf.log" 2>&1 || tail -5 "$OUT/hf_gguf.log"
fi
if [ -n "${KVKEEP_AGENTS_TRACE:-}" ]; then
  # Issue 12: concurrent SWE-bench agents on the 8B-shape model under each policy.
  echo "=== agents experiment on $KVKEEP_AGENTS_TRACE"
  OUT=$OUT/agents bash "$ROOT/bench/gpu/agents.sh" "$BUILD" "$KVKEEP_AGENTS_TRACE"
fi
echo "=== summary (ctest rc $CTEST_RC)"
[ -f "$OUT/ctest.log" ] && { grep -E "tests passed|tests failed|Failed|\*\*\*" "$OUT/ctest.log" | head -20 || true; }
python3 "$ROOT/bench/gpu/table.py"
