#!/usr/bin/env bash
# bench/gpu/profile.sh BENCH_DIR: per-kernel GPU time of one 8k prefill and one decode step
# of the 8B-shape model, through Nsight Compute (kernels serialised, clocks as found).
# Prints the kernels grouped by name, heaviest first; raw CSV under $OUT.
set -uo pipefail
BENCH=$(cd "$1" && pwd)
OUT=${OUT:-/tmp/kvkeep-profile}
mkdir -p "$OUT"
KVKEEP_BENCH_PROFILE=decode "$BENCH/gpu_model_bench" > "$OUT/make_model.log" 2>&1 || tail -3 "$OUT/make_model.log"  # makes the model once
for phase in ${KVKEEP_PROFILE_PHASES:-decode prefill}; do
  KVKEEP_BENCH_PROFILE=$phase ncu --profile-from-start off --clock-control none \
    --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu_$phase.csv" \
    "$BENCH/gpu_model_bench" > "$OUT/ncu_$phase.log" 2>&1 || tail -5 "$OUT/ncu_$phase.log"
  python3 - "$OUT/ncu_$phase.csv" "$phase" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]
ki, vi, ui = hdr.index("Kernel Name"), hdr.index("Metric Value"), hdr.index("Metric Unit")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[1:]:
    v = float(r[vi].replace(",", ""))
    unit = r[ui]
    v = v / 1e3 if unit in ("ns", "nsecond") else (v * 1e3 if unit in ("ms", "msecond") else v)  # us
    name = r[ki][:90]
    tot[name] += v; cnt[name] += 1
s = sum(tot.values())
print(f"== {sys.argv[2]}: {sum(cnt.values())} kernels, {s/1e3:.3f} ms of kernel time")
for n, v in sorted(tot.items(), key=lambda x: -x[1])[:25]:
    print(f"{v/1e3:9.3f} ms {100*v/s:5.1f}% x{cnt[n]:4d}  {n}")
PY
done
