# kvkeep's two quick-start commands and their helpers. See README.md.
#   make demo   the daemon on the embedded default model plus a replayed trace
#   make test   build everything and run the CPU test suites (what CI runs)
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all build test demo format format-check gpu clean

all: build

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest -LE gpu --output-on-failure -j $(JOBS) --timeout 900

demo: build
	BUILD_DIR=$(BUILD_DIR) scripts/demo

format:
	git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format -i

format-check:
	git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run -Werror

gpu:
	bench/gpu/run.sh

clean:
	rm -rf $(BUILD_DIR)
