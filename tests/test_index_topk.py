"""The Lightning Indexer's scoring + top-k kernel (ops/cpu/index_topk.cc) against numpy in float64
and against its composite (composite.index_topk: BatchMatMul, relu, head sum, ops.topk): numpy's
keys in numpy's order (the composite: keys of the same scores), their scores within 1e-5, under causal, packed and per-batch masks,
ragged rows (fewer allowed keys than k), shapes past the kernel's blocks (32 queries, 512 keys),
and rows whose sampled keys overshoot the kernel's bar (it must rank every key then)."""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, Tensor

from mindformers_ds.ops import attention_kernels, build, composite

pytestmark = pytest.mark.skipif(build.library() is None, reason="the CPU kernel library could not be built")


class Select(nn.Cell):
    def __init__(self, fn, scale, k):
        super().__init__()
        self.fn, self.scale, self.k = fn, scale, k

    def construct(self, q, keys, w, mask):
        return self.fn(q, keys, w, mask, self.scale, self.k)


def _mask(kind, b, s, t, rng):
    causal = np.arange(t)[None] <= np.arange(s)[:, None] + (t - s)
    if kind == "causal":
        return causal[None, None]
    if kind == "packed":  # two samples per row, split at different places
        seg_q = np.stack([np.arange(s) >= cut for cut in (s // 3, s // 2)][:b])
        return (causal[None] & (seg_q[:, :, None] == seg_q[:, None, :]))[:, None]
    return ((rng.random((b, s, t)) < 0.3) | (np.arange(t) == 0))[:, None]   # per batch row, decode-like


def _numpy_scores(q, keys, w, mask, scale):
    logits = np.maximum(np.einsum("bshd,btd->bhst", q, keys) * scale, 0.0)
    index = (logits * w.transpose(0, 2, 1)[..., None]).sum(1)
    return np.where(mask[:, 0], index, -np.inf)


@pytest.mark.parametrize("kind,b,s,t,k", [("causal", 2, 70, 70, 16), ("packed", 2, 70, 70, 12),
                                          ("random", 2, 5, 70, 8), ("causal", 1, 600, 600, 40),
                                          ("sampled", 1, 600, 600, 40)])
def test_index_topk_equals_numpy_and_the_composite(kind, b, s, t, k):
    rng = np.random.default_rng(t + k)
    hi, di, scale = 3, 16, 16 ** -0.5
    q = rng.standard_normal((b, s, hi, di)).astype(np.float32)
    keys = rng.standard_normal((b, t, di)).astype(np.float32)
    w = rng.standard_normal((b, s, hi)).astype(np.float32)
    mask = _mask("causal" if kind == "sampled" else kind, b, s, t, rng)
    if kind == "sampled":   # the keys the kernel samples for its bar (every 7th of 600) score highest
        keys[:, ::7] *= 50.0
    inputs = (Tensor(q), Tensor(keys), Tensor(w), Tensor(np.ascontiguousarray(mask)))
    kernel = Select(attention_kernels.index_topk_op(k, scale), scale, k)
    assert isinstance(kernel.fn, attention_kernels.FusedIndexTopk)
    top_f, chosen_f = (x.asnumpy() for x in kernel(*inputs))
    top_c, chosen_c = (x.asnumpy() for x in Select(composite.index_topk, scale, k)(*inputs))

    ref = _numpy_scores(q.astype(np.float64), keys.astype(np.float64), w.astype(np.float64), mask, scale)
    order = np.lexsort((np.broadcast_to(np.arange(t), ref.shape), -ref), axis=-1)[..., :k]  # ties: lower index
    ref_top = np.take_along_axis(ref, order, -1)
    allowed = np.isfinite(ref_top)
    assert (~allowed).any() or kind == "random"            # ragged rows (fewer than k allowed) exist
    if kind == "sampled":   # the premise: fewer than k keys of the last row reach the sample's bar,
        row = ref[0, -1]    # so the kernel falls back to ranking every allowed key
        bar = np.sort(row[::7][:2 * k])[::-1][2 * k * 2 * k // t - 1]
        assert (row >= bar).sum() < k
    assert chosen_f.dtype == np.int32 and top_f.dtype == np.float32
    # the kernel: numpy's keys in numpy's order, ties (relu's exact zeros) to the lower index
    np.testing.assert_array_equal(chosen_f[allowed], order[allowed])
    # ops.topk orders ties its own way: the composite's keys hold the same scores
    np.testing.assert_allclose(np.take_along_axis(ref, chosen_c.astype(np.int64), -1)[allowed], ref_top[allowed],
                               rtol=1e-5, atol=1e-5)
    for top in (top_f, top_c):
        np.testing.assert_allclose(top[allowed], ref_top[allowed], rtol=1e-5, atol=1e-5)
        assert np.isneginf(top[~allowed]).all()
    # a ragged row's fill is keys the mask drops (ops.topk orders those -inf ties its own way); every
    # index of a row is distinct, as the attention's scatter needs
    for chosen in (chosen_f, chosen_c):
        rows = np.broadcast_to(mask[:, 0], ref.shape)
        assert not np.take_along_axis(rows, chosen.astype(np.int64), -1)[~allowed].any()
        assert all(len(set(row)) == k for row in chosen.reshape(-1, k))
