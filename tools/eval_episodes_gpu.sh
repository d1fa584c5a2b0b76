#!/usr/bin/env bash
# tools/eval_episodes_gpu.sh: the answer-fidelity evaluation (`kvkeep eval-episodes
# --fidelity`, docs/episodes.md) on a GPU machine that reaches nothing and takes at most
# 64 MiB of files a call. The model (SmolLM2-135M-Instruct Q4_1, 98 MB; 90 MB as xz) does
# not fit one call, so it travels xz-compressed in two parts, on two calls made back to back
# on one warm machine:
#
#   here:   tools/eval_episodes_gpu.sh pack DIR KVKEEP [PLAN_8K] [PLAN_1K]
#             KVKEEP: a kvkeep built with -DKVKEEP_CUDA=ON (build-cuda/kvkeep); packed with
#             the shared libraries a bare CUDA image lacks (as bench/gpu/prebuild.sh picks
#             them), 11 MB as xz.
#             DIR/a: prebuilt.tar.xz (bin/kvkeep, lib/) and model.xz.1;
#             DIR/b: model.xz.2, the plans (made here by `--plan-out`, where MiniLM is),
#                    model.sha256, this script.
#             PART1_BYTES (default 40000000) sizes part 1; each call's files plus the
#             repository's tracked files must stay under 64 MiB.
#   call 1: carry DIR/a; command: bash DIR/a/stage.sh   (copies DIR/a to /tmp/kvkeep-fid)
#   call 2: carry DIR/b; command: bash DIR/b/eval_episodes_gpu.sh run DIR/b
#             joins the model, checks its SHA-256, then (a) conv-26 of the small plan on
#             cuda and on cpu (mechanics: the NLLs agree within bf16 tolerance), (b) the full
#             plan on cuda within FIDELITY_DEADLINE_S (default 360) seconds, writing
#             $OUT/fidelity_8k.json after every conversation. Logs in $OUT.
#             FIDELITY_SMALL_DEVICES ("cuda cpu") and FIDELITY_FULL (1) choose the parts.
#   then:   bash DIR/b/eval_episodes_gpu.sh variants DIR/b SET   (SET: a, b or c; same warm
#             machine, after run): issue 13's diagnosis at 8k, one knob at a time, each on
#             the full plan at M = 1/4 (docs/episodes.md, "Why episodic KV lost at 8k"):
#             $OUT/fidelity_8k_NAME.json per variant; tools/fidelity_variants.py tabulates
#             them against the base (full, recent, snapkv). Each set fits one 600 s call.
set -uo pipefail
cmd=${1:-}
case "$cmd" in
pack)
  DIR=$2
  BIN=$3
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  PLAN8=${4:-$ROOT/build/fidelity/plan_8k.json}
  PLAN1=${5:-$ROOT/build/fidelity/plan_1k.json}
  MODEL=${KVKEEP_MODEL:-/var/lib/kvkeep/models/SmolLM2-135M-Instruct.Q4_1.gguf}
  PART1=${PART1_BYTES:-40000000}
  [ -x "$BIN" ] || { echo "pack: $BIN is not an executable (build-cuda/kvkeep)"; exit 1; }
  for f in "$PLAN8" "$PLAN1" "$MODEL"; do [ -f "$f" ] || { echo "pack: $f missing"; exit 1; }; done
  rm -rf "$DIR/a" "$DIR/b"
  mkdir -p "$DIR/a" "$DIR/b" || exit 1
  PRE=$DIR/prebuilt
  rm -rf "$PRE"
  mkdir -p "$PRE/bin" "$PRE/lib" && cp "$BIN" "$PRE/bin/kvkeep" || exit 1
  strip --strip-debug "$PRE/bin/kvkeep" 2>/dev/null || true
  ldd "$BIN" | awk '/=> \//{print $3}' |
    grep -vE 'libc\.so|libm\.so|libdl|libpthread|librt|ld-linux|libcuda|libcublas|libcudart|libgcc_s|libstdc\+\+' |
    while read -r lib; do cp -L "$lib" "$PRE/lib/"; done
  tar -C "$PRE" -cf - bin lib | xz -T0 -6 > "$DIR/a/prebuilt.tar.xz" || exit 1
  rm -rf "$PRE"
  xz -T0 -6 -c "$MODEL" > "$DIR/model.xz" || exit 1
  head -c "$PART1" "$DIR/model.xz" > "$DIR/a/model.xz.1"
  tail -c +"$((PART1 + 1))" "$DIR/model.xz" > "$DIR/b/model.xz.2"
  rm -f "$DIR/model.xz"
  printf '#!/bin/sh\nset -e\nmkdir -p /tmp/kvkeep-fid\ncp "$(dirname "$0")"/prebuilt.tar.xz "$(dirname "$0")"/model.xz.1 /tmp/kvkeep-fid/\nls -la /tmp/kvkeep-fid\n' \
    > "$DIR/a/stage.sh"
  (cd "$(dirname "$MODEL")" && sha256sum "$(basename "$MODEL")") > "$DIR/b/model.sha256"
  xz -6 -c "$PLAN8" > "$DIR/b/plan_8k.json.xz"
  cp "$PLAN1" "$DIR/b/plan_1k.json"
  cp "$0" "$DIR/b/eval_episodes_gpu.sh"
  tracked=$(cd "$ROOT" && git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  for part in a b; do
    bytes=$(du -cb "$DIR/$part" | tail -1 | cut -f1)
    echo "call $part: $bytes bytes carried + $tracked tracked = $((bytes + tracked)) of 67108864"
  done
  ;;
run)
  B=$(cd "$2" && pwd)
  OUT=${OUT:-/tmp/kvkeep-fid/out}
  mkdir -p "$OUT"
  S=/tmp/kvkeep-fid
  [ -f "$S/model.xz.1" ] && [ -f "$S/prebuilt.tar.xz" ] ||
    { echo "run: $S/model.xz.1 or prebuilt.tar.xz missing: call 1 ran on another machine (not warm)"; exit 2; }
  cat "$S/model.xz.1" "$B/model.xz.2" | xz -d > "$S/$(cut -d' ' -f3 "$B/model.sha256")" || exit 1
  (cd "$S" && sha256sum -c "$B/model.sha256") || { echo "run: the joined model is damaged"; exit 1; }
  MODEL=$S/$(cut -d' ' -f3 "$B/model.sha256")
  mkdir -p "$S/pre" && tar -C "$S/pre" -xJf "$S/prebuilt.tar.xz" || exit 1
  xz -dc "$B/plan_8k.json.xz" > "$S/plan_8k.json" || exit 1
  export LD_LIBRARY_PATH="$S/pre/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
  KVKEEP="$S/pre/bin/kvkeep"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # conv-26 at 1k context, 2 questions, M = 1/4: 4,362 tokens forwarded (2-core dev
  # machine: 93 s); the cuda and cpu mean NLLs agree within bf16 tolerance.
  echo "=== mechanics: conv-26 of the small plan on cuda, then on cpu"
  for dev in ${FIDELITY_SMALL_DEVICES-cuda cpu}; do
    timeout 90 "$KVKEEP" --log-level info eval-episodes --fidelity --plan "$B/plan_1k.json" \
      --llm "$MODEL" --device "$dev" --conversations conv-26 --max-questions 2 \
      --fractions 0.25 --out "$OUT/fidelity_1k_$dev.json" 2>&1 | tee "$OUT/fidelity_1k_$dev.log"
  done
  [ "${FIDELITY_FULL-1}" = 1 ] || exit 0
  DEADLINE=${FIDELITY_DEADLINE_S:-360}
  echo "=== the full plan on cuda (deadline $DEADLINE s)"
  timeout $((DEADLINE + 60)) "$KVKEEP" --log-level info eval-episodes \
    --fidelity --plan "$S/plan_8k.json" --llm "$MODEL" --device cuda \
    --deadline-s "$DEADLINE" --out "$OUT/fidelity_8k.json" 2>&1 | tee "$OUT/fidelity_8k.log"
  ;;
variants)
  B=$(cd "$2" && pwd)
  OUT=${OUT:-/tmp/kvkeep-fid/out}
  mkdir -p "$OUT"
  S=${FIDELITY_STAGE:-/tmp/kvkeep-fid}
  MODEL=$S/$(cut -d' ' -f3 "$B/model.sha256")
  [ -f "$MODEL" ] && [ -x "$S/pre/bin/kvkeep" ] && [ -f "$S/plan_8k.json" ] ||
    { echo "variants: run first, on this warm machine"; exit 2; }
  export LD_LIBRARY_PATH="$S/pre/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
  # NAME|FLAGS: one knob at a time against base (--all-episodes adds episodic-best and
  # episodic-mean: every question on every episode's cache).
  case "${3:-a}" in
  a) LIST="base|--all-episodes
recent256|--methods episodic --recent-tokens 256 --reserve-sinks
pool7|--methods episodic --pool-kernel 7
recent256_pool7|--methods episodic --recent-tokens 256 --reserve-sinks --pool-kernel 7
snap_pool1|--methods snapkv --snap-pool-kernel 1
sinks|--methods episodic --reserve-sinks" ;;
  b) LIST="recent1024|--methods episodic --recent-tokens 1024 --reserve-sinks
prompt128|--methods episodic --prompt-cut 128
alpha1|--methods episodic --layer-alpha 1
block512|--methods episodic --block 512
question8|--methods full,recent,episodic,episodic-question --max-questions 8" ;;
  c) LIST="alpha1|--methods episodic --layer-alpha 1
alpha2|--methods episodic --layer-alpha 2
question|--methods full,recent,episodic,episodic-question" ;;
  *) echo "variants: SET is a, b or c"; exit 1 ;;
  esac
  while IFS='|' read -r name flags; do
    echo "=== variant $name: $flags"
    # shellcheck disable=SC2086
    timeout 200 "$S/pre/bin/kvkeep" --log-level info eval-episodes --fidelity \
      --plan "$S/plan_8k.json" --llm "$MODEL" --device cuda --fractions 0.25 \
      --deadline-s 140 $flags --out "$OUT/fidelity_8k_$name.json" 2>&1 |
      tee "$OUT/fidelity_8k_$name.log" | tail -12
  done <<< "$LIST"
  ;;
*)
  sed -n '2,30p' "$0"
  exit 1
  ;;
esac
