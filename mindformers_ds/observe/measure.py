"""Measure one config's training step in a fresh process: tokens/s, compile time and peak RSS.

    python -m mindformers_ds.observe.measure --config X.yaml [--set k=v ...] [--steps N] [--batch B]
        [--profile DIR]

prints one JSON object. `peak_rss_mb` is the whole process's peak; `first_step_peak_rss_mb` the
peak up to the end of the compiling first step, `steps_peak_rss_mb` that of the later steps
alone. Random token ids (the data pipeline is not what is measured); every
other piece is the real training step (MLA, MoE, MTP, AdamW, bias update). The benchmark
tools/bench/train_throughput.py and the planner's validation test run it as a subprocess so
that the peak RSS (VmHWM) is the step's alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from .step_metrics import rss_mb, split_peak_rss


def profiled_step(step, inputs, out_dir: str):
    """One more step under the MindSpore profiler -> its operator types by time (profiling.py)."""
    from mindspore.profiler import Profiler
    from .profiling import top_operators
    os.makedirs(out_dir, exist_ok=True)
    prof = Profiler(output_path=out_dir, start_profile=False)
    prof.start()
    step(*inputs)
    prof.stop()
    prof.analyse()
    return top_operators(out_dir, limit=None)


def measure(config_path: str, sets, steps: int, batch: int, profile_dir: str = "") -> dict:
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor
    from .. import config
    from ..models.deepseek import build_model
    from ..models.deepseek import results as R
    from ..train.optimizer import AdamW
    from ..train.step import ApplyStep, GradStep, LossCell, TrainStep, router_bias_parameters, router_bias_rows
    from .flops import train_flops_per_token
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cfg = config.load(config_path, sets, check_paths=False)
    mc = cfg.model.model_config()
    seq = cfg.data.seq_length
    baseline = rss_mb("VmRSS")
    model = build_model(mc)
    model.init_weights(cfg.train.seed)
    weights = model.trainable_params()
    o = cfg.optimizer
    opt = AdamW(weights, tuple(o.betas), o.eps, o.weight_decay)
    step = TrainStep(GradStep(LossCell(model), weights),
                     ApplyStep(opt, router_bias_parameters(model), mc.bias_update_rate, cfg.train.max_grad_norm,
                               bias_rows=router_bias_rows(model), fused_ops=mc.fused_ops))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, mc.vocab_size, (batch, seq)).astype(np.int32)
    n_tok = batch * (seq - 1)
    inputs = [Tensor(ids), Tensor(ids), Tensor(np.tile(np.arange(seq, dtype=np.int32), (batch, 1))),
              Tensor(np.ones((batch, seq), np.int32)), Tensor(1.0 / n_tok, ms.float32),
              Tensor(1.0 / n_tok, ms.float32), Tensor(1.0, ms.float32), Tensor(1e-4, ms.float32)]
    t0 = time.perf_counter()
    outs = step(*inputs)
    first_loss = float(R.named(outs[0])[R.LM_SUM].asnumpy()) * 1.0 / n_tok
    compile_s = time.perf_counter() - t0
    peaks = split_peak_rss()   # from here the peak is the steady steps' own (compile excluded)
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        R.named(step(*inputs)[0])[R.LM_SUM].asnumpy()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak_fields = peaks()   # before the profiled step, whose profiler buffers are not the step's
    median = statistics.median(times)
    flops = train_flops_per_token(mc, seq) * batch * seq
    extra = {"profile": profiled_step(step, inputs, profile_dir)} if profile_dir else {}
    return {**extra, "stack": "mindformers_ds", "config": config_path, "batch": batch, "seq": seq,
            "params": model.num_parameters(), "first_step_s": compile_s, "step_s": median,
            "tokens_per_sec": batch * seq / median, "tokens_per_cpu_sec": batch * seq / statistics.median(cpu),
            "step_times": times, "tflops": flops / median / 1e12, "first_loss": first_loss,
            "baseline_rss_mb": baseline, **peak_fields}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="default: train.micro_batch_size")
    ap.add_argument("--profile", default="", help="after the timed steps, profile one more into this directory; "
                                                   "its operator types by time join the JSON (`profile`)")
    a = ap.parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    from .. import config
    batch = a.batch or config.load(a.config, a.set, check_paths=False).train.micro_batch_size
    print(json.dumps(measure(a.config, a.set, a.steps, batch, a.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
