"""Long-context cost of attention: step time (forward + backward) per token of one attention
layer and of a small full model at growing sequence lengths, for dense MLA (the fused dense
kernel), V3.2 with the masked dense composite and V3.2 with the top-k kernel
(`sparse_mla_attention`), all in one invocation.

    python tools/bench/long_context.py [--seqs 1024,2048,4096,8192] [--topk 128] [--repeat 3]

Each (part, variant, seq) runs in a fresh process (its own compile and memory), the median of
`--repeat` timed steps after one warm-up. A run that fails (e.g. out of memory) is reported and
the longer lengths of that variant are skipped. The model is configs/deepseek_v3/tiny.yaml (4
heads, nope 32 + rope 16, v 32), with configs/deepseek_v32/tiny.yaml's indexer (4 heads of 32,
top `--topk`) for the V3.2 variants, at batch 1; the layer part times layer 0's attention alone
(the frozen indexer included), the model part a 2-layer model's logits. The last line is
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
    "V3.2 kernel": ("deepseek_v32", ("mla_attention", "sparse_mla_attention")),
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
    from mindformers_ds.models.deepseek.masks import attention_mask
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

            def construct(self, x, pos):
                cos, sin = self.rotary(pos)
                return self.attn(x, cos, sin, attention_mask(1, seq)).sum()
        fn, weights = Layer(), attn.trainable_params()
        inputs = (Tensor(rng.standard_normal((1, seq, hidden)).astype(np.float32)),
                  Tensor(np.arange(seq, dtype=np.int32)[None]))
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
    ap.add_argument("--parts", default="layer,model")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        part, variant, seq = a.child.split("|")
        print("RESULT " + json.dumps(one(part, variant, int(seq), a.topk, a.repeat)))
        return
    from tools.bench.machine import describe_cpu
    print(describe_cpu())
    seqs = [int(s) for s in a.seqs.split(",")]
    results = {}
    for part in a.parts.split(","):
        for variant in VARIANTS:
            for seq in seqs:
                proc = subprocess.run([sys.executable, __file__, "--child", f"{part}|{variant}|{seq}",
                                       "--topk", str(a.topk), "--repeat", str(a.repeat)],
                                      capture_output=True, text=True)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"{part} {variant} seq {seq}: failed (exit {proc.returncode}); longer lengths skipped")
                    break
                r = json.loads(line[0][len("RESULT "):])
                results[(part, variant, seq)] = r["step_s"]
                prev = results.get((part, variant, seq // 2))
                growth = f", per-token growth {r['step_s'] / 2 / prev:.2f}x per doubling" if prev else ""
                print(f"{part} {variant} seq {seq}: step {r['step_s']:.3f} s, {r['step_s'] / seq * 1e6:.1f} us/token"
                      f"{growth} (first step {r['first_s']:.1f} s)", flush=True)
    both = [s for s in seqs if ("layer", "dense MLA", s) in results and ("layer", "V3.2 kernel", s) in results]
    if both:
        n = max(both)
        ratio = results[("layer", "dense MLA", n)] / results[("layer", "V3.2 kernel", n)]
        print(f"sparse kernel / dense at seq {n}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
