#!/usr/bin/env python3
"""Table, JSON and PNG of bench/gpu/agents.sh's runs (issue 12).

Reads OUT/n<N>/<policy>/{sessions.csv,turns.csv,stats.json,gpu_util.csv} and writes
OUT/agents.json, OUT/agents.txt (the table it prints) and OUT/agents_jct_cdf.png (job
completion time CDF per policy, one panel per load).
"""
import argparse
import csv
import json
import pathlib
import sys


def percentile(values, q):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def mean(values):
    return sum(values) / len(values) if values else None


def read_csv(path):
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def stat(stats, path):
    node = stats
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def summarise(run):
    sessions = [r for r in read_csv(run / "sessions.csv") if not r.get("error")]
    turns = read_csv(run / "turns.csv")
    stats = json.loads((run / "stats.json").read_text()) if (run / "stats.json").exists() else {}
    stats = stats.get("stats", stats)  # `kvkeep status --format json` wraps it
    util = []
    for row in read_csv_noheader(run / "gpu_util.csv"):
        try:
            util.append(float(row[1]))
        except (IndexError, ValueError):
            pass
    jct = [float(r["jct_s"]) for r in sessions]
    ttft = [float(t["ttft_ms"]) for t in turns]

    def total(key):
        return sum(int(float(t[key])) for t in turns)

    return {
        "sessions": len(sessions),
        "failed_sessions": sum(1 for r in read_csv(run / "sessions.csv") if r.get("error")),
        "turns": len(turns),
        "jct_s": jct,
        "mean_jct_s": mean(jct),
        "p99_jct_s": percentile(jct, 99),
        "mean_ttft_ms": mean(ttft),
        "p99_ttft_ms": percentile(ttft, 99),
        "prompt_tokens": total("prompt_tokens") if turns else 0,
        "recomputed_tokens": total("recomputed_tokens") if turns else 0,
        "cached_device_tokens": total("cached_device") if turns else 0,
        "cached_host_tokens": total("cached_host") if turns else 0,
        "cached_disk_tokens": total("cached_disk") if turns else 0,
        "pins_granted": stat(stats, "pins/granted"),
        "pins_used": stat(stats, "pins/used"),
        "pins_expired": stat(stats, "pins/expired"),
        "pins_violated": stat(stats, "pins/violated"),
        "gpu_util_mean_pct": mean(util),
    }


def read_csv_noheader(path):
    if not path.exists():
        return []
    with path.open() as f:
        return [[c.strip() for c in row] for row in csv.reader(f)]


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--turns", type=int)
    ap.add_argument("--time-scale", type=float)
    ap.add_argument("--kv-blocks", type=int)
    ap.add_argument("--host-blocks", type=int)
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    loads = sorted((int(d.name[1:]), d) for d in out.glob("n*") if d.name[1:].isdigit())
    result = {"params": {"turns": a.turns, "time_scale": a.time_scale,
                         "kv_blocks": a.kv_blocks, "host_blocks": a.host_blocks},
              "loads": {}}
    lines = []
    header = (f"{'agents':>6} {'policy':<10} {'JCT mean':>9} {'JCT p99':>8} {'TTFT mean':>10} "
              f"{'TTFT p99':>9} {'recomputed':>10} {'dev tok':>9} {'host tok':>9} {'disk tok':>8} "
              f"{'pins g/u/e/v':>16} {'GPU %':>6}")
    lines.append(header)
    for n, d in loads:
        result["loads"][n] = {}
        for run in sorted(p for p in d.iterdir() if p.is_dir()):
            s = summarise(run)
            result["loads"][n][run.name] = s
            pins = "/".join("-" if s[k] is None else str(int(s[k])) for k in
                            ("pins_granted", "pins_used", "pins_expired", "pins_violated"))
            lines.append(f"{n:>6} {run.name:<10} {fmt(s['mean_jct_s'], '9.2f')} "
                         f"{fmt(s['p99_jct_s'], '8.2f')} {fmt(s['mean_ttft_ms'], '10.1f')} "
                         f"{fmt(s['p99_ttft_ms'], '9.1f')} {s['recomputed_tokens']:>10} "
                         f"{s['cached_device_tokens']:>9} {s['cached_host_tokens']:>9} "
                         f"{s['cached_disk_tokens']:>8} {pins:>16} "
                         f"{fmt(s['gpu_util_mean_pct'], '6.1f')}")
        runs = result["loads"][n]
        for other in ("lru", "fixed-ttl"):
            if "ttl" in runs and other in runs and runs["ttl"]["mean_jct_s"]:
                ratio = runs[other]["mean_jct_s"] / runs["ttl"]["mean_jct_s"]
                runs["ttl"][f"jct_ratio_{other}_over_ttl"] = ratio
                lines.append(f"{'':>6} {other} mean JCT / ttl mean JCT = {ratio:.3f}")
    text = "\n".join(lines)
    print(text)
    (out / "agents.txt").write_text(text + "\n")
    (out / "agents.json").write_text(json.dumps(result, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no PNG", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, max(1, len(loads)), figsize=(5 * max(1, len(loads)), 4),
                             squeeze=False)
    for ax, (n, _) in zip(axes[0], loads):
        for policy, s in result["loads"][n].items():
            v = sorted(s["jct_s"])
            if v:
                ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", label=policy)
        ax.set_title(f"{n} agents")
        ax.set_xlabel("job completion time (s)")
        ax.set_ylabel("fraction of agents")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "agents_jct_cdf.png", dpi=110)
    print(f"plot: {out / 'agents_jct_cdf.png'}")


if __name__ == "__main__":
    main()
