"""llama.cpp's side of bench/gguf_cpu_bench.sh, run in the llama-cpp-python venv.

  python gguf_cpu_llama.py ids  --model F --text FILE --tokens 512 --out ids.json
      the prompt: FILE's text tokenized by llama.cpp, first --tokens ids (no BOS)
  python gguf_cpu_llama.py run  --model F --ids ids.json --threads 2 --decode 64 --out DIR
      prefill tok/s (best of --reps) and greedy decode tok/s at batch 1, as kvkeep measures
      them; writes DIR/llama.json and DIR/llama.logits.f32 ([1 + decode][vocab])
  python gguf_cpu_llama.py compare --dir DIR
      greedy ids compared up to the first near-tie, logits with a tolerance (see compare())
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def load_llama(model, threads, n_ctx):
    from llama_cpp import Llama

    return Llama(model_path=model, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                 n_threads_batch=threads, logits_all=False, verbose=False)


def last_logits(llm):
    """The logits of the last token evaluated (llm.scores holds only n_batch rows)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32)


def cmd_ids(a):
    llm = load_llama(a.model, 1, 4096)
    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[: a.tokens]
    if len(ids) < a.tokens:
        sys.exit(f"{a.text} has only {len(ids)} tokens")
    with open(a.out, "w") as f:
        json.dump(ids, f)


def cmd_run(a):
    with open(a.ids) as f:
        ids = json.load(f)
    llm = load_llama(a.model, a.threads, len(ids) + a.decode + 16)
    best = float("inf")
    for _ in range(max(1, a.reps)):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        best = min(best, time.perf_counter() - t0)
    rows = [last_logits(llm)]
    greedy = [int(np.argmax(rows[0]))]
    t0 = time.perf_counter()
    for _ in range(a.decode):
        llm.eval([greedy[-1]])
        row = last_logits(llm)
        rows.append(row)
        greedy.append(int(np.argmax(row)))
    decode_s = time.perf_counter() - t0
    greedy.pop()
    import llama_cpp

    res = {"engine": "llama.cpp", "llama_cpp_python": llama_cpp.__version__,
           "threads": a.threads, "prompt_tokens": len(ids), "prefill_s": best,
           "prefill_tok_s": len(ids) / best, "decode_steps": a.decode,
           "decode_tok_s": a.decode / decode_s, "greedy": greedy, "vocab": len(rows[0])}
    with open(os.path.join(a.out, a.name + ".json"), "w") as f:
        json.dump(res, f, indent=2)
    np.stack(rows).astype(np.float32).tofile(os.path.join(a.out, "llama.logits.f32"))
    print(f"llama.cpp ({a.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}): prefill {res['prefill_tok_s']:.1f} tok/s "
          f"({len(ids)} tokens), decode {res['decode_tok_s']:.1f} tok/s")


def compare(dir_):
    """Both engines decode greedily from the same prompt. Up to their first disagreement they
    saw the same context, so their logits rows are comparable there. Tolerance: llama.cpp
    rounds activations to Q8 (and kvkeep's quantised path does too), so logits differ by a
    few hundredths of max |logit|; a step is a near-tie when either engine's top-2 gap is
    below twice the largest logit difference seen so far (then a different pick is not a
    mismatch, and the texts are compared only up to there)."""
    k = json.load(open(os.path.join(dir_, "kvkeep.json")))
    l = json.load(open(os.path.join(dir_, "llama.json")))
    # The anchor's best figures over its runs (llama*.json: OpenMP active and passive
    # waiting; spinning threads lose badly when other processes share the cores).
    for other in sorted(os.listdir(dir_)):
        if other.startswith("llama") and other.endswith(".json") and other != "llama.json":
            o = json.load(open(os.path.join(dir_, other)))
            for key in ("prefill_tok_s", "decode_tok_s"):
                l[key] = max(l[key], o[key])
    vocab = k["vocab"]
    kl = np.fromfile(os.path.join(dir_, "kvkeep.logits.f32"), dtype=np.float32).reshape(-1, vocab)
    ll = np.fromfile(os.path.join(dir_, "llama.logits.f32"), dtype=np.float32).reshape(-1, vocab)
    steps = min(len(kl), len(ll), len(k["greedy"]), len(l["greedy"]))
    max_diff, rel, agree, verdict = 0.0, 0.0, 0, "identical"
    for s in range(steps):
        diff = float(np.max(np.abs(kl[s] - ll[s])))
        max_diff = max(max_diff, diff)
        rel = max(rel, diff / float(np.max(np.abs(ll[s]))))
        if k["greedy"][s] == l["greedy"][s]:
            agree += 1
            continue
        gaps = [float(np.diff(np.sort(r)[-2:])[0]) for r in (kl[s], ll[s])]
        tie = min(gaps) < 2 * max_diff
        verdict = (f"first difference at step {s}: a near-tie (top-2 gaps {gaps[0]:.3f} / "
                   f"{gaps[1]:.3f} < 2 x {max_diff:.3f})" if tie else
                   f"MISMATCH at step {s}: top-2 gaps {gaps[0]:.3f} / {gaps[1]:.3f}, "
                   f"logit difference so far {max_diff:.3f}")
        break
    out = {"kvkeep_prefill_tok_s": k["prefill_tok_s"], "kvkeep_decode_tok_s": k["decode_tok_s"],
           "llama_prefill_tok_s": l["prefill_tok_s"], "llama_decode_tok_s": l["decode_tok_s"],
           "greedy_agree_steps": agree, "compared_steps": steps, "verdict": verdict,
           "max_abs_logit_diff": max_diff, "max_rel_logit_diff": rel,
           "prefill_ratio": k["prefill_tok_s"] / l["prefill_tok_s"],
           "decode_ratio": k["decode_tok_s"] / l["decode_tok_s"]}
    json.dump(out, open(os.path.join(dir_, "compare.json"), "w"), indent=2)
    print(f"greedy: {agree} of {steps} steps agree; {verdict}")
    print(f"logits (same context): max |diff| {max_diff:.4f} = {rel:.4f} of max |logit|")
    print(f"kvkeep / llama.cpp: prefill {out['prefill_ratio']:.2f}x, decode {out['decode_ratio']:.2f}x")
    return 0 if "MISMATCH" not in verdict else 1


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ids")
    s.add_argument("--model", required=True)
    s.add_argument("--text", required=True)
    s.add_argument("--tokens", type=int, default=512)
    s.add_argument("--out", required=True)
    s = sub.add_parser("run")
    s.add_argument("--model", required=True)
    s.add_argument("--ids", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--decode", type=int, default=64)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--out", required=True)
    s.add_argument("--name", default="llama", help="DIR/NAME.json (the logits: llama.logits.f32)")
    s = sub.add_parser("compare")
    s.add_argument("--dir", required=True)
    a = p.parse_args()
    if a.cmd == "ids":
        cmd_ids(a)
    elif a.cmd == "run":
        cmd_run(a)
    else:
        sys.exit(compare(a.dir))


if __name__ == "__main__":
    main()
