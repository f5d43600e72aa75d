"""A test-only attention type, the whole of what adding one takes: plain multi-head attention
(q, k, v, o projections of num_attention_heads heads of hidden_size / num_attention_heads, no
RoPE), selectable per layer with `model.attention_types`. This one file holds its cell, its
facts (parameters with roles = its checkpoint names, FLOPs, activation bytes) and its config
part (the checks of the fields it reads); registering it is the only step. Nothing in
mindformers_ds/ names it (tests/test_block_contract.py checks that the planner, the FLOP
counter, the layout table and the model pick it up)."""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import mindspore as ms
from mindspore import nn, ops

from mindformers_ds.models.deepseek.attention_types import AttentionType, register
from mindformers_ds.models.deepseek.facts.base import FP32, ActivationShape, BlockFacts, Spec
from mindformers_ds.models.deepseek.layers import DTYPES, Linear

NAME = "plain_mha"


def head_dim(c) -> int:
    return c.hidden_size // c.num_attention_heads


class PlainAttentionFacts(BlockFacts):
    def __init__(self, c, prefix: str, layer: int):
        self.c, self.prefix = c, prefix

    def params(self) -> Iterator[Spec]:
        h, nh, d = self.c.hidden_size, self.c.num_attention_heads, head_dim(self.c)
        for n in ("q_proj", "k_proj", "v_proj"):
            yield f"{self.prefix}{n}.weight", (nh * d, h), "linear_col"
        yield f"{self.prefix}o_proj.weight", (h, nh * d), "linear_row"

    def flops(self, seq: int) -> Dict[str, float]:
        h, nh, d = self.c.hidden_size, self.c.num_attention_heads, head_dim(self.c)
        return {"attn_proj": float(4 * 2 * h * nh * d), "attn_scores": float(2 * 2 * nh * d * seq)}

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        h, nh, d = self.c.hidden_size, self.c.num_attention_heads / a.tp, head_dim(self.c)
        kept = a.B * a.tokens * 2 * h / a.sp + a.B * a.tokens * 4 * nh * d      # norm in/out; q, k, v, out
        return {"attention": kept + FP32 * a.batch * nh * a.seq * a.seq}        # probabilities


def problems(c, prefix: str) -> List[Tuple[str, str]]:
    if c.hidden_size % c.num_attention_heads:
        return [("num_attention_heads", f"{prefix}num_attention_heads={c.num_attention_heads} must divide "
                                        f"{prefix}hidden_size={c.hidden_size} for {NAME} layers")]
    return []


class PlainAttention(nn.Cell):
    """softmax(q k^T / sqrt(d) + causal bias) v per head; RoPE tables are accepted and unused."""

    def __init__(self, c):
        super().__init__()
        dt = DTYPES[c.compute_dtype]
        h, nh, d = c.hidden_size, c.num_attention_heads, head_dim(c)
        self.q_proj = Linear(h, nh * d, False, dt)
        self.k_proj = Linear(h, nh * d, False, dt)
        self.v_proj = Linear(h, nh * d, False, dt)
        self.o_proj = Linear(nh * d, h, False, dt)
        self.head_dim = d
        self.scale = d ** -0.5
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()

    def construct(self, x, cos, sin, mask):
        b, s, _ = x.shape
        split = lambda t: t.reshape(b, s, -1, self.head_dim).transpose(0, 2, 1, 3)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        bias = (1.0 - mask.astype(ms.float32)) * -1e9
        probs = ops.softmax(self.bmm_nt(q, k).astype(ms.float32) * self.scale + bias, -1).astype(v.dtype)
        out = self.bmm(probs, v).transpose(0, 2, 1, 3).reshape(b, s, -1)
        return self.o_proj(out)


register(AttentionType(NAME, PlainAttentionFacts, PlainAttention, "v3", problems))
