# kvkeep's two quick-start commands and their helpers. See README.md.
#   make demo   the daemon on the embedded default model plus a replayed trace
#   make test   build everything and run the CPU test suites (what CI runs)
# Both run scripts/setup first (packages and the default model; instant when present).
# The CUDA backend is built only when `nvidia-smi -L` finds a GPU (CI compiles it
# separately, see .ci/run); override with CMAKE_FLAGS=-DKVKEEP_CUDA=ON.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo ON || echo OFF)
CMAKE_FLAGS ?=

.PHONY: all setup build test demo format format-check gpu clean

all: build

setup:
	scripts/setup

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVKEEP_CUDA=$(HAVE_GPU) $(CMAKE_FLAGS)

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

# --- harden (issue 11): sanitizer builds and the thread-safety analysis -------------------
.PHONY: asan tsan thread-safety
ASAN_DIR ?= build-asan
TSAN_DIR ?= build-tsan
TSA_DIR ?= build-tsa
# The CPU suite under ASan+UBSan (what .ci/run runs). replay_run_test is left out: it
# replays real traces for minutes already without sanitizers (2-core CI budget).
# -O1 -g1: ASan's recommended optimisation, and line tables are all a report needs; it
# halves the compile and link time of a clean clone against -O2 -g. Daemon starts and
# replies may take 3x their usual timeout (a start that calibrates the cost model takes
# about 10 s under ASan).
asan:
	cmake -S . -B $(ASAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVKEEP_CUDA=OFF \
	  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO='-O1 -g1 -DNDEBUG' -DCMAKE_C_FLAGS_RELWITHDEBINFO='-O1 -g1 -DNDEBUG' \
	  -DKVKEEP_BUILD_BENCH=OFF -DKVKEEP_SANITIZE=address,undefined $(CMAKE_FLAGS)
	cmake --build $(ASAN_DIR) -j $(JOBS)
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp KVKEEP_TEST_TIMEOUT_SCALE=3 \
	  ctest -LE gpu -E '^replay_run_test' --output-on-failure -j $(JOBS) --timeout 1800
# The daemon, engine and cache suites under TSan (suppressions: scripts/tsan.supp): only
# their test binaries and the two executables the daemon tests start are built.
# OMP_NUM_THREADS=1: libgomp is not built with TSan, so its barriers are invisible to it
# and every parallel loop would be reported; one thread runs no OpenMP workers. Daemon
# replies may take 5x their usual timeout. Left out: DaemonBulkTest and the cost-model
# calibration assert wall-clock behaviour (TSan's 5-15x slowdown is what they would
# measure), and the bulk test's 7 MiB appends take MiniLM over 30 minutes on one thread.
TSAN_TESTS := $(sort $(basename $(notdir $(wildcard tests/daemon/*_test.cc tests/engine/*_test.cc \
  tests/cache/*_test.cc))))
tsan:
	cmake -S . -B $(TSAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVKEEP_CUDA=OFF \
	  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO='-O1 -g1 -DNDEBUG' -DCMAKE_C_FLAGS_RELWITHDEBINFO='-O1 -g1 -DNDEBUG' \
	  -DKVKEEP_BUILD_BENCH=OFF -DKVKEEP_SANITIZE=thread $(CMAKE_FLAGS)
	cmake --build $(TSAN_DIR) -j $(JOBS) --target kvkeepd kvkeep $(TSAN_TESTS)
	cd $(TSAN_DIR) && OMP_NUM_THREADS=1 KVKEEP_TEST_TIMEOUT_SCALE=5 \
	  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/scripts/tsan.supp" \
	  ctest -R '^($(subst $(eval) ,|,$(TSAN_TESTS)))\.' -LE gpu \
	  -E 'DaemonBulkTest|CostModelIsCalibratedSavedAndLoaded' --output-on-failure -j $(JOBS) --timeout 1800
# Debian's clang with -Wthread-safety over the GUARDED_BY annotations; its findings are
# errors (other clang warnings are not: the tree is -Werror-clean under gcc, not clang).
thread-safety:
# Only the daemon's objects are compiled (no link): that is where the annotations are.
	CC=clang CXX=clang++ cmake -S . -B $(TSA_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DKVKEEP_CUDA=OFF -DKVKEEP_BUILD_BENCH=OFF -DKVKEEP_BUILD_TESTS=OFF \
	  -DKVKEEP_THREAD_SAFETY=ON -DCMAKE_CXX_FLAGS=-Werror=thread-safety-analysis
	cd $(TSA_DIR) && ninja -j $(JOBS) \
	  $$(ninja -t targets all | grep -o '^CMakeFiles/kvkeep_daemon.dir/[^:]*\.o')
# libFuzzer smoke: each tests/fuzz/fuzz_<name> for FUZZ_SECONDS from its seed corpus (new
# inputs go to a scratch copy; the checked-in corpus stays as it is).
.PHONY: fuzz-smoke
FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 60
fuzz-smoke:
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DKVKEEP_CUDA=OFF -DKVKEEP_BUILD_TESTS=OFF -DKVKEEP_BUILD_BENCH=OFF -DKVKEEP_FUZZ=ON
	cd $(FUZZ_DIR) && ninja -j $(JOBS) $$(ninja -t targets all | grep -o '^fuzz_[a-z_]*' | sort -u)
	set -e; for f in tests/fuzz/fuzz_*.cc; do name=$$(basename $$f .cc); corpus=$${name#fuzz_}; \
	  rm -rf $(FUZZ_DIR)/corpus-$$corpus && mkdir -p $(FUZZ_DIR)/corpus-$$corpus; \
	  echo "$$name: $(FUZZ_SECONDS) s"; \
	  $(FUZZ_DIR)/tests/fuzz/$$name -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    -print_final_stats=1 $(FUZZ_DIR)/corpus-$$corpus tests/fuzz/corpus/$$corpus; done
# The load test at issue 11's full size: 256 concurrent multi-turn clients (make test runs
# 48). Figures: docs/reliability.md, bench/RESULTS.md.
.PHONY: load
LOAD_CLIENTS ?= 256
load: $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j $(JOBS) --target kvkeepd load_test
	cd $(BUILD_DIR) && KVKEEP_LOAD_CLIENTS=$(LOAD_CLIENTS) ctest -R '^load_test' --output-on-failure -V --timeout 1800
# --- end harden ------------------------------------------------------------------------------
