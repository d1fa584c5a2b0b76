#!/usr/bin/env bash
# bench/gpu/e2e.sh BIN_DIR: end-to-end checks of the CUDA backend on a GPU machine, with the
# kvkeep and kvkeepd binaries in BIN_DIR (a CUDA build):
#   1. `kvkeep generate` greedy on --device cuda equals --device cpu, for the tiny and small
#      synthetic presets (64 tokens); where they differ, `kvkeep parity` (teacher-forced) must
#      pass, i.e. the outputs part only at a near-tie;
#   2. kvkeepd on --device cuda serves a replayed synthetic agent workload under lru and none;
#   3. (CPU) bench/prefill_bench, block-wise vs one-shot prefill, if present.
# Prints PASS/FAIL lines; exit status 1 if any check failed.
set -uo pipefail
BIN=$(cd "$1" && pwd)
OUT=${OUT:-/tmp/kvkeep-e2e}
WORK=$(mktemp -d)
mkdir -p "$OUT"
fail=0
for preset in tiny small; do
  "$BIN/kvkeep" make-model --preset "$preset" --seed 7 --out "$WORK/$preset" > /dev/null || { echo "FAIL make-model $preset"; fail=1; continue; }
  for dev in cpu cuda; do
    "$BIN/kvkeep" generate --model "$WORK/$preset" --device "$dev" --prompt "The quick brown fox" \
      --max-tokens 64 > "$WORK/$preset.$dev.txt" 2> "$WORK/$preset.$dev.err" || { echo "FAIL generate $preset $dev: $(tail -1 "$WORK/$preset.$dev.err")"; fail=1; }
    echo "$preset $dev: $(tail -1 "$WORK/$preset.$dev.err")" | tee -a "$OUT/e2e.log"
  done
  if cmp -s "$WORK/$preset.cpu.txt" "$WORK/$preset.cuda.txt"; then
    echo "PASS generate $preset: cuda output equals cpu (64 greedy tokens)" | tee -a "$OUT/e2e.log"
  else
    # Greedy outputs part for good at the first near-tie (two best logits closer than the
    # bf16 logit error); teacher-forced parity tells that from a real mismatch.
    cmp "$WORK/$preset.cpu.txt" "$WORK/$preset.cuda.txt" | tee -a "$OUT/e2e.log"
    "$BIN/kvkeep" parity --model "$WORK/$preset" --device cuda --against cpu \
      --prompt "The quick brown fox" --max-tokens 64 > "$WORK/$preset.parity.txt" 2>&1
    prc=$?
    cat "$WORK/$preset.parity.txt" >> "$OUT/e2e.log"
    summary=$(sed -n '2,4p' "$WORK/$preset.parity.txt" | sed 's/^ *//' | paste -sd';' - | sed 's/;/; /g')
    if [ $prc -eq 0 ]; then
      echo "PASS generate $preset: cuda and cpu agree except at near-ties (parity: $summary)" | tee -a "$OUT/e2e.log"
    else
      echo "FAIL generate $preset: cuda and cpu outputs differ and parity fails (exit $prc)" | tee -a "$OUT/e2e.log"; fail=1
      cat "$WORK/$preset.parity.txt"
    fi
  fi
done

"$BIN/kvkeep" replay synth --agents 8 --seed 3 > "$WORK/trace.jsonl"
if "$BIN/kvkeep" replay run "$WORK/trace.jsonl" --out "$WORK/replay" --spawn --kvkeepd "$BIN/kvkeepd" \
    --model "$WORK/small" --policy lru,none --agents 8 --max-turns 10 --max-prompt-tokens 4000 \
    --time-scale 0 --no-plots -- --device cuda > "$OUT/replay_cuda.txt" 2> "$WORK/replay.err"; then
  cat "$OUT/replay_cuda.txt"
  grep -q "on cuda" "$WORK/replay/lru/kvkeepd.log" && echo "PASS kvkeepd --device cuda served the replay" | tee -a "$OUT/e2e.log" \
    || { echo "FAIL kvkeepd did not run on cuda"; fail=1; }
else
  echo "FAIL replay on cuda: $(tail -3 "$WORK/replay.err")" | tee -a "$OUT/e2e.log"; tail -5 "$WORK/replay/lru/kvkeepd.log"; fail=1
fi
cp "$WORK/replay/report.json" "$OUT/replay_cuda_report.json" 2>/dev/null

if [ -x "$BIN/../bench/prefill_bench" ]; then
  echo "=== CPU prefill_bench (small preset), $(nproc) cores"
  timeout 240 "$BIN/../bench/prefill_bench" --benchmark_min_time=0.5 2>&1 | tee "$OUT/prefill_bench.log" | tail -12
fi
rm -rf "$WORK"
exit $fail
