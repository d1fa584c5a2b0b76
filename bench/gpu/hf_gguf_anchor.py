"""The anchor for bench/gpu/gguf_decode_bench: HF transformers loading the same GGUF file
(`from_pretrained(dir, gguf_file=...)`, which dequantises; needs the `gguf` package), in
bf16 and fp32 on the GPU. Prefill tok/s of one 512-token prompt, and greedy decode tok/s at
batch 1 and 64 after 512-token prompts, 64 steps, through `generate` with its dynamic KV
cache. Writes $OUT/hf_gguf_decode.json.

    python3 bench/gpu/hf_gguf_anchor.py MODEL.gguf
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

PROMPT, STEPS = 512, 64


def timed(fn, iters):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    path = sys.argv[1]
    res = {"transformers": __import__("transformers").__version__, "torch": torch.__version__}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        m = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype).cuda().eval()
        vocab = m.config.vocab_size
        g = torch.Generator(device="cpu").manual_seed(7)
        with torch.no_grad():
            one = torch.randint(0, vocab, (1, PROMPT), generator=g).cuda()
            s = timed(lambda: m(one, use_cache=False, logits_to_keep=1), 5)
            res[f"hf_{name}_prefill_B1_P512_tok_per_s"] = round(PROMPT / s)
            for batch in (1, 64):
                ids = torch.randint(0, vocab, (batch, PROMPT), generator=g).cuda()
                gen = lambda: m.generate(ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=STEPS, min_new_tokens=STEPS,
                                         do_sample=False, pad_token_id=0)
                pre = lambda: m(ids, use_cache=False, logits_to_keep=1)
                total, prefill = timed(gen, 2), timed(pre, 2)
                # generate() includes the prompt's prefill; subtract it to compare decode.
                res[f"hf_{name}_decode_B{batch}_P512_tok_per_s"] = round(
                    STEPS * batch / max(total - prefill, 1e-9), 1)
        del m
        torch.cuda.empty_cache()
        print(json.dumps(res), flush=True)
    out = os.environ.get("OUT") or "."
    with open(os.path.join(out, "hf_gguf_decode.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
