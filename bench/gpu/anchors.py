"""Anchors for bench/gpu, measured in the same run as kvkeep's kernels.

PyTorch SDPA on dense KV (Llama-3-8B attention shape: 32 q heads, 8 KV heads, d=128, bf16),
the device copy bandwidth; with --hf instead HF transformers' LlamaForCausalLM with
random bf16 weights. Kernel timing: bench() below (L2 flushed by a 256 MB read before
every call, host launch latency outside the interval, median), the same method as
gpu_attention_bench.cu. Follows ../shared/bench/gpu_anchors.py. Writes $OUT/anchors.json (--hf: $OUT/anchors_hf.json).
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HQ, HKV, D = 32, 8, 128


def bench(fn, iters=30, warm=5):
    """Median ms per call of fn, timed like gpu_attention_bench.cu's MedianMs (triton do_bench
    style): warm-up and one synchronize; then per call, read a 256 MB buffer (a sum into a
    preallocated scalar: flushes L2 and leaves it clean, where zeroing the buffer would leave
    ~50 MB of dirty lines written back inside the timed call), record a start event, call fn,
    record an end event, with no host synchronize between calls (the host runs ahead, so its
    launch latency is not inside the interval); one synchronize at the end and the median of
    the per-call event intervals."""
    flush = torch.zeros(64 * 1024**2, dtype=torch.float32, device="cuda")  # 256 MB
    sink = torch.empty((), dtype=torch.float32, device="cuda")
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        torch.sum(flush, 0, out=sink)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    ts = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return ts[len(ts) // 2]


def main():
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    if "--hf" in sys.argv:
        hf(res)
        return
    n = 2 * 1024**3 // 2
    a = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), 20, 5)
    res["copy_GBps_rw"] = round(2 * a.numel() * 2 / ms / 1e6, 1)
    del a, b
    for B, L in [(64, 4096), (1, 32768), (128, 2048), (16, 8192)]:
        q = torch.randn(B, HQ, 1, D, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(B, HKV, L, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn_like(k)
        ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
        res[f"decode_B{B}_L{L}_sdpa_GBps"] = round(2 * k.numel() * 2 / ms / 1e6, 1)
        del q, k, v
    L = 8192
    q = torch.randn(1, HQ, L, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, HKV, L, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
               10, 3)
    res[f"prefill_B1_L{L}_sdpa_TFLOPs"] = round(4 * HQ * L * L * D / 2 / ms / 1e9, 1)
    del q, k, v
    write(res, "anchors.json")


def hf(res):
    if True:
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                          max_position_embeddings=32768, rope_theta=500000.0)
        cfg._attn_implementation = "sdpa"
        with torch.device("cuda"):
            m = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        ids = torch.randint(0, 128000, (1, 8192), device="cuda")
        with torch.no_grad():
            ms = bench(lambda: m(ids, use_cache=False, logits_to_keep=1), 3, 1)
        res["hf_prefill_B1_P8192_tok_per_s"] = round(8192 / ms * 1e3)
        ids = torch.randint(0, 128000, (1, 2048), device="cuda")
        with torch.no_grad():
            m.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            torch.cuda.synchronize()
            t = time.time()
            m.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
            torch.cuda.synchronize()
            res["hf_generate_B1_P2048_G64_tok_per_s"] = round(64 / (time.time() - t), 1)
        res["transformers"] = __import__("transformers").__version__
    write(res, "anchors_hf.json")


def write(res, name):
    print(json.dumps(res, indent=1))
    out = os.environ.get("OUT") or "."
    with open(os.path.join(out, name), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
