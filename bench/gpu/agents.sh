#!/usr/bin/env bash
# bench/gpu/agents.sh BIN_DIR TRACE: issue 12's experiment on a GPU machine. kvkeepd on
# --device cuda with the llama3-8b-shape synthetic model serves N concurrent agents that
# replay real SWE-bench trajectories (TRACE: `kvkeep replay import --from mini-swe-agent
# ...`) with their recorded tool times and teacher-forced outputs, so every policy does the
# same work; each policy runs on a fresh daemon, back to back, at each load. Then
# bench/policy_bench simulates the same sessions, loads, policies and turn cap with the
# cost model this run calibrated and the served model's token counts, and the table gives
# its prediction error per policy and load.
#
#   OUT=DIR bash bench/gpu/agents.sh build-cuda trace.jsonl
#
# $OUT gets at most 6 files: agents.txt (the table), agents.json, agents_jct_cdf.png,
# cost_model.json, sim.txt (policy_bench's output) and runs.tar.gz (every run's turns.csv,
# sessions.csv, stats, GPU samples and daemon log).
#
# Knobs (environment):
#   AGENTS_LOADS ("4 8 12"), AGENTS_POLICIES ("ttl fixed-ttl lru none"), AGENTS_TURNS (model
#   turns per agent, 4), AGENTS_TIME_SCALE (1: recorded tool times), AGENTS_KV_BLOCKS
#   (device pool, 16-token blocks, 2 MiB each at the 8B shape; 3072 = 6 GiB), AGENTS_HOST_BLOCKS
#   (pinned host tier, 4096), AGENTS_MODEL (model directory; made from AGENTS_PRESET,
#   llama3-8b-shape, if absent), AGENTS_DEVICE (cuda; cpu with a tiny or small preset checks
#   the pipeline here), AGENTS_BUDGET_S (stop starting runs past this many seconds, 540),
#   AGENTS_START_S (seconds a daemon takes to start, for the estimate; 20).
#   AGENTS_SEED=1: "a daemon that has served traffic before". Before measuring, one daemon
#   serves the tool calls of held-out sessions (AGENTS_SEED_TRACE, default TRACE; the
#   sessions measured at any load are left out) through the normal session.tool_begin /
#   session.tool_end path, in parallel lanes of at most AGENTS_SEED_LANE_S (20) seconds of
#   tool time each, and keeps the samples in its SQLite store, as a real daemon does; each
#   AGENTS_SEED_POLICIES run ("ttl") then starts from a copy of that store and is reported
#   as "<policy>+seed" beside the unseeded run.
#   AGENTS_DAEMON_ARGS: extra kvkeepd flags (the CPU check here uses "--threads 1": on a
#   loaded 2-core machine two OpenMP threads make steps 10x slower and noisy).
#   AGENTS_HOST_GBPS (50, tiers_swap_bench's H100 figure): the simulator's host tier rate
#   when the calibration measured none. AGENTS_PREDICT=0 skips the simulator's prediction (needs BIN_DIR's bench/policy_bench).
set -uo pipefail
BIN=$(cd "$1" && pwd)
TRACE=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/kvkeep-agents}
LOADS=${AGENTS_LOADS:-4 8 12}
POLICIES=${AGENTS_POLICIES:-ttl fixed-ttl lru none}
TURNS=${AGENTS_TURNS:-4}
SCALE=${AGENTS_TIME_SCALE:-1}
KV_BLOCKS=${AGENTS_KV_BLOCKS:-3072}
HOST_BLOCKS=${AGENTS_HOST_BLOCKS:-4096}
PRESET=${AGENTS_PRESET:-llama3-8b-shape}
MODEL=${AGENTS_MODEL:-/tmp/kvkeep-$PRESET}
DEVICE=${AGENTS_DEVICE:-cuda}
BUDGET_S=${AGENTS_BUDGET_S:-540}
START_S=${AGENTS_START_S:-20}
SEED=${AGENTS_SEED:-0}
SEED_POLICIES=${AGENTS_SEED_POLICIES:-ttl}
SEED_TRACE=${AGENTS_SEED_TRACE:-$TRACE}
SEED_LANE_S=${AGENTS_SEED_LANE_S:-20}
PREDICT=${AGENTS_PREDICT:-1}
HOST_GBPS=${AGENTS_HOST_GBPS:-50}  # the simulator's host<->device rate when calibration has none
find_bin() { for d in "$BIN" "$BIN/bin" "$BIN/bench"; do [ -x "$d/$1" ] && { echo "$d/$1"; return; }; done; echo "$BIN/$1"; }
KVKEEP=$(find_bin kvkeep)
KVKEEPD=$(find_bin kvkeepd)
POLICY_BENCH=$(find_bin policy_bench)
WORK=$(mktemp -d /tmp/kvkeep-agents-XXXXXX)
RUNS=$WORK/runs
mkdir -p "$OUT" "$RUNS"
START=$SECONDS
MAX_LOAD=$(echo $LOADS | tr ' ' '\n' | sort -n | tail -1)

# The estimate: per run, a daemon start plus the longest of its sessions (tool time of the
# first TURNS turns, plus ~1 s of forced decode a turn, longer as the load grows).
python3 "$ROOT/bench/gpu/agents_report.py" estimate "$TRACE" --loads $LOADS --turns "$TURNS" \
  --policies $POLICIES --seed-policies "$([ "$SEED" = 1 ] && echo "$SEED_POLICIES")" \
  --start-s "$START_S" --time-scale "$SCALE" --budget-s "$BUDGET_S"

[ -f "$MODEL/config.json" ] || "$KVKEEP" make-model --preset "$PRESET" --seed 1 --out "$MODEL" || exit 1
DAEMON_ARGS=(--model "$MODEL" --device "$DEVICE" --num-kv-blocks "$KV_BLOCKS" --host-blocks "$HOST_BLOCKS"
             --max-sessions-per-uid 4096 --max-connections-per-uid 4096 --log-level info
             ${AGENTS_DAEMON_ARGS:-})

# start_daemon DIR POLICY [extra flags]: kvkeepd in the background, its socket DIR/s.sock;
# the calibrated cost model (and with SEEDED_DB, the seeded store) copied in first.
start_daemon() {
  local dir=$1 policy=$2; shift 2
  mkdir -p "$dir/state"
  [ -f "$WORK/cost_model.json" ] && cp "$WORK/cost_model.json" "$dir/state/"
  [ -n "${SEEDED_DB:-}" ] && cp "$SEEDED_DB" "$dir/state/kvkeep.db"
  "$KVKEEPD" "${DAEMON_ARGS[@]}" --policy "$policy" --state-dir "$dir/state" \
    --socket "$dir/s.sock" --http-socket none "$@" > "$dir/kvkeepd.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 600); do
    "$KVKEEP" status --socket "$dir/s.sock" --format json > /dev/null 2>&1 && return 0
    kill -0 $DAEMON_PID 2>/dev/null || { echo "kvkeepd exited: $(tail -3 "$dir/kvkeepd.log")"; return 1; }
    sleep 0.2
  done
  echo "kvkeepd did not answer in 120 s"; return 1
}
stop_daemon() { kill -TERM "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; }

finish() {
  if [ "$PREDICT" = 1 ] && [ -x "$POLICY_BENCH" ]; then
    # The simulator on the same sessions, loads, policies and turn cap, with this run's cost
    # model, the served model's tokens and the daemon's pool and engine limits.
    echo "=== policy_bench prediction ($(($(date +%s) - T0)) s so far)"
    local policies
    policies=$(echo $POLICIES | tr ' ' ',')
    timeout 120 "$POLICY_BENCH" --trace "$TRACE" --out "$WORK/sim" --model "$MODEL" \
      --cost-model "$WORK/cost_model.json" --kv-blocks "$KV_BLOCKS" --host-blocks "$HOST_BLOCKS" \
      --max-batch-tokens 512 --prefill-chunk-tokens 256 --max-running 64 --arrivals recorded \
      --kv-dtype-bytes "$([ "$DEVICE" = cpu ] && echo 4 || echo 2)" --host-gbps "$HOST_GBPS" \
      --time-scale "$SCALE" --max-turns "$TURNS" --agents "$(echo $LOADS | tr ' ' ',')" \
      --policies "$policies" --plot-script /nonexistent > "$OUT/sim.txt" 2>&1 ||
      { echo "policy_bench failed:"; tail -5 "$OUT/sim.txt"; }
  fi
  python3 "$ROOT/bench/gpu/agents_report.py" report "$RUNS" --out "$OUT" --turns "$TURNS" \
    --time-scale "$SCALE" --kv-blocks "$KV_BLOCKS" --host-blocks "$HOST_BLOCKS" \
    --sim "$WORK/sim/policy_bench.json" --device "$DEVICE" --model "$PRESET"
  tar -C "$WORK" -czf "$OUT/runs.tar.gz" runs seed 2>/dev/null || tar -C "$WORK" -czf "$OUT/runs.tar.gz" runs
  rm -rf "$WORK"
}
T0=$(date +%s)

echo "=== calibrating the cost model on $DEVICE"
start_daemon "$WORK/calibrate" lru --calibrate-cost-model || exit 1
stop_daemon
cp "$WORK/calibrate/state/cost_model.json" "$WORK/cost_model.json" && cp "$WORK/cost_model.json" "$OUT/"
grep -i -A16 "cost model calibrated" "$WORK/calibrate/kvkeepd.log" | tail -16

SEEDED=""
if [ "$SEED" = 1 ]; then
  echo "=== seeding tool statistics from held-out sessions ($(($(date +%s) - T0)) s so far)"
  mkdir -p "$WORK/seed"
  python3 "$ROOT/bench/gpu/agents_report.py" seed-trace "$SEED_TRACE" --exclude "$TRACE" \
    --exclude-first "$MAX_LOAD" --lane-s "$SEED_LANE_S" --out "$WORK/seed/tools.jsonl" &&
  lanes=$(wc -l < "$WORK/seed/tools.jsonl") &&
  start_daemon "$WORK/seed" lru &&
  "$KVKEEP" replay run "$WORK/seed/tools.jsonl" --socket "$WORK/seed/s.sock" --policy seed \
    --agents "$lanes" --time-scale 1 --out "$WORK/seed/replay" --no-plots 2> "$WORK/seed/replay.err" | tail -2
  "$KVKEEP" status --socket "$WORK/seed/s.sock" --format json > "$WORK/seed/stats.json" 2>/dev/null
  stop_daemon
  [ -f "$WORK/seed/state/kvkeep.db" ] && SEEDED="$WORK/seed/state/kvkeep.db"
  [ -n "$SEEDED" ] || echo "seeding failed: no seeded runs"
fi

run_one() {  # run_one LOAD POLICY NAME
  local n=$1 p=$2 name=$3 run=$RUNS/n$1/$3
  mkdir -p "$run"
  echo "=== $n agents, policy $name ($(($(date +%s) - T0)) s so far)"
  start_daemon "$WORK/d-n$n-$name" "$p" || return
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 250 > "$run/gpu_util.csv" 2>/dev/null &
  local smi=$!
  "$KVKEEP" replay run "$TRACE" --socket "$WORK/d-n$n-$name/s.sock" --policy "$name" --agents "$n" \
    --sessions "$n" --max-turns "$TURNS" --time-scale "$SCALE" --out "$run" --no-plots \
    2> "$run/replay.err" | tee "$run/replay.txt" | tail -2
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  "$KVKEEP" status --socket "$WORK/d-n$n-$name/s.sock" --format json > "$run/stats.json"
  stop_daemon
  cp "$WORK/d-n$n-$name/kvkeepd.log" "$run/"
  rm -rf "$WORK/d-n$n-$name"
}

for n in $LOADS; do
  for p in $POLICIES; do
    variants="$p"
    [[ -n "$SEEDED" && " $SEED_POLICIES " == *" $p "* ]] && variants="$p $p+seed"
    for name in $variants; do
      if [ $((SECONDS - START)) -gt "$BUDGET_S" ]; then
        echo "=== skipping $name at $n agents: past the ${BUDGET_S} s budget"; continue
      fi
      if [ "$name" = "$p+seed" ]; then SEEDED_DB=$SEEDED run_one "$n" "$p" "$name"
      else run_one "$n" "$p" "$name"; fi
    done
  done
done
finish
