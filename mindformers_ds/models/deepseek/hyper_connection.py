"""DeepSeek-V4's manifold-constrained hyper-connections (mHC).

The residual is `hc_mult` (n) parallel streams [B, S, n, H]. Before each block a learned
projection of the RMS-normalised, flattened streams gives three sets of weights per token:
  pre  [n]    = sigmoid(.) + eps          collapses the streams into the block's input,
  post [n]    = 2 * sigmoid(.)            spreads the block's output back over the streams,
  comb [n, n] = Sinkhorn(softmax(.) + eps) mixes the old streams, nearly doubly stochastic so the
                                          residual cannot grow without bound over depth.
  new_streams[k] = post[k] * block_out + sum_j comb[j, k] * streams[j]
The hyper head collapses the streams once more (pre weights only) before the final norm.
All of it runs in float32, as the release keeps these modules in float32.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ...ops import choice
from .config import DeepseekConfig
from .layers import zeros_param


def unit_rms_norm(x, eps: float):
    """x / sqrt(mean(x^2) + eps) without a weight."""
    xf = x.astype(ms.float32)
    return xf * ops.rsqrt((xf * xf).mean(-1, keep_dims=True) + eps)


def normed_projection(streams, weight, eps: float):
    """rms_norm(flat streams) @ weight^T, computed as (flat @ weight^T) * rsqrt(mean(flat^2) + eps):
    the per-token scale commutes with the projection, so the normalised copy of the streams
    ([B*S, n*H], as large as the residual) is neither stored for the backward nor differentiated.
    streams [B, S, n, H], weight [m, n*H] -> [B*S, m] (float32)."""
    b, s, n, h = streams.shape
    flat = streams.reshape(b * s, n * h).astype(ms.float32)
    return ops.MatMul(transpose_b=True)(flat, weight) * ops.rsqrt((flat * flat).mean(-1, keep_dims=True) + eps)


def collapse_streams(pre, streams):
    """sum_k pre[k] * streams[k] as one [1, n] x [n, H] product per token: the weighted
    [B, S, n, H] copy the broadcast-and-sum form keeps for its backward is never made.
    pre [B*S, n], streams [B, S, n, H] -> [B, S, H]."""
    b, s, n, h = streams.shape
    return ops.BatchMatMul()(pre.reshape(b * s, 1, n), streams.reshape(b * s, n, h)).reshape(b, s, h)


class HyperConnection(nn.Cell):
    """The mixing weights around one block (`attn_hc` / `ffn_hc`); parameter names as transformers."""

    def __init__(self, c: DeepseekConfig):
        super().__init__()
        n = self.n = c.hc_mult
        self.fn = zeros_param(((2 + n) * n, n * c.hidden_size), "fn")
        self.base = zeros_param(((2 + n) * n,), "base")
        self.scale = Parameter(Tensor(np.ones((3,), np.float32)), name="scale")
        self.iters, self.eps, self.norm_eps = c.hc_sinkhorn_iters, c.hc_eps, c.rms_norm_eps
        # alternating column / row normalisations (ops/composite.py: sinkhorn), or its kernel
        self.sinkhorn = choice.operator("hc_sinkhorn", c.fused_ops, iters=self.iters, eps=self.eps)

    def construct(self, streams):
        """streams [B, S, n, H] -> (post [B, S, n], comb [B, S, n, n], block input [B, S, H])."""
        b, s, n, h = streams.shape
        mixes = normed_projection(streams, self.fn, self.norm_eps)          # [BS, (2+n)n]
        pre = ops.sigmoid(mixes[:, :n] * self.scale[0] + self.base[:n]) + self.eps
        post = 2.0 * ops.sigmoid(mixes[:, n:2 * n] * self.scale[1] + self.base[n:2 * n])
        comb = mixes[:, 2 * n:].reshape(b * s, n, n) * self.scale[2] + self.base[2 * n:].reshape(n, n)
        comb = self.sinkhorn(ops.softmax(comb, -1) + self.eps, self.iters, self.eps)
        return post.reshape(b, s, n), comb.reshape(b, s, n, n), collapse_streams(pre, streams)


def merge_streams(streams, block_out, post, comb):
    """post[k] * block_out + sum_j comb[j, k] * streams[j]  ->  [B, S, n, H]."""
    b, s, n, h = streams.shape
    mixed = ops.BatchMatMul(transpose_a=True)(comb.reshape(b * s, n, n), streams.reshape(b * s, n, h))
    return post.expand_dims(-1) * block_out.expand_dims(2) + mixed.reshape(b, s, n, h)


class HyperHead(nn.Cell):
    """Final collapse of the streams (`model.hc_head`)."""

    def __init__(self, c: DeepseekConfig):
        super().__init__()
        n = self.n = c.hc_mult
        self.hc_fn = zeros_param((n, n * c.hidden_size), "hc_fn")
        self.hc_base = zeros_param((n,), "hc_base")
        self.hc_scale = Parameter(Tensor(np.ones((1,), np.float32)), name="hc_scale")
        self.eps, self.norm_eps = c.hc_eps, c.rms_norm_eps

    def construct(self, streams):
        pre = ops.sigmoid(normed_projection(streams, self.hc_fn, self.norm_eps) * self.hc_scale + self.hc_base) + self.eps
        return collapse_streams(pre, streams)
