"""Fused CPU kernels against the composite MindSpore operators, forward + backward, in one run.

    python tools/bench/ops.py [--repeat 20] [--step]

Shapes are those of the throughput benchmark's model (hidden 512, 16 experts top-4, batch 4 x
seq 512). Each op runs as a jitted forward+backward graph; rounds alternate fused/composite
and the median is taken. Prints composite time / fused time per op (target >= 1.5), and with
--step the tokens/s of a whole training step with every fused op on vs off.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import nn, ops, Tensor  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

from mindformers_ds.models.deepseek.config import FUSED_OPS  # noqa: E402
from mindformers_ds.models.deepseek.model import token_nll  # noqa: E402
from mindformers_ds.ops import composite, kernels  # noqa: E402

B, S, H, HEADS, ROPE, E, K, INTER, VOCAB = 4, 512, 512, 8, 64, 16, 4, 256, 32000
N = B * S
RNG = np.random.default_rng(0)


def t(*shape, scale=1.0):
    return Tensor((RNG.standard_normal(shape) * scale).astype(np.float32))


class FwdBwd(nn.Cell):
    """sum(f(inputs) . cotangents) and its gradient w.r.t. the float inputs."""

    def __init__(self, fn, n_out, positions):
        super().__init__()
        self.fn, self.n_out = fn, n_out
        self.grad = ms.grad(self.loss, grad_position=positions)

    def loss(self, *args):
        out = self.fn(*args)
        out = out if isinstance(out, tuple) else (out,)
        total = ops.zeros((), ms.float32)
        for i in range(self.n_out):
            total = total + out[i].astype(ms.float32).sum()
        return total

    def construct(self, *args):
        return self.grad(*args)


class Call(nn.Cell):
    def __init__(self, fn, *consts):
        super().__init__()
        self.fn, self.consts = fn, consts

    def construct(self, *args):
        return self.fn(*args, *self.consts)


class HeadThenNll(nn.Cell):
    def construct(self, h, w, targets):
        return token_nll(ops.matmul(h, w.T), targets)


class Experts(nn.Cell):
    def __init__(self, permute, unpermute, gmm, block):
        super().__init__()
        self.permute, self.unpermute, self.gmm, self.block = permute, unpermute, gmm, block

    def construct(self, x, idx, w, w_gu):
        xp, slot, be, _ = self.permute(x, idx, E, self.block)
        return self.unpermute(self.gmm(xp, w_gu, be, self.block)[:, :H], slot, w, x.shape[0])


def cases():
    idx = Tensor(np.stack([RNG.choice(E, K, replace=False) for _ in range(N)]).astype(np.int32))
    angle = RNG.uniform(-3, 3, (B, 1, S, ROPE // 2)).astype(np.float32)
    router = (K, 4, 2, "sigmoid", "noaux_tc", True, 2.5)
    return {
        "rms_norm": (Call(kernels.rms_norm_op(1e-6), 1e-6), Call(composite.rms_norm, 1e-6),
                     (t(B, S, H), t(H)), 1, (0, 1)),
        "swiglu": (Call(kernels.swiglu_op()), Call(composite.swiglu), (t(N * K, 2 * INTER),), 1, (0,)),
        "rope": (Call(kernels.rope_op(True), True), Call(composite.apply_rope, True),
                 (t(B, HEADS, S, ROPE), Tensor(np.cos(angle)), Tensor(np.sin(angle))), 1, (0,)),
        "moe_permute+unpermute": (
            Experts(kernels.moe_permute_op(E), kernels.moe_unpermute_op(), kernels.grouped_matmul_op(), 1),
            Experts(composite.moe_permute, composite.moe_unpermute, composite.grouped_matmul, 32),
            (t(N, H), idx, t(N, K), t(E, 2 * H, H, scale=0.05)), 1, (0, 2, 3)),
        "grouped_matmul": (Call(kernels.grouped_matmul_op(), 1), Call(composite.grouped_matmul, 32),
                           None, 1, (0, 1)),
        "router_topk": (Call(kernels.router_topk_op(*router, E, True), *router),
                        Call(composite.router_topk, *router), (t(N, E), t(E, scale=0.1)), 1, (0,)),
        # one layer's attention core, causal: q [B, S, H, 64+32], kv [B, S, H, 64+64]
        "mla_attention": (Call(attention_kernels.mla_attention_op(0.1), 0.1), Call(composite.MlaAttentionCore(), 0.1),
                          (t(B, S, HEADS, 96), t(B, HEADS, S, 32), t(B, S, HEADS, 128), t(B, S, 32),
                           Tensor(np.where(np.tril(np.ones((S, S), bool)), 0.0, -1e30).astype(np.float32)[None, None])),
                          1, (0, 1, 2, 3)),
        # the head + cross-entropy of 2048 tokens over a 32000 vocabulary (hidden 512)
        "lm_head_nll": (kernels.lm_head_nll_op(), HeadThenNll(),
                        (t(N, H), t(VOCAB, H, scale=0.05), Tensor(RNG.integers(0, VOCAB, N).astype(np.int32))),
                        1, (0, 1)),
    }


def grouped_inputs():
    """Expert-sorted rows as each path lays them out (block 1 for the kernel, 32 for the composite)."""
    idx = Tensor(np.stack([RNG.choice(E, K, replace=False) for _ in range(N)]).astype(np.int32))
    x = t(N, H)
    xp_f, _, be_f, _ = kernels.moe_permute_op(E)(x, idx, E, 1)
    xp_c, _, be_c, _ = composite.moe_permute(x, idx, E, 32)
    w = t(E, 2 * INTER, H, scale=0.05)
    return (xp_f, w, be_f), (xp_c, w, be_c)


def timed(cell, inputs, repeat):
    out = cell(*inputs)
    ms.Tensor(np.zeros(1)).asnumpy()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = cell(*inputs)
        (out[0] if isinstance(out, tuple) else out).asnumpy()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_throughput(fused: bool, steps: int) -> float:
    from mindformers_ds import config
    from mindformers_ds.models.deepseek import DeepseekForCausalLM
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_train_step import make_step, step_inputs
    sets = ["model.hidden_size=256", "model.num_hidden_layers=4", "model.n_routed_experts=16",
            "model.num_experts_per_tok=4", "model.moe_intermediate_size=128", "model.intermediate_size=512",
            "model.vocab_size=512"]
    if fused:
        sets.append(f"model.fused_ops=[{','.join(FUSED_OPS)}]")
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v3/tiny.yaml"), sets, check_paths=False)
    model = DeepseekForCausalLM(cfg.model.model_config())
    model.init_weights(0)
    step, *_ = make_step(model)
    ids = RNG.integers(0, 512, (4, 256)).astype(np.int32)
    inp = step_inputs(ids, ids)
    lr = Tensor(1e-4, ms.float32)
    step(*inp, lr)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(*inp, lr)[1].asnumpy()
        times.append(time.perf_counter() - t0)
    return ids.size / statistics.median(times)


def fp8_block_dequant_row(repeat: int) -> None:
    """The converter's FP8 decode (a 7168x2048 weight): the kernel against the numpy decode,
    the baseline the converter uses when the kernel is not built."""
    from mindformers_ds.checkpoint.fp8 import block_dequant_numpy, block_quant
    from mindformers_ds.ops import native
    codes, scale = block_quant(RNG.standard_normal((7168, 2048)).astype(np.float32))
    tn, tk = [], []
    for _ in range(3):
        for fn, acc in ((block_dequant_numpy, tn), (native.fp8_block_dequant, tk)):
            t0 = time.perf_counter()
            for _ in range(max(1, repeat // 4)):
                fn(codes, scale)
            acc.append((time.perf_counter() - t0) / max(1, repeat // 4))
    mn, mk = statistics.median(tn), statistics.median(tk)
    print(f"{'fp8_block_dequant (numpy)':24s} {mn * 1e3:12.2f} {mk * 1e3:10.2f} {mn / mk:8.2f}x")


def main() -> None:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--step", action="store_true", help="also time a whole training step, fused on vs off")
    ap.add_argument("--only", nargs="*", default=None, help="time only these ops")
    a = ap.parse_args()
    gf, gc = grouped_inputs()
    print(f"{'op':24s} {'composite ms':>12s} {'fused ms':>10s} {'speed-up':>9s}")
    for name, (fused, comp, inputs, n_out, pos) in cases().items():
        if a.only and name not in a.only:
            continue
        fi, ci = (gf, gc) if inputs is None else (inputs, inputs)
        f, c = FwdBwd(fused, n_out, pos), FwdBwd(comp, n_out, pos)
        tf, tc = [], []
        for _ in range(3):  # alternate rounds: the machine is noisy
            tc.append(timed(c, ci, a.repeat))
            tf.append(timed(f, fi, a.repeat))
        mf, mc = statistics.median(tf), statistics.median(tc)
        print(f"{name:24s} {mc * 1e3:12.2f} {mf * 1e3:10.2f} {mc / mf:8.2f}x")
    if not a.only:
        fp8_block_dequant_row(a.repeat)
    if a.step:
        off, on = [], []
        for _ in range(2):
            off.append(step_throughput(False, 8))
            on.append(step_throughput(True, 8))
        print(f"\ntraining step (hidden 256, 4 layers, 16 experts top-4, 4 x 256 tokens): "
              f"{statistics.median(off):.0f} tok/s composite, {statistics.median(on):.0f} tok/s fused, "
              f"ratio {statistics.median(on) / statistics.median(off):.2f}")


if __name__ == "__main__":
    main()
