"""The PyTorch side of train_throughput.py: transformers' DeepseekV3ForCausalLM (or, for a V4
config, DeepseekV4ForCausalLM) built from the same config, trained with torch.optim.AdamW on the
same random batch, in this process alone.

    python tools/bench/torch_step.py --config X.yaml --steps N [--compile]

prints one JSON object like `python -m mindformers_ds.observe.measure`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def hf_model(mc):
    """transformers' model of this config's family, randomly initialised from the config's HF dict
    (V4's dict also names what transformers' V4 config does not take: the model type, which its
    class sets, and the sequence-wise aux loss, which its model has not)."""
    import transformers
    family = "DeepseekV4" if mc.is_v4 else "DeepseekV3"
    skip = ("architectures", "model_type", "aux_loss_alpha") if mc.is_v4 else ("architectures",)
    hf_cfg = getattr(transformers, family + "Config")(**{k: v for k, v in mc.to_hf_dict().items() if k not in skip})
    return getattr(transformers, family + "ForCausalLM")(hf_cfg)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    import numpy as np
    import torch
    from mindformers_ds import config
    from mindformers_ds.observe.flops import train_flops_per_token
    from mindformers_ds.observe.step_metrics import rss_mb, split_peak_rss
    cfg = config.load(a.config, check_paths=False)
    mc = cfg.model.model_config()
    seq, batch = cfg.data.seq_length, cfg.train.micro_batch_size
    baseline = rss_mb("VmRSS")
    torch.manual_seed(0)
    model = hf_model(mc).float().train()
    o = cfg.optimizer
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay)
    ids = torch.tensor(np.random.default_rng(0).integers(0, mc.vocab_size, (batch, seq)), dtype=torch.long)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        opt.step()
        return float(loss)

    run = torch.compile(step) if a.compile else step
    t0 = time.perf_counter()
    first_loss = run()
    first = time.perf_counter() - t0
    peaks = split_peak_rss()   # from here the peak is the steady steps' own
    times, cpu = [], []
    for _ in range(a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    median = statistics.median(times)
    flops = train_flops_per_token(mc, seq) * batch * seq
    print(json.dumps({"stack": "torch.compile" if a.compile else "torch eager", "batch": batch, "seq": seq,
                      "params": sum(p.numel() for p in model.parameters()), "first_step_s": first,
                      "step_s": median, "tokens_per_sec": batch * seq / median,
                      "tokens_per_cpu_sec": batch * seq / statistics.median(cpu), "step_times": times,
                      "tflops": flops / median / 1e12, "first_loss": first_loss, "baseline_rss_mb": baseline,
                      **peaks(), "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
