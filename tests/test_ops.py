"""Fused CPU kernels against the composite MindSpore operators: forward and gradients within
1e-5 on odd shapes (sizes that are not multiples of the vector width, empty expert groups),
a property test for permute/unpermute, and the whole model with every fused op on vs off."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import mindspore as ms
from hypothesis import given, settings, strategies as st
from mindspore import nn, ops, Tensor

from conftest import ROOT, random_ids
from mindformers_ds.models.deepseek import results as R
from mindformers_ds.models.deepseek.model import token_nll
from mindformers_ds.ops import attention_kernels, build, composite, kernels, native
from mindformers_ds.checkpoint.fp8 import block_dequant, block_dequant_numpy, block_quant

pytestmark = pytest.mark.skipif(build.library() is None, reason="the CPU kernel library could not be built")
RNG = np.random.default_rng(0)


def t(*shape, dtype=np.float32, scale=1.0):
    return Tensor((RNG.standard_normal(shape) * scale).astype(dtype))


class Loss(nn.Cell):
    """sum(f(*inputs) * cotangent) for each output, so grad_all gives every input gradient."""

    def __init__(self, fn, cots):
        super().__init__()
        self.fn = fn
        self.cots = cots

    def construct(self, *args):
        out = self.fn(*args)
        if not isinstance(out, tuple):
            out = (out,)
        total = ops.zeros((), ms.float32)
        for i in range(len(self.cots)):
            total = total + (out[i].astype(ms.float32) * self.cots[i]).sum()
        return total


def compare(fused, reference, inputs, cots, grad_positions, atol=1e-5):
    outs_f, outs_r = fused(*inputs), reference(*inputs)
    outs_f = outs_f if isinstance(outs_f, tuple) else (outs_f,)
    outs_r = outs_r if isinstance(outs_r, tuple) else (outs_r,)
    for a, b in zip(outs_f, outs_r):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=atol, rtol=1e-5)
    gf = ms.grad(Loss(fused, cots), grad_position=grad_positions)(*inputs)
    gr = ms.grad(Loss(reference, cots), grad_position=grad_positions)(*inputs)
    gf = gf if isinstance(gf, tuple) else (gf,)
    gr = gr if isinstance(gr, tuple) else (gr,)
    for a, b in zip(gf, gr):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=atol, rtol=1e-5)


class Call(nn.Cell):
    def __init__(self, fn, *consts):
        super().__init__()
        self.fn, self.consts = fn, consts

    def construct(self, *args):
        return self.fn(*args, *self.consts)


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 33), (1, 1, 64)])
def test_rms_norm(shape):
    x, w = t(*shape), t(shape[-1])
    fused = Call(kernels.rms_norm_op(1e-6), 1e-6)
    assert isinstance(fused.fn, kernels.FusedRMSNorm)
    compare(fused, Call(composite.rms_norm, 1e-6), (x, w), [t(*shape)], (0, 1))


@pytest.mark.parametrize("shape", [(5, 26), (2, 3, 16), (1, 2)])
def test_swiglu(shape):
    fused = Call(kernels.swiglu_op())
    compare(fused, Call(composite.swiglu), (t(*shape),), [t(*shape[:-1], shape[-1] // 2)], (0,))


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("heads", [3, 1])
def test_rope(interleave, heads):
    x = t(2, heads, 5, 6)
    angle = RNG.uniform(-3, 3, (2, 1, 5, 3)).astype(np.float32)
    cos, sin = Tensor(np.cos(angle)), Tensor(np.sin(angle))
    fused = Call(kernels.rope_op(interleave), interleave)
    compare(fused, Call(composite.apply_rope, interleave), (x, cos, sin), [t(2, heads, 5, 6)], (0,))


class ExpertPipeline(nn.Cell):
    """permute -> grouped matmul -> swiglu -> grouped matmul -> unpermute, as the MoE layer runs them."""

    def __init__(self, permute, unpermute, gmm, num_experts, block):
        super().__init__()
        self.permute, self.unpermute, self.gmm = permute, unpermute, gmm
        self.num_experts, self.block = num_experts, block

    def construct(self, x, idx, w, w_gu, w_down):
        xp, slot, be, counts = self.permute(x, idx, self.num_experts, self.block)
        h = composite.swiglu(self.gmm(xp, w_gu, be, self.block))
        return self.unpermute(self.gmm(h, w_down, be, self.block), slot, w, x.shape[0]), counts


expert_pipeline = ExpertPipeline


@pytest.mark.parametrize("n,k,e,h,inter", [(7, 2, 5, 11, 6), (13, 3, 8, 9, 5), (1, 1, 4, 3, 2)])
def test_moe_dispatch_and_grouped_matmul(n, k, e, h, inter):
    # experts 0..e-1 but tokens only ever choose a few of them: empty groups on both paths
    idx = np.stack([RNG.choice(np.arange(0, e, 2) if e > 2 else np.arange(e), k, replace=False)
                    for _ in range(n)]).astype(np.int32)
    inputs = (t(n, h), Tensor(idx), t(n, k), t(e, 2 * inter, h, scale=0.3), t(e, h, inter, scale=0.3))
    fused = expert_pipeline(kernels.moe_permute_op(e), kernels.moe_unpermute_op(), kernels.grouped_matmul_op(), e, 1)
    ref = expert_pipeline(composite.moe_permute, composite.moe_unpermute, composite.grouped_matmul, e, 4)
    compare(fused, ref, inputs, [t(n, h), Tensor(np.zeros(e, np.int32))], (0, 2, 3, 4))
    # grouped matmul on the composite's padded blocks too (the fused op accepts any block size)
    mixed = expert_pipeline(composite.moe_permute, composite.moe_unpermute, kernels.grouped_matmul_op(), e, 4)
    compare(mixed, ref, inputs, [t(n, h), Tensor(np.zeros(e, np.int32))], (0, 2, 3, 4))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 3), e=st.integers(3, 7), h=st.integers(1, 13), seed=st.integers(0, 10 ** 6))
def test_unpermute_inverts_permute(n, k, e, h, seed):
    rng = np.random.default_rng(seed)
    k = min(k, e)
    idx = np.stack([rng.choice(e, k, replace=False) for _ in range(n)]).astype(np.int32)
    x = rng.standard_normal((n, h)).astype(np.float32)
    onehot = np.zeros((n, k), np.float32)
    onehot[:, rng.integers(0, k)] = 1.0     # weight 1 on one of each token's copies
    xp, slot, row_expert, counts = _PERMUTE[e](Tensor(x), Tensor(idx), e, 1)
    assert counts.asnumpy().tolist() == np.bincount(idx.reshape(-1), minlength=e).tolist()
    assert (np.diff(row_expert.asnumpy()) >= 0).all()                       # grouped by expert
    back = _UNPERMUTE(xp, slot, Tensor(onehot), n).asnumpy()
    np.testing.assert_array_equal(back, x)


_PERMUTE = {e: kernels.moe_permute_op(e) for e in range(3, 8)} if build.library() else {}
_UNPERMUTE = kernels.moe_unpermute_op() if build.library() else None


@pytest.mark.parametrize("case", ["v3", "v2_greedy", "v2_group", "v3_nonorm"])
def test_router_topk(case):
    n, e = 9, 12
    args = {"v3": (4, 4, 2, "sigmoid", "noaux_tc", True, 2.5), "v2_greedy": (3, 1, 1, "softmax", "greedy", False, 1.0),
            "v2_group": (3, 4, 2, "softmax", "group_limited_greedy", True, 1.0),
            "v3_nonorm": (2, 1, 1, "sigmoid", "noaux_tc", False, 1.5)}[case]
    has_bias = args[3] == "sigmoid"
    logits, bias = t(n, e), t(e, scale=0.1)
    fused = kernels.router_topk_op(*args, e, has_bias)
    assert isinstance(fused, kernels.FusedRouterTopk)

    class R(nn.Cell):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def construct(self, lg, b):
            w, i, s = self.fn(lg, b if has_bias else None, *args)
            return w, s, i

    f, r = R(fused), R(composite.router_topk)
    wf, sf, i_f = f(logits, bias)
    wr, sr, ir = r(logits, bias)
    np.testing.assert_array_equal(i_f.asnumpy(), ir.asnumpy())   # same experts, same order
    compare(f, r, (logits, bias), [t(n, args[0]), t(n, e)], (0,))


def _attention_masks(b, sq, sk, kind):
    """Boolean keep-masks [B|1, 1, Sq, Sk]: causal (shared by the batch), packed samples with an
    all-masked row (which the composite path makes uniform), and random (a cache of Sk > Sq)."""
    if kind == "causal":
        return np.tril(np.ones((sq, sk), bool), sk - sq)[None, None]
    if kind == "packed":
        seg = np.stack([np.repeat(np.arange(4), [9, 30, 31, 0][:4]), np.repeat(np.arange(2), [45, 25])])
        m = np.tril(np.ones((sq, sk), bool))[None] & (seg[:, :, None] == seg[:, None, :])
        m[1, 50] = False
        return m[:, None]
    return (RNG.random((b, 1, sq, sk)) < 0.3) | (np.arange(sk) == 0)


@pytest.mark.parametrize("kind,sq,sk", [("causal", 70, 70), ("packed", 70, 70), ("random", 5, 70)])
def test_mla_attention(kind, sq, sk):
    """The fused attention against composite.MlaAttentionCore: output and the gradients of q, q_pe,
    kv and the shared k_pe; 70 queries make a full and a partial block of 64."""
    b, h, dn, dr, dv = 2, 3, 5, 4, 6
    scale = 0.37
    keep = _attention_masks(b, sq, sk, kind)
    bias = Tensor(np.where(keep, 0.0, -1e30).astype(np.float32))
    fused = Call(attention_kernels.mla_attention_op(scale), scale)
    assert isinstance(fused.fn, attention_kernels.FusedMlaAttention)
    inputs = (t(b, sq, h, dn + dr), t(b, h, sq, dr), t(b, sk, h, dn + dv), t(b, sk, dr), bias)
    compare(fused, Call(composite.MlaAttentionCore(), scale), inputs, [t(b, sq, h, dv)], (0, 1, 2, 3))


def _top_k_of(keep, k):
    """What the Lightning Indexer hands the attention: each query's k best keys under random
    scores, masked keys scoring -inf (so a query with fewer than k allowed keys also gets masked
    ones, flagged) -> (index [B, Sq, k] int32, bias [B, Sq, k]: 0 allowed, -1e30 masked)."""
    scores = np.where(keep, RNG.standard_normal(keep.shape), -np.inf)
    index = np.argsort(-scores, axis=-1, kind="stable")[..., :k].astype(np.int32)
    allowed = np.take_along_axis(keep, index, -1)
    return index, np.where(allowed, 0.0, -1e30).astype(np.float32)


@pytest.mark.parametrize("kind,sq,sk,k", [("causal", 70, 70, 16), ("packed", 70, 70, 12), ("random", 5, 70, 8),
                                          ("causal", 9, 9, 9)])
def test_sparse_mla_attention(kind, sq, sk, k):
    """The top-k kernel against the masked dense composite (composite.SparseMlaAttentionCore):
    output and the gradients of q, q_pe, kv and k_pe. Causal rows before the k-th key are ragged
    (fewer than k allowed keys, the rest flagged), packed rows see only their own sample, and the
    last case keeps every causal key (k = S)."""
    b, h, dn, dr, dv = 2, 3, 5, 4, 6
    scale = 0.37
    keep = _attention_masks(b, sq, sk, kind)[:, 0]
    keep = np.broadcast_to(keep, (b, sq, sk)) | (np.arange(sk) == np.arange(sq)[:, None] + sk - sq)  # keeps itself
    index, bias = _top_k_of(keep, k)
    assert (bias == 0).any(axis=-1).all() and ((bias < 0).any() or kind == "random")  # ragged rows exist
    fused = Call(attention_kernels.sparse_mla_attention_op(scale), scale)
    assert isinstance(fused.fn, attention_kernels.FusedSparseMlaAttention)
    inputs = (t(b, sq, h, dn + dr), t(b, h, sq, dr), t(b, sk, h, dn + dv), t(b, sk, dr), Tensor(index), Tensor(bias))
    compare(fused, Call(composite.SparseMlaAttentionCore(), scale), inputs, [t(b, sq, h, dv)], (0, 1, 2, 3))


class HeadThenNll(nn.Cell):
    """The composite path: logits = h w^T, then the model's token_nll."""

    def construct(self, h, w, targets):
        return token_nll(ops.matmul(h, w.T), targets)


@pytest.mark.parametrize("t_rows,vocab", [(300, 997), (7, 64)])
def test_lm_head_nll(t_rows, vocab):
    """The fused head + cross-entropy against h w^T and token_nll: loss sum, count and the
    gradients of h and w, with ignored targets (-100) among them; 300 rows are two full chunks
    of 128 and a partial one, so both threads add into the head's gradient."""
    d = 24
    targets = RNG.integers(0, vocab, t_rows).astype(np.int32)
    targets[::5] = -100
    fused = kernels.lm_head_nll_op()
    assert isinstance(fused, kernels.FusedLmHeadNll)
    inputs = (t(t_rows, d), t(vocab, d, scale=0.3), Tensor(targets))
    compare(fused, HeadThenNll(), inputs, [Tensor(np.float32(0.7)), Tensor(np.float32(0.0))], (0, 1), atol=2e-5)


class ClipStep(nn.Cell):
    """The optimizer step's clipping alone: (norm, clipped grads) as ApplyStep computes them."""

    def __init__(self, sum_squares, scale, max_norm):
        super().__init__()
        self.sum_squares, self.scale, self.max_norm = sum_squares, scale, max_norm

    def construct(self, a, b, c, d, finite):
        norm = ops.sqrt(self.sum_squares(a, b, c, d)).reshape(())
        coef = ops.minimum(self.max_norm / (norm + 1e-6), 1.0).reshape(1)
        f = finite.astype(ms.float32).reshape(1)
        return norm, self.scale(a, coef, f), self.scale(b, coef, f), self.scale(c, coef, f), self.scale(d, coef, f)


def test_grad_clip_kernels():
    """The global norm over gradients of odd sizes (1 entry, a partial 4096-block, several
    blocks) against numpy in float64, the scaling bit-identical to float32 g * coef, and a
    skipped step (finite False, inf and NaN among the gradients) giving exact zeros."""
    grads = [RNG.standard_normal(s).astype(np.float32) for s in [(1,), (3, 7), (4097,), (5, 3000)]]
    step = ClipStep(kernels.grad_sum_squares_op(), kernels.grad_scale_op(), 1.0)
    norm, *clipped = step(*[Tensor(g) for g in grads], Tensor(True))
    want = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert abs(float(norm.asnumpy()) - want) <= 1e-6 * want and want > 1.0  # clipping is active
    coef = np.float32(min(1.0 / (np.float32(norm.asnumpy()) + np.float32(1e-6)), 1.0))
    for g, c in zip(grads, clipped):
        np.testing.assert_array_equal(c.asnumpy(), g * coef)
    grads[1][0, 0], grads[2][5] = np.inf, np.nan
    norm, *clipped = step(*[Tensor(g) for g in grads], Tensor(False))
    assert not np.isfinite(float(norm.asnumpy()))
    for g, c in zip(grads, clipped):
        np.testing.assert_array_equal(c.asnumpy(), np.zeros_like(g))


def test_fp8_dequant_kernel():
    """Ragged edge blocks (200x300 = 2x3 blocks, the last ones partial) and every code,
    NaN included: the kernel the converter uses is bit-identical to the numpy decode."""
    w = RNG.standard_normal((200, 300)).astype(np.float32)
    codes, scale = block_quant(w)
    codes[0, :256] = np.arange(256, dtype=np.uint8)
    ref = block_dequant_numpy(codes, scale)
    np.testing.assert_array_equal(native.fp8_block_dequant(codes, scale), ref)
    np.testing.assert_array_equal(block_dequant(codes, scale), ref)  # the converter's path
    op = kernels.fp8_block_dequant_op()
    np.testing.assert_array_equal(op(Tensor(codes), Tensor(scale)).asnumpy(), ref)


def test_stale_or_failed_build_falls_back(tmp_path, monkeypatch, caplog):
    """A changed source gets a new library; a broken one falls back to the composite op."""
    src = tmp_path / "src"
    src.mkdir()
    for f in os.listdir(build.SRC_DIR):
        (src / f).write_text(open(os.path.join(build.SRC_DIR, f)).read())
    monkeypatch.setenv("MFDS_OPS_CACHE", str(tmp_path / "cache"))
    first = build.build(str(src))
    with open(src / "swiglu.cc", "a") as f:
        f.write("\n// touched\n")
    second = build.build(str(src))
    assert first != second and os.path.isfile(second)        # rebuilt under a new fingerprint
    with open(src / "swiglu.cc", "a") as f:
        f.write("\nthis is not C++\n")
    with pytest.raises(build.KernelBuildError, match="compiling .* failed"):
        build.build(str(src))
    assert build.library(str(src)) is None                   # reported once, no exception
    monkeypatch.setattr(build, "library", lambda *a: None)
    assert kernels.swiglu_op() is composite.swiglu


def test_model_with_all_fused_ops_matches():
    from mindformers_ds import config
    from mindformers_ds.models.deepseek import DeepseekForCausalLM
    from mindformers_ds.models.deepseek.config import FUSED_OPS
    from test_train_step import make_step, step_inputs
    base = config.load(os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml"))
    losses = {}
    for fused in (False, True):
        sets = [f"model.fused_ops=[{','.join(FUSED_OPS)}]"] if fused else []
        cfg = config.load(os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml"), sets)
        model = DeepseekForCausalLM(cfg.model.model_config())
        model.init_weights(0)
        ids = random_ids(4, 32, cfg.model.vocab_size, seed=1)
        logits = model(Tensor(ids)).asnumpy()
        step, *_ = make_step(model, bias_rate=0.001, fused_clip=fused)
        losses[fused] = [logits]
        for s in range(20):  # the loss trajectory over 20 steps, optimisations on and off
            batch = random_ids(4, 32, cfg.model.vocab_size, seed=100 + s)
            outs, _, _ = step(*step_inputs(batch, batch), Tensor(1e-3, ms.float32))
            outs = R.named(outs)
            losses[fused].append(float(outs[R.LM_SUM].asnumpy() / outs[R.LM_COUNT].asnumpy()))
    np.testing.assert_allclose(losses[True][0], losses[False][0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(losses[True][1:], losses[False][1:], rtol=1e-5, atol=0)


def test_fused_op_choice_is_made_in_one_place():
    """ops/choice.py names every op of model.fused_ops and is the only module that reads the list
    or imports the kernels; a model asks it for each op and gets the kernel exactly when asked."""
    import ast
    from mindformers_ds.models.deepseek import DeepseekForCausalLM
    from mindformers_ds.models.deepseek.config import FUSED_OPS
    from mindformers_ds.ops import choice
    assert tuple(choice.OPS) == FUSED_OPS
    package = os.path.join(ROOT, "mindformers_ds")
    readers = []
    for path in glob.glob(os.path.join(package, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)
        if rel in ("mindformers_ds/ops/choice.py", "mindformers_ds/ops/kernels.py", "mindformers_ds/ops/attention_kernels.py"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            membership = (isinstance(node, ast.Compare) and any(isinstance(o, (ast.In, ast.NotIn)) for o in node.ops)
                          and any(isinstance(c, ast.Attribute) and c.attr == "fused_ops" for c in node.comparators))
            kernel_import = isinstance(node, ast.ImportFrom) and (
                (node.module or "").endswith("kernels") or any(a.name == "kernels" for a in node.names))
            if membership or kernel_import:
                readers.append(f"{rel}:{node.lineno}")
    assert readers == []
    # the sqrt-softplus router (V4) is not a case the router kernel computes
    assert not choice.uses_kernel("router_topk", FUSED_OPS, scoring="sqrtsoftplus")
    assert choice.uses_kernel("router_topk", FUSED_OPS, scoring="sigmoid")
    from mindformers_ds import config
    kinds = {}
    for fused in ((), FUSED_OPS):
        sets = [f"model.fused_ops=[{','.join(fused)}]"] if fused else []
        model = DeepseekForCausalLM(config.load(os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml"),
                                                sets).model.model_config())
        kinds[fused] = {type(c).__name__ for _, c in model.cells_and_names() if type(c).__name__.startswith("Fused")}
    assert kinds[()] == set()
    assert kinds[FUSED_OPS] >= {"FusedRMSNorm", "FusedSwiglu", "FusedRope", "FusedMoePermute", "FusedMoeUnpermute",
                                "FusedGroupedMatmul", "FusedRouterTopk", "FusedMlaAttention", "FusedLmHeadNll"}
    v32 = DeepseekForCausalLM(config.load(os.path.join(ROOT, "configs/deepseek_v32/tiny.yaml"),
                                          [f"model.fused_ops=[{','.join(FUSED_OPS)}]"]).model.model_config())
    assert "FusedSparseMlaAttention" in {type(c).__name__ for _, c in v32.cells_and_names()}


def _numpy_sinkhorn(c, iters, eps):
    c = c / (c.sum(-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(-1, keepdims=True) + eps)
        c = c / (c.sum(-2, keepdims=True) + eps)
    return c


@pytest.mark.parametrize("n, iters", [(4, 20), (2, 5), (3, 1)])
def test_hc_sinkhorn(n, iters):
    """V4 mHC's Sinkhorn on positive matrices (softmax + eps, as the model feeds it): the composite
    equals numpy in float64, the kernel's forward and backward equal the composite's."""
    logits = np.random.default_rng(n).normal(size=(2, 7, n, n))
    comb = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True) + 1e-6
    composite_out = Call(composite.sinkhorn, iters, 1e-6)(Tensor(comb.astype(np.float32))).asnumpy()
    np.testing.assert_allclose(composite_out, _numpy_sinkhorn(comb, iters, 1e-6), rtol=1e-5, atol=1e-6)
    fused = Call(kernels.hc_sinkhorn_op(iters, 1e-6), iters, 1e-6)
    assert isinstance(fused.fn, kernels.FusedSinkhorn)
    compare(fused, Call(composite.sinkhorn, iters, 1e-6), (Tensor(comb.astype(np.float32)),), [t(2, 7, n, n)], (0,))
