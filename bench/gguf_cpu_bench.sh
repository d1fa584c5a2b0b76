#!/usr/bin/env bash
# The CPU figures of issue 14 on one GGUF file, kvkeep against llama.cpp in the same run:
# prefill tok/s for a 512-token prompt and greedy decode tok/s at batch 1 after it, both with
# the same thread count; then the greedy ids compared up to the first near-tie and the logits
# with a tolerance (bench/gguf_cpu_llama.py compare). Not part of CI.
#
#   bench/gguf_cpu_bench.sh [--model FILE] [--threads 2] [--decode 64] [--build DIR]
#
# The llama.cpp anchor is llama-cpp-python built from source by bench/llama_cpp_anchor.sh
# (cached; ~20 minutes the first time). kvkeep runs twice: quantised weights (the default)
# and fp32 weights (the exact reference path). Results: build/gguf_cpu_bench/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model="" threads=2 decode=64 build="$root/build"
while (($#)); do
  case $1 in
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --decode) decode=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z $model ]]; then
  for d in "${KVKEEP_MODELS_DIR:-}" "${XDG_DATA_HOME:-$HOME/.local/share}/kvkeep/models" \
    /var/lib/kvkeep/models; do
    [[ -n $d && -f $d/SmolLM2-135M-Instruct.Q4_1.gguf ]] && { model=$d/SmolLM2-135M-Instruct.Q4_1.gguf; break; }
  done
fi
[[ -f $model ]] || { echo "no model: run scripts/setup or pass --model" >&2; exit 1; }

python=$("$root/bench/llama_cpp_anchor.sh")
cmake --build "$build" --target gguf_cpu_bench >/dev/null
out="$build/gguf_cpu_bench"
mkdir -p "$out"
echo "model $model, $threads threads, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
"$python" "$root/bench/gguf_cpu_llama.py" ids --model "$model" --text "$root/README.md" \
  --tokens 512 --out "$out/ids.json"
# OpenMP's waiting policy: llama.cpp runs with both (its best figures are the anchor); kvkeep
# with passive (its default OpenMP+OpenBLAS setting, docs/engine.md). Engines alternate so
# that drift in the machine's load hits both.
rm -f "$out"/llama*.json
run_llama() {
  OMP_WAIT_POLICY=$1 "$python" "$root/bench/gguf_cpu_llama.py" run --model "$model" \
    --ids "$out/ids.json" --threads "$threads" --decode "$decode" --out "$out" --name "$2"
}
run_kvkeep() {
  OMP_WAIT_POLICY=passive "$build/bench/gguf_cpu_bench" --model "$model" \
    --prompt-ids "$out/ids.json" --threads "$threads" --decode "$decode" "$@"
}
run_llama active llama
run_kvkeep --out "$out"
run_llama passive llama_passive
mkdir -p "$out/f32"
cp "$out"/llama*.json "$out/llama.logits.f32" "$out/f32/"
run_kvkeep --out "$out/f32" --weights f32
echo "--- quantised weights vs llama.cpp"
"$python" "$root/bench/gguf_cpu_llama.py" compare --dir "$out"
echo "--- fp32 weights vs llama.cpp"
"$python" "$root/bench/gguf_cpu_llama.py" compare --dir "$out/f32" || true
