#!/usr/bin/env bash
# Builds the llama.cpp anchor for bench/gguf_cpu_bench.sh: llama-cpp-python from PyPI, from
# source, in its own venv under a cache directory (never part of scripts/setup or CI).
# Reruns find the cached build and return at once. Prints the venv's python on stdout.
#
# Build flags: GGML_NATIVE=ON (-march=native) compiles with GCC 12 but dies with SIGILL on
# the first multi-token prompt (GCC 12's AMX header drops the tile configuration, llama.cpp
# PR #26954), so AMX is off and AVX2/AVX-512(VNNI, BF16) are on explicitly. The build takes
# about 20 minutes on 2 cores at one job.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE_DIR=${KVKEEP_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvkeep/bench}
VENV="$CACHE_DIR/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
STAMP="$VENV/.built"
JOBS=${LLAMA_BUILD_JOBS:-1}

if [[ -f $STAMP ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
mkdir -p "$CACHE_DIR"
log="$CACHE_DIR/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION.build.log"
echo "llama_cpp_anchor: building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION from source" \
  "($JOBS job(s), log: $log); this takes ~20 minutes on 2 cores" >&2
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check numpy >>"$log" 2>&1
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=ON \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF"
if ! "$VENV/bin/pip" install -v --disable-pip-version-check --no-binary llama-cpp-python \
  "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >>"$log" 2>&1; then
  echo "llama_cpp_anchor: build failed; see $log" >&2
  exit 1
fi
touch "$STAMP"
echo "$VENV/bin/python"
