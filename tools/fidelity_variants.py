#!/usr/bin/env python3
"""Tabulates `kvkeep eval-episodes --fidelity` reports of one plan, one knob at a time.

Usage: tools/fidelity_variants.py BASE.json [NAME=VARIANT.json ...]

BASE must hold full and recent (and snapkv) at the variants' budgets; a variant run with
`--methods episodic ...` holds only its own method. Its gap closed and its wins are taken
against BASE's full, recent and snapkv, conversation by conversation; a variant that ran
its own full and recent (e.g. on fewer questions) is compared with those instead. Prints
one Markdown table: mean NLL per answer token, gap closed, conversations won against
recent and snapkv, the kept shares of the last 256 positions and of the 4 sinks.
"""
import json
import sys


def by_key(methods):
    return {(m["method"], m["fraction"]): m for m in methods if m.get("caches", 1) > 0}


def rows(name, report, base):
    own = by_key(report["methods"])
    ref = own if ("full", 1.0) in own else by_key(base["methods"])
    ref_conv = {c["sample_id"]: by_key(c["methods"]) for c in
                (report if ("full", 1.0) in own else base)["per_conversation"]}
    for (method, f), m in sorted(own.items(), key=lambda kv: (kv[0][1] != 1.0, -kv[0][1])):
        if method in ("full", "recent") and name != "base" and ref is not own:
            continue
        if method == "full":
            print(f"| {name} | full | 1 | {m['mean_nll']:.3f} | 100% | | | 1.00 | 1.00 | "
                  f"{report['questions']} |")
            continue
        full, recent = ref[("full", 1.0)]["mean_nll"], ref[("recent", f)]["mean_nll"]
        wins_r = wins_s = n = 0
        for c in report["per_conversation"]:
            mine = by_key(c["methods"]).get((method, f))
            theirs = ref_conv.get(c["sample_id"], {})
            if mine is None or ("recent", f) not in theirs:
                continue
            n += 1
            wins_r += mine["mean_nll"] < theirs[("recent", f)]["mean_nll"]
            snap = theirs.get(("snapkv", f))
            wins_s += snap is not None and mine["mean_nll"] < snap["mean_nll"]
        gap = (recent - m["mean_nll"]) / (recent - full)
        print(f"| {name} | {method} | {f:g} | {m['mean_nll']:.3f} | {100 * gap:.0f}% | "
              f"{wins_r}/{n} | {wins_s}/{n} | {m.get('kept_recent', 0):.2f} | "
              f"{m.get('kept_sinks', 0):.2f} | {report['questions']} |")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 1
    base = json.load(open(argv[1]))
    print("| variant | method | budget | NLL/token | gap closed | wins vs recent | "
          "wins vs snapkv | kept last 256 | kept sinks | questions |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows("base", base, base)
    for arg in argv[2:]:
        name, _, path = arg.partition("=")
        rows(name, json.load(open(path)), base)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
