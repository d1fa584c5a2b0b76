#!/usr/bin/env python3
"""Plots bench/policy_bench's result: mean job completion time against load, one line per
policy. Usage: policy_bench_plot.py DIR/policy_bench.json OUT.png (matplotlib, from .venv)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        loads = json.load(f)["loads"]
    policies = []
    for load in loads:
        for name in load["policies"]:
            if name not in policies:
                policies.append(name)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in policies:
        xs = [l["agents"] for l in loads if name in l["policies"]]
        ys = [l["policies"][name]["mean_jct_s"] for l in loads if name in l["policies"]]
        ax.plot(xs, ys, marker="o", label=name)
    floor = [l for l in loads if "floor" in l]
    if floor:  # the anchor: ttl with a pool that never evicts
        ax.plot([l["agents"] for l in floor], [l["floor"]["mean_jct_s"] for l in floor],
                color="black", linestyle="--", label="floor (unlimited memory)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([l["agents"] for l in loads])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("concurrent agents (Poisson arrivals)")
    ax.set_ylabel("mean job completion time (s, simulated)")
    ax.set_title("policy_bench: 8B on an H100, simulated")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
