# kvkeep's two quick-start commands and their helpers. See README.md.
#   make demo   the daemon on the embedded default model plus a replayed trace
#   make test   build everything and run the CPU test suites (what CI runs)
# Both run scripts/setup first (packages and the default model; instant when present).
# The CUDA backend is built only when `nvidia-smi -L` finds a GPU (CI compiles it
# separately, see .ci/run); override with CMAKE_FLAGS=-DKVKEEP_CUDA=ON.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo ON || echo OFF)
CMAKE_FLAGS ?= -DKVKEEP_CUDA=$(HAVE_GPU)

.PHONY: all setup build test demo format format-check gpu clean

all: build

setup:
	scripts/setup

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: setup
	$(MAKE) build
	cd $(BUILD_DIR) && ctest -LE gpu --output-on-failure -j $(JOBS) --timeout 900

demo: setup
	$(MAKE) build
	BUILD_DIR=$(BUILD_DIR) scripts/demo

format:
	git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format -i

format-check:
	git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run -Werror

gpu:
	bench/gpu/run.sh

clean:
	rm -rf $(BUILD_DIR)
