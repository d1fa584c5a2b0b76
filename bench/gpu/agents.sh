#!/usr/bin/env bash
# bench/gpu/agents.sh BIN_DIR TRACE: issue 12's experiment on a GPU machine. kvkeepd on
# --device cuda with the llama3-8b-shape synthetic model serves N concurrent agents that
# replay real SWE-bench trajectories (TRACE: `kvkeep replay import --from mini-swe-agent
# ...`) with their recorded tool times and teacher-forced outputs, so every policy does the
# same work; each policy runs on a fresh daemon, back to back, at each load. Prints the table
# and writes agents.json, agents.txt and agents_jct_cdf.png under $OUT.
#
#   OUT=DIR bash bench/gpu/agents.sh build-cuda trace.jsonl
#
# Knobs (environment): AGENTS_LOADS ("6 12 25"), AGENTS_POLICIES ("ttl fixed-ttl lru none"),
# AGENTS_TURNS (model turns per agent, 6), AGENTS_TIME_SCALE (1: recorded tool times),
# AGENTS_KV_BLOCKS (device pool, 16-token blocks of 2 MiB; 1024 = 2 GiB, so that lru must
# evict from the middle load up), AGENTS_HOST_BLOCKS (pinned host tier, 2048),
# AGENTS_MODEL (model directory; made from AGENTS_PRESET, llama3-8b-shape, if absent),
# AGENTS_DEVICE (cuda; cpu with a tiny preset checks the script itself), AGENTS_BUDGET_S (stop starting runs past
# this many seconds, 480). The cost model is calibrated once on this GPU and used by every
# run (and saved as $OUT/cost_model.json for bench/policy_bench --timings).
set -uo pipefail
BIN=$(cd "$1" && pwd)
TRACE=$2
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/kvkeep-agents}
LOADS=${AGENTS_LOADS:-6 12 25}
POLICIES=${AGENTS_POLICIES:-ttl fixed-ttl lru none}
TURNS=${AGENTS_TURNS:-6}
SCALE=${AGENTS_TIME_SCALE:-1}
KV_BLOCKS=${AGENTS_KV_BLOCKS:-1024}
HOST_BLOCKS=${AGENTS_HOST_BLOCKS:-2048}
PRESET=${AGENTS_PRESET:-llama3-8b-shape}
MODEL=${AGENTS_MODEL:-/tmp/kvkeep-$PRESET}
DEVICE=${AGENTS_DEVICE:-cuda}
BUDGET_S=${AGENTS_BUDGET_S:-480}
KVKEEP=$BIN/kvkeep; [ -x "$KVKEEP" ] || KVKEEP=$BIN/bin/kvkeep
KVKEEPD=$BIN/kvkeepd; [ -x "$KVKEEPD" ] || KVKEEPD=$BIN/bin/kvkeepd
WORK=$(mktemp -d /tmp/kvkeep-agents-XXXXXX)
mkdir -p "$OUT"
START=$SECONDS

[ -f "$MODEL/config.json" ] || "$KVKEEP" make-model --preset "$PRESET" --seed 1 --out "$MODEL" || exit 1
DAEMON_ARGS=(--model "$MODEL" --device "$DEVICE" --num-kv-blocks "$KV_BLOCKS" --host-blocks "$HOST_BLOCKS"
             --max-sessions-per-uid 4096 --max-connections-per-uid 4096 --log-level info)

# start_daemon DIR POLICY [extra flags]: kvkeepd in the background, its socket DIR/s.sock.
start_daemon() {
  local dir=$1 policy=$2; shift 2
  mkdir -p "$dir/state"
  [ -f "$WORK/cost_model.json" ] && cp "$WORK/cost_model.json" "$dir/state/"
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

echo "=== calibrating the cost model on this GPU"
start_daemon "$WORK/calibrate" lru --calibrate-cost-model || exit 1
stop_daemon
cp "$WORK/calibrate/state/cost_model.json" "$WORK/cost_model.json" && cp "$WORK/cost_model.json" "$OUT/"
grep -i "cost model" "$WORK/calibrate/kvkeepd.log" | tail -2

for n in $LOADS; do
  for p in $POLICIES; do
    if [ $((SECONDS - START)) -gt "$BUDGET_S" ]; then
      echo "=== skipping $p at $n agents: past the ${BUDGET_S} s budget"; continue
    fi
    run=$OUT/n$n/$p
    mkdir -p "$run"
    echo "=== $n agents, policy $p"
    start_daemon "$WORK/n$n-$p" "$p" || continue
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
      -lms 250 > "$run/gpu_util.csv" 2>/dev/null &
    SMI=$!
    "$KVKEEP" replay run "$TRACE" --socket "$WORK/n$n-$p/s.sock" --policy "$p" --agents "$n" \
      --sessions "$n" --max-turns "$TURNS" --time-scale "$SCALE" --out "$run" --no-plots \
      2> "$run/replay.err" | tee "$run/replay.txt" | tail -3
    kill $SMI 2>/dev/null; wait $SMI 2>/dev/null
    "$KVKEEP" status --socket "$WORK/n$n-$p/s.sock" --format json > "$run/stats.json"
    stop_daemon
    cp "$WORK/n$n-$p/kvkeepd.log" "$run/"
  done
done
python3 "$ROOT/bench/gpu/agents_report.py" "$OUT" --turns "$TURNS" --time-scale "$SCALE" \
  --kv-blocks "$KV_BLOCKS" --host-blocks "$HOST_BLOCKS"
rm -rf "$WORK"
