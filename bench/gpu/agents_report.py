#!/usr/bin/env python3
"""bench/gpu/agents.sh's helpers (issue 12): the run-time estimate, the held-out tool trace
that seeds a daemon's tool statistics, and the report.

  agents_report.py estimate TRACE --loads 4 8 --turns 4 --policies ttl lru ...
  agents_report.py seed-trace SEED_TRACE --exclude TRACE --exclude-first N --out FILE
  agents_report.py subset TRACE --turns 24 --max-tool-s 30 --out FILE
  agents_report.py subset TRACE --turns 24 --max-call-s 30 --straddle-s 2 --out FILE
  agents_report.py report RUNS --out OUT [--sim policy_bench.json] ...

`report` reads RUNS/n<N>/<policy>/{sessions.csv,turns.csv,stats.json,gpu_util.csv} and
writes OUT/agents.json, OUT/agents.txt (the table it prints) and OUT/agents_jct_cdf.png
(job completion time CDF per policy, one panel per load). With --sim (bench/policy_bench's
JSON for the same sessions, loads, policies and turn cap) each run gets the simulator's
mean JCT and its error against the measured one. A run cut at the budget (`replay run
--deadline-s`) is marked "cut k/n" (k of n sessions finished; its JCT figures cover those
only and it is left out of the ratios and the simulator's error); a planned run that was
not started is listed as skipped with the simulator's figures.
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
    all_sessions = read_csv(run / "sessions.csv")
    sessions = [r for r in all_sessions if not r.get("error")]
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
        "failed_sessions": sum(1 for r in all_sessions if r.get("error")),
        "cut_sessions": sum(1 for r in all_sessions if "deadline_exceeded" in r.get("error", "")),
        "planned_sessions": len(all_sessions),
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
        "gpu": (run / "gpu.txt").read_text().strip() if (run / "gpu.txt").exists() else None,
    }


def read_csv_noheader(path):
    if not path.exists():
        return []
    with path.open() as f:
        return [[c.strip() for c in row] for row in csv.reader(f)]


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def read_trace(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def session_timing(session, turns):
    """Tool time and think time a replay of the first `turns` model turns waits through
    (the waits after the last turn included, as the replayer runs up to the next one)."""
    waits, seen, outputs = 0.0, 0, 0
    for e in session["events"]:
        if e["type"] == "model":
            if turns and seen >= turns:
                break
            seen += 1
            outputs += len(e.get("text", "")) + sum(len(c.get("arguments", ""))
                                                     for c in e.get("tool_calls", []))
        elif e["type"] in ("tool_end", "think"):
            waits += max(0.0, e.get("duration_s", 0.0))
    return waits, seen, outputs


def estimate(a):
    trace = read_trace(a.trace)
    print(f"estimate: {len(a.policies)} policies"
          + (f" + {len(a.seed_policies)} seeded" if a.seed_policies else "")
          + f" at loads {a.loads}, {a.turns} turns, {a.start_s:.0f} s a daemon start")
    runs_s = []
    for n in a.loads:
        sessions = trace[:n]
        longest = 0.0
        for s in sessions:
            waits, seen, _ = session_timing(s, a.turns)
            # ~1 s of forced decode a turn on the 8B shape, slower as the batch grows.
            longest = max(longest, waits * a.time_scale + seen * 1.0 * max(1.0, n / 8))
        runs = len(a.policies) + len(a.seed_policies)
        run_s = a.start_s + longest + 3
        runs_s += [run_s] * runs
        print(f"  {n:>3} agents: ~{run_s:.0f} s a run, {runs} runs")
    # Side by side on a.lanes GPUs, longest first: each run goes to the lane that frees first.
    lanes = [0.0] * max(1, a.lanes)
    for run_s in sorted(runs_s, reverse=True):
        lanes[lanes.index(min(lanes))] += run_s
    total = max(lanes)
    if a.lanes > 1:
        print(f"  {len(runs_s)} runs on {a.lanes} GPUs side by side")
    total += 2 * a.start_s + (a.seed_lane_s + a.start_s if a.seed_policies else 0)
    print(f"estimated total: ~{total:.0f} s (budget {a.budget_s:.0f} s: runs past it are skipped"
          f"{'; OVER BUDGET' if total > a.budget_s else ''}); a rough figure: after the "
          f"calibration the simulator predicts each run, and that decides")


def seed_trace(a):
    measured = {s["session"] for s in read_trace(a.exclude)[: a.exclude_first]}
    calls = []
    for s in read_trace(a.seed_trace):
        if s["session"] in measured:
            continue
        begin = None
        for e in s["events"]:
            if e["type"] == "tool_begin":
                begin = e
            elif e["type"] == "tool_end" and begin is not None:
                d = e.get("duration_s", 0.0)
                if e.get("timing", "none") != "none" and 0 <= d <= a.lane_s:
                    calls.append((begin, d))
                begin = None
    lanes = []  # first fit, longest first: few lanes of at most lane_s each
    for begin, d in sorted(calls, key=lambda c: -c[1]):
        for lane in lanes:
            if lane["s"] + d <= a.lane_s:
                break
        else:
            lane = {"s": 0.0, "events": []}
            lanes.append(lane)
        lane["s"] += d
        lane["events"] += [
            {"type": "tool_begin", "tool": begin["tool"], "command": begin.get("command", ""),
             "call_id": begin.get("call_id", "")},
            {"type": "tool_end", "tool": begin["tool"], "call_id": begin.get("call_id", ""),
             "text": "ok", "duration_s": d, "timing": "recorded"}]
    with open(a.out, "w") as f:
        for i, lane in enumerate(lanes):
            f.write(json.dumps({"format": "kvkeep-trace", "version": 1, "session": f"seed-{i}",
                                "source": "seed", "source_file": a.seed_trace, "model": "",
                                "arrival_s": 0.0, "events": lane["events"]}) + "\n")
    print(f"seed: {len(calls)} tool calls from {a.seed_trace} (the first {a.exclude_first} "
          f"sessions of the measured trace left out) in {len(lanes)} lanes of <= {a.lane_s} s",
          file=sys.stderr)
    if not lanes:
        sys.exit("seed: no held-out tool calls")


def tool_calls(session, turns):
    """The durations of the tool calls a replay of the first `turns` model turns waits on
    (the one after the last turn included, as session_timing counts it)."""
    seen, calls = 0, []
    for e in session["events"]:
        if e["type"] == "model":
            if turns and seen >= turns:
                break
            seen += 1
        elif e["type"] == "tool_end":
            calls.append(max(0.0, e.get("duration_s", 0.0)))
    return calls


def subset(a):
    """The sessions, in trace order, whose first --turns model turns hold at most --max-tool-s
    seconds of tool and think time; with --max-call-s, every tool call of those turns at most
    that long; with --straddle-s, at least one call longer than that (a tool the 2 s rule of
    fixed-ttl would not pin beside short ones it would). Every run and the simulator use the
    first N of them."""
    def keep(s):
        calls = tool_calls(s, a.turns)
        return (session_timing(s, a.turns)[0] <= a.max_tool_s
                and (a.max_call_s is None or max(calls, default=0.0) <= a.max_call_s)
                and (a.straddle_s is None or any(c > a.straddle_s for c in calls)))
    kept = [s for s in read_trace(a.trace) if keep(s)]
    with open(a.out, "w") as f:
        for s in kept:
            f.write(json.dumps(s) + "\n")
    print(f"subset: {len(kept)} sessions of {a.trace} in their first {a.turns} turns hold "
          f"<= {a.max_tool_s:g} s of tool time"
          + (f", every call <= {a.max_call_s:g} s" if a.max_call_s is not None else "")
          + (f", one or more > {a.straddle_s:g} s" if a.straddle_s is not None else ""),
          file=sys.stderr)
    if not kept:
        sys.exit("subset: no session left")


def sim_figures(path):
    """{(agents, policy): mean JCT} from bench/policy_bench's JSON."""
    out = {}
    if not path or not pathlib.Path(path).exists():
        return out
    doc = json.loads(pathlib.Path(path).read_text())
    for load in doc.get("loads", []):
        for policy, fig in load.get("policies", {}).items():
            out[(int(load["agents"]), policy)] = fig
    return out


def report(a):
    runs_dir = pathlib.Path(a.runs)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sim = sim_figures(a.sim)
    sim_fitted = sim_figures(a.sim_fitted)
    loads = sorted((int(d.name[1:]), d) for d in runs_dir.glob("n*") if d.name[1:].isdigit())
    result = {"params": {"turns": a.turns, "time_scale": a.time_scale, "kv_blocks": a.kv_blocks,
                         "host_blocks": a.host_blocks, "device": a.device, "model": a.model,
                         "workload": a.workload, "max_tokens": a.max_tokens,
                         "gpus_side_by_side": a.lanes},
              "loads": {}, "skipped": []}
    lines = []
    header = (f"{'agents':>6} {'policy':<14} {'JCT mean':>9} {'JCT p99':>8} {'TTFT mean':>10} "
              f"{'TTFT p99':>9} {'recomputed':>10} {'dev tok':>9} {'host tok':>9} {'disk tok':>8} "
              f"{'pins g/u/e/v':>16} {'GPU %':>6} {'sim JCT':>8} {'sim err':>8} {'fit err':>8}")
    lines.append(header)
    errors, fitted_errors = [], []
    by_policy, fitted_by_policy = {}, {}
    for n, d in loads:
        result["loads"][n] = {}
        for run in sorted(p for p in d.iterdir() if p.is_dir()):
            s = summarise(run)
            s["cut"] = s["cut_sessions"] > 0 or not (run / "sessions.csv").exists()
            fig = sim.get((n, run.name))
            if fig:
                s["sim_wall_s"] = fig.get("sim_end_s")
            if fig and s["mean_jct_s"] and not s["cut"]:
                s["sim_mean_jct_s"] = fig["mean_jct_s"]
                s["sim_p99_jct_s"] = fig["p99_jct_s"]
                s["sim_recomputed_tokens"] = fig["recomputed_tokens"]
                s["sim_error"] = fig["mean_jct_s"] / s["mean_jct_s"] - 1
                errors.append(abs(s["sim_error"]))
                by_policy.setdefault(run.name, []).append(s["sim_error"])
            fitted = sim_fitted.get((n, run.name))
            if fitted and s["mean_jct_s"] and not s["cut"]:
                s["sim_fitted_mean_jct_s"] = fitted["mean_jct_s"]
                s["sim_fitted_error"] = fitted["mean_jct_s"] / s["mean_jct_s"] - 1
                fitted_errors.append(abs(s["sim_fitted_error"]))
                fitted_by_policy.setdefault(run.name, []).append(s["sim_fitted_error"])
            result["loads"][n][run.name] = s
            pins = "/".join("-" if s[k] is None else str(int(s[k])) for k in
                            ("pins_granted", "pins_used", "pins_expired", "pins_violated"))
            err = s.get("sim_error")
            fit_err = s.get("sim_fitted_error")
            label = run.name
            if s["cut"]:
                label += f" cut {s['sessions']}/{s['planned_sessions']}"
            lines.append(f"{n:>6} {label:<14} {fmt(s['mean_jct_s'], '9.2f')} "
                         f"{fmt(s['p99_jct_s'], '8.2f')} {fmt(s['mean_ttft_ms'], '10.1f')} "
                         f"{fmt(s['p99_ttft_ms'], '9.1f')} {s['recomputed_tokens']:>10} "
                         f"{s['cached_device_tokens']:>9} {s['cached_host_tokens']:>9} "
                         f"{s['cached_disk_tokens']:>8} {pins:>16} "
                         f"{fmt(s['gpu_util_mean_pct'], '6.1f')} "
                         f"{fmt(s.get('sim_mean_jct_s'), '8.2f')} "
                         f"{'-' if err is None else format(100 * err, '+7.1f') + '%':>8} "
                         f"{'-' if fit_err is None else format(100 * fit_err, '+7.1f') + '%':>8}")
        runs = {k: v for k, v in result["loads"][n].items() if not v["cut"]}
        for base in sorted(r for r in runs if not r.endswith("+seed")):
            if base + "+seed" in runs and runs[base]["mean_jct_s"]:
                ratio = runs[base]["mean_jct_s"] / runs[base + "+seed"]["mean_jct_s"]
                runs[base + "+seed"]["jct_ratio_unseeded_over_seeded"] = ratio
                lines.append(f"{'':>6} {base} mean JCT / {base}+seed mean JCT = {ratio:.3f}")
        for ttl in ("ttl", "ttl+seed"):
            for other in ("lru", "fixed-ttl"):
                if ttl in runs and other in runs and runs[ttl]["mean_jct_s"]:
                    ratio = runs[other]["mean_jct_s"] / runs[ttl]["mean_jct_s"]
                    runs[ttl][f"jct_ratio_{other}_over_{ttl}"] = ratio
                    lines.append(f"{'':>6} {other} mean JCT / {ttl} mean JCT = {ratio:.3f}")
    for n in a.loads or []:
        for policy in a.policies or []:
            if policy in result["loads"].get(n, {}):
                continue
            fig = sim.get((n, policy), {})
            result["skipped"].append({"agents": n, "policy": policy,
                                      "sim_mean_jct_s": fig.get("mean_jct_s"),
                                      "sim_wall_s": fig.get("sim_end_s")})
            lines.append(f"{n:>6} {policy:<14} not run (over the budget or not reached); "
                         f"simulator: mean JCT {fmt(fig.get('mean_jct_s'), '.1f')} s, "
                         f"run {fmt(fig.get('sim_end_s'), '.0f')} s")
    if errors:
        result["sim_max_abs_error"] = max(errors)
        lines.append(f"simulator (bench/policy_bench, this run's cost model and tokens): "
                     f"|error| of mean JCT at most {100 * max(errors):.1f}%, "
                     f"mean {100 * sum(errors) / len(errors):.1f}% over {len(errors)} runs")
        result["sim_error_by_policy"] = by_policy
        lines.append("simulator error by policy: " + ", ".join(
            f"{p} " + "/".join(f"{100 * e:+.1f}%" for e in v) for p, v in sorted(by_policy.items())))
    if fitted_errors:
        result["sim_fitted_max_abs_error"] = max(fitted_errors)
        result["sim_fitted_error_by_policy"] = fitted_by_policy
        lines.append(f"simulator with step prices fitted to the runs' logged steps: |error| of "
                     f"mean JCT at most {100 * max(fitted_errors):.1f}%, mean "
                     f"{100 * sum(fitted_errors) / len(fitted_errors):.1f}% over "
                     f"{len(fitted_errors)} runs; by policy: " + ", ".join(
                         f"{p} " + "/".join(f"{100 * e:+.1f}%" for e in v)
                         for p, v in sorted(fitted_by_policy.items())))
    if a.lanes > 1:
        lines.append(f"runs side by side on {a.lanes} GPUs of one host, one run a GPU "
                     f"(each run's GPU in agents.json)")
    text = "\n".join(lines)
    print(text)
    (out / "agents.txt").write_text(text + "\n")
    (out / "agents.json").write_text(json.dumps(result, indent=1))
    plot(result, loads, out)


def client_gap(a):
    """The replay client's seconds per turn outside the engine, from turns.csv files:
    (latency - ttft - decode) of each turn (the request until the engine has it, the reply
    after the last token) plus the gap between a reply and the next request less the tool
    wait (the tool_begin and tool_end calls). Prints the medians: the simulator's
    --client-round-trip-ms is their sum."""
    around, between = [], []
    for path in a.turns:
        by_session = {}
        for row in read_csv(pathlib.Path(path)):
            by_session.setdefault(row["session"], []).append(row)
        for rows in by_session.values():
            rows.sort(key=lambda r: int(r["turn"]))
            for r in rows:
                around.append(float(r["latency_ms"]) - float(r["ttft_ms"]) - float(r["decode_ms"]))
            for prev, nxt in zip(rows, rows[1:]):
                end_s = float(prev["start_s"]) + float(prev["latency_ms"]) / 1000
                between.append(1000 * (float(nxt["start_s"]) - end_s - float(nxt["tool_wait_s"])))
    if not around:
        sys.exit("client-gap: no turns")
    a_ms, b_ms = percentile(around, 50), percentile(between, 50) if between else 0.0
    print(f"client-gap: {len(around)} turns; around a turn (p50) {a_ms:.2f} ms, between turns "
          f"(p50) {b_ms:.2f} ms; client round trip {a_ms + b_ms:.2f} ms")


def plot(result, loads, out):
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
                label = policy + (" (cut)" if s.get("cut") else "")
                ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", label=label)
        ax.set_title(f"{n} agents")
        ax.set_xlabel("job completion time (s)")
        ax.set_ylabel("fraction of agents")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "agents_jct_cdf.png", dpi=110)
    print(f"plot: {out / 'agents_jct_cdf.png'}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("estimate")
    e.add_argument("trace")
    e.add_argument("--loads", type=int, nargs="+", required=True)
    e.add_argument("--turns", type=int, default=0)
    e.add_argument("--policies", nargs="+", required=True)
    e.add_argument("--seed-policies", type=lambda v: v.split(), default=[])
    e.add_argument("--seed-lane-s", type=float, default=20)
    e.add_argument("--start-s", type=float, default=20)
    e.add_argument("--time-scale", type=float, default=1)
    e.add_argument("--budget-s", type=float, default=540)
    e.add_argument("--lanes", type=int, default=1, help="GPUs the runs spread over")
    t = sub.add_parser("seed-trace")
    t.add_argument("seed_trace")
    t.add_argument("--exclude", required=True, help="the measured trace")
    t.add_argument("--exclude-first", type=int, required=True, help="its sessions measured")
    t.add_argument("--lane-s", type=float, default=20)
    t.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("runs")
    r.add_argument("--out", required=True)
    r.add_argument("--sim")
    r.add_argument("--sim-fitted", help="policy_bench JSON with step prices fitted to the runs")
    r.add_argument("--turns", type=int)
    r.add_argument("--time-scale", type=float)
    r.add_argument("--kv-blocks", type=int)
    r.add_argument("--host-blocks", type=int)
    r.add_argument("--device")
    r.add_argument("--model")
    r.add_argument("--workload", default="default")
    r.add_argument("--max-tokens", type=int, default=0)
    r.add_argument("--loads", type=int, nargs="*", help="planned loads (to list skipped runs)")
    r.add_argument("--policies", nargs="*", help="planned policies")
    r.add_argument("--lanes", type=int, default=1, help="GPUs the runs spread over")
    u = sub.add_parser("subset")
    u.add_argument("trace")
    u.add_argument("--turns", type=int, required=True)
    u.add_argument("--max-tool-s", type=float, default=float("inf"))
    u.add_argument("--max-call-s", type=float, default=None)
    u.add_argument("--straddle-s", type=float, default=None)
    u.add_argument("--out", required=True)
    g = sub.add_parser("client-gap")
    g.add_argument("turns", nargs="+", help="turns.csv files of kvkeep replay run")
    a = ap.parse_args()
    {"estimate": estimate, "seed-trace": seed_trace, "report": report, "subset": subset,
     "client-gap": client_gap}[a.cmd](a)


if __name__ == "__main__":
    main()
