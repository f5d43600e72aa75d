"""Long-context cost of attention: step time (forward + backward) per token of one attention
layer and of a small full model at growing sequence lengths, for dense MLA (the fused dense
kernel), V3.2 with the masked dense composite and V3.2 with the top-k kernel
(`sparse_mla_attention`), all in one invocation.

    python tools/bench/long_context.py [--seqs 1024,2048,4096,8192] [--topk 128] [--repeat 3]
                                       [--parts layer,model] [--variants "dense MLA,V3.2 kernel"] [--rounds 3]

Each (part, variant, seq) runs in a fresh process (its own compile and memory), the median of
`--repeat` timed steps after one warm-up; `--rounds` repeats the whole sweep, the variants
alternating at each length, and reports medians over the rounds (the ratio: the median of the
per-round ratios). A run that fails (e.g. out of memory) is reported and
the longer lengths of that variant are skipped. The model is configs/deepseek_v3/tiny.yaml (4
heads, nope 32 + rope 16, v 32), with configs/deepseek_v32/tiny.yaml's indexer (4 heads of 32,
top `--topk`) for the V3.2 variants, at batch 1; the layer part times layer 0's attention alone
(the frozen indexer included; the causal mask is its input, as in the model), the model part a
2-layer model's logits (the mask built inside). The last line is
`sparse kernel / dense at seq N: X.XXx` (dense step time over kernel step time) at the longest
length both ran.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

VARIANTS = {  # name -> (model_type, fused_ops)
    "dense MLA": ("deepseek_v3", ("mla_attention",)),
    "V3.2 composite": ("deepseek_v32", ("mla_attention",)),
    "V3.2 kernel": ("deepseek_v32", ("mla_attention", "sparse_mla_attention", "index_topk")),
}


def build(variant: str, seq: int, topk: int, layers: int):
    from mindformers_ds import config
    from mindformers_ds.models.deepseek import DeepseekForCausalLM
    model_type, fused = VARIANTS[variant]
    sets = [f"model.fused_ops=[{','.join(fused)}]", f"model.max_position_embeddings={max(seq, 256)}",
            f"model.num_hidden_layers={layers}", "model.num_nextn_predict_layers=0"]
    if model_type == "deepseek_v32":  # configs/deepseek_v32/tiny.yaml's indexer, with --topk
        sets += [f"model.model_type={model_type}", f"model.index_topk={topk}", "model.index_n_heads=4",
                 "model.index_head_dim=32"]
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v3/tiny.yaml"), sets, check_paths=False)
    mc = cfg.model.model_config()
    model = DeepseekForCausalLM.family_for(mc)(mc)
    model.init_weights(0)
    return model


def one(part: str, variant: str, seq: int, topk: int, repeat: int) -> dict:
    """Runs in the child: the median step time of one (part, variant, seq)."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn, Tensor
    ms.set_context(mode=ms.GRAPH_MODE)
    model = build(variant, seq, topk, 1 if part == "layer" else 2)
    rng = np.random.default_rng(0)
    if part == "layer":
        attn, rotary = model.model.layers[0].self_attn, model.model.rotary_emb
        hidden = model.config.hidden_size

        class Layer(nn.Cell):
            def __init__(self):
                super().__init__(auto_prefix=False)
                self.attn, self.rotary = attn, rotary

            def construct(self, x, pos, mask):
                cos, sin = self.rotary(pos)
                return self.attn(x, cos, sin, mask).sum()
        fn, weights = Layer(), attn.trainable_params()
        # the causal mask is the layer's input, as in the model, which builds it once per forward
        # for all its layers (building [S, S] costs 0.28 s at 8k here: the model part counts it)
        inputs = (Tensor(rng.standard_normal((1, seq, hidden)).astype(np.float32)),
                  Tensor(np.arange(seq, dtype=np.int32)[None]), Tensor(np.tril(np.ones((seq, seq), bool))[None, None]))
    else:
        class Logits(nn.Cell):
            def __init__(self):
                super().__init__(auto_prefix=False)
                self.model = model

            def construct(self, ids):
                return self.model(ids).sum()
        fn, weights = Logits(), model.trainable_params()
        inputs = (Tensor(rng.integers(0, model.config.vocab_size, (1, seq)).astype(np.int32)),)
    step = ms.jit(ms.value_and_grad(fn, grad_position=0 if part == "layer" else None, weights=weights))
    start = time.perf_counter()
    step(*inputs)[0].asnumpy()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step(*inputs)[0].asnumpy()
        times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "first_s": first}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="1024,2048,4096,8192")
    ap.add_argument("--topk", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--parts", default="layer,model")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="a comma list of: " + ", ".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        part, variant, seq = a.child.split("|")
        print("RESULT " + json.dumps(one(part, variant, int(seq), a.topk, a.repeat)))
        return
    from tools.bench.machine import describe_cpu
    print(describe_cpu())
    seqs = [int(s) for s in a.seqs.split(",")]
    runs, failed = {}, set()   # (part, variant, seq) -> [step s per round]; (part, variant) past its memory
    for rnd in range(a.rounds):   # rounds alternate the variants: the machine's load drifts
        for part in a.parts.split(","):
            for seq in seqs:
                for variant in a.variants.split(","):
                    if (part, variant) in failed:
                        continue
                    r = _child(part, variant, seq, a.topk, a.repeat)
                    if r is None:
                        print(f"{part} {variant} seq {seq}: failed; longer lengths skipped")
                        failed.add((part, variant))
                        continue
                    runs.setdefault((part, variant, seq), []).append(r["step_s"])
                    print(f"round {rnd + 1}: {part} {variant} seq {seq}: step {r['step_s']:.3f} s "
                          f"(first step {r['first_s']:.1f} s)", flush=True)
    results = {key: statistics.median(v) for key, v in runs.items()}
    for (part, variant, seq), step in results.items():
        prev = results.get((part, variant, seq // 2))
        growth = f", per-token growth {step / 2 / prev:.2f}x per doubling" if prev else ""
        print(f"{part} {variant} seq {seq}: median step {step:.3f} s, {step / seq * 1e6:.1f} us/token{growth}")
    both = [s for s in seqs if ("layer", "dense MLA", s) in runs and ("layer", "V3.2 kernel", s) in runs]
    if both:
        n = max(both)
        ratios = [d / k for d, k in zip(runs[("layer", "dense MLA", n)], runs[("layer", "V3.2 kernel", n)])]
        print(f"per-round sparse kernel / dense at seq {n}: " + ", ".join(f"{r:.2f}x" for r in ratios))
        print(f"sparse kernel / dense at seq {n}: {statistics.median(ratios):.2f}x")


def _child(part: str, variant: str, seq: int, topk: int, repeat: int):
    """One (part, variant, seq) in a fresh process -> its result, or None when it failed."""
    proc = subprocess.run([sys.executable, __file__, "--child", f"{part}|{variant}|{seq}", "--topk", str(topk),
                           "--repeat", str(repeat)], capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        return None
    return json.loads(line[0][len("RESULT "):])

if __name__ == "__main__":
    main()
