"""Prints the bench/gpu summary table from kvkeep_attention.json and anchors.json."""
import json
import os
import sys

out = os.environ.get("OUT") or "."


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


k, a = load("kvkeep_attention.json"), load("anchors.json")
m, h = load("kvkeep_model.json"), load("anchors_hf.json")
rows = []
copy = a.get("copy_GBps_rw")
rows.append(("device copy (GB/s r+w)", k.get("copy", {}).get("GBps"), "torch copy", copy, None))
targets = {"decode_B64_L4096": 2750, "decode_B1_L32768": 2500, "decode_B128_L2048": 2750,
           "decode_B16_L8192": None}
for case, target in targets.items():
    mine = k.get(case, {}).get("GBps")
    rows.append((case + " (GB/s)", mine, "SDPA dense", a.get(case + "_sdpa_GBps"), target))
    # Every other configuration of the case in the bench's order (suffixes: _nosplit,
    # _split<N>, _again (the plan, timed last)).
    for key, val in k.items():
        if key.startswith(case + "_") and isinstance(val, dict) and "GBps" in val:
            label = " " + key[len(case) + 1:].replace("_", " ")
            rows.append((case + label, val["GBps"], "", None, None))
mine = k.get("prefill_B1_L8192", {}).get("TFLOPs")
rows.append(("prefill causal 8k (TFLOP/s)", mine, "SDPA dense", a.get("prefill_B1_L8192_sdpa_TFLOPs"), 420))
for suffix, label in (("_wgmma_bn64", ", wgmma 64-key tiles"), ("_mma", ", mma.sync FA2 kernel")):
    v = k.get("prefill_B1_L8192" + suffix, {}).get("TFLOPs")
    if v is not None:
        rows.append(("prefill causal 8k" + label, v, "", None, None))
rows.append(("8B-shape decode B=1 @2k (tok/s)", m.get("decode_B1_P2048_tok_per_s"), "HF transformers",
             h.get("hf_generate_B1_P2048_G64_tok_per_s"), 150))
rows.append(("8B-shape prefill 8k (tok/s)", m.get("prefill_B1_P8192_tok_per_s"), "HF transformers",
             h.get("hf_prefill_B1_P8192_tok_per_s"), 35000))
swap = load("kvkeep_tiers_swap.json")
for c in swap.get("cases", []):
    for way, anchor in (("out", "d2h"), ("in", "h2d")):
        rows.append((f"swap-{way} {c['blocks']} blocks (GB/s)", c.get(f"swap_{way}_GBps"),
                     f"memcpy {anchor}", c.get(f"{anchor}_GBps"), None))
dup = swap.get("duplex")
if dup:  # both directions queued together, against the two batches one after the other
    rows.append(("swap both ways, 256 each (ms)", dup["together_ms"], "one then other",
                 dup["out_alone_ms"] + dup["in_alone_ms"], None))
g, hg = load("kvkeep_gguf_decode.json"), load("hf_gguf_decode.json")
for key, label in (("prefill_B1_P512", "GGUF prefill 512 (tok/s)"),
                   ("decode_B1_P512", "GGUF decode B=1 (tok/s)"),
                   ("decode_B64_P512", "GGUF decode B=64 (tok/s)")):
    for dt in ("bf16", "fp32"):
        rows.append((label if dt == "bf16" else "", g.get(key + "_tok_per_s"),
                     f"HF {dt}", hg.get(f"hf_{dt}_{key}_tok_per_s"), None))
lines = [f"device: {k.get('device', a.get('gpu', '?'))}",
         f"{'case':34} {'kvkeep':>9} {'anchor':>12} {'value':>9} {'ratio':>6} {'target':>7}"]
for name, mine, aname, aval, target in rows:
    ratio = f"{mine / aval:.2f}" if mine and aval else "-"
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"
    lines.append(f"{name:34} {fmt(mine):>9} {aname:>12} {fmt(aval):>9} {ratio:>6} {fmt(target):>7}")
text = "\n".join(lines)
print(text)
with open(os.path.join(out, "table.txt"), "w") as f:
    f.write(text + "\n")
