"""Decoding speed: tokens/s of greedy generation through the caches (kv_cache.py) against full
recomputation of the sequence per token, for the tiny V3, V3.2 and V4, in one invocation.

    python tools/bench/decode.py [--length 128] [--new 64]

Both decoders are compiled and warmed first; the timed part is the generation alone. Prints one
line per family and the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402

import mindspore as ms  # noqa: E402

from mindformers_ds import config  # noqa: E402
from mindformers_ds.generation import Generator  # noqa: E402
from mindformers_ds.models.deepseek import DeepseekForCausalLM  # noqa: E402

FAMILIES = (("deepseek_v3", ()), ("deepseek_v32", ("model.index_topk=4",)), ("deepseek_v4", ()))


def tokens_per_second(gen, prompts, new: int) -> float:
    gen.generate(prompts, 2)   # compile and warm
    start = time.perf_counter()
    out = gen.generate(prompts, new)
    return sum(len(o) for o in out) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    a = ap.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    print(describe_cpu())
    for family, overrides in FAMILIES:
        cfg = config.load(os.path.join(ROOT, f"configs/{family}/tiny.yaml"), list(overrides), check_paths=False)
        mc = cfg.model.model_config()
        model = DeepseekForCausalLM.family_for(mc)(mc)
        model.init_weights(0)
        prompts = [[5 + i for i in range(8)], [9 + i for i in range(12)]]
        recompute = tokens_per_second(Generator(model, a.length, 2), prompts, a.new)
        cached = tokens_per_second(Generator(model, a.length, 2, use_cache=True), prompts, a.new)
        print(f"{family}: cached {cached:.1f} tok/s, recompute {recompute:.1f} tok/s, cached / recompute "
              f"{cached / recompute:.2f}x (batch 2, length {a.length}, {a.new} new tokens)")


if __name__ == "__main__":
    main()
