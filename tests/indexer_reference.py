"""numpy references for the indexer training tests: V3.2's MLA with its Lightning Indexer and V4's
CSA attention with its compressors, written from the models' docstrings (and transformers'
code), float64, from a cell's weights. Each returns the attention output (the tests check it
against the cell, which proves the probabilities below are the ones the layer computes) and the
indexer's KL / recall stats: the independent side of tests/test_indexer_training.py."""
from __future__ import annotations

import numpy as np

MASK = -1e30


def weights(cell) -> dict:
    """{parameter name relative to `cell`: float64 array}."""
    return {n: p.asnumpy().astype(np.float64) for n, p in cell.parameters_and_names()}


def rms(x, w=None, eps=1e-6):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y if w is None else y * w


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def rope_pairs(x, cos, sin, interleave):
    """transformers' V3 layout: rotate pairs (2i, 2i+1) or (i, i+D/2); output firsts then seconds."""
    half = x.shape[-1] // 2
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def rope_tail(x, cos, sin):
    """V4: the trailing 2*half channels rotated as interleaved pairs, kept in place."""
    half = cos.shape[-1]
    d = x.shape[-1]
    rot = x[..., d - 2 * half:]
    x1, x2 = rot[..., 0::2], rot[..., 1::2]
    out = np.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).reshape(rot.shape)
    return np.concatenate([x[..., :d - 2 * half], out], -1)


def distill(probs_heads, support, index, dense_heads, dense_support, chosen):
    """The KL / recall stats from per-head probabilities [B, H, S, T] (indexer_loss.py's formula)."""
    mass = probs_heads.sum(1) * support
    total = mass.sum(-1, keepdims=True)
    valid = total[..., 0] > 0
    target = mass / np.maximum(total, 1e-300)
    logq = log_softmax(np.where(support, index, MASK))
    kl = np.where(target > 0, target * (np.log(np.maximum(target, 1e-300)) - logq), 0.0).sum(-1)
    dmass = dense_heads.sum(1) * dense_support
    dense = dmass / np.maximum(dmass.sum(-1, keepdims=True), 1e-300)
    recall = (dense * chosen).sum(-1)
    return np.array([kl[valid].sum(), recall[valid].sum(), valid.sum()])


def top_k_mask(index, allowed, k):
    """bool [B, S, T]: the k highest-scored allowed entries per query (fewer when fewer are allowed).
    A tie at the k-th place would make the choice implementation-defined (MindSpore's top-k
    breaks ties in no fixed order): refused, so the tests' inputs are chosen without one."""
    scores = np.where(allowed, index, -np.inf)
    ranked = -np.sort(-scores, -1)
    if ranked.shape[-1] > k:
        boundary = np.isfinite(ranked[..., k]) & (ranked[..., k - 1] == ranked[..., k])
        assert not boundary.any(), f"{int(boundary.sum())} queries tie at the top-k boundary"
    order = np.argsort(-scores, -1, kind="stable")[..., :k]
    picked = np.zeros(index.shape, bool)
    np.put_along_axis(picked, order, True, -1)
    return picked & allowed


def v32_attention(attn, x, cos, sin, mask, stage):
    """MLAttention with its indexer: x [B, S, H], cos/sin [B, 1, S, d/2], mask [B, S, S] bool."""
    w = weights(attn)
    c = attn
    b, s, _ = x.shape
    dn, dr, dv = c.nope_dim, c.rope_dim, c.v_dim
    q_resid = rms(x @ w["q_a_proj.weight"].T, w["q_a_layernorm.weight"])
    q = (q_resid @ w["q_b_proj.weight"].T).reshape(b, s, -1, dn + dr).transpose(0, 2, 1, 3)
    heads = q.shape[1]
    kv = x @ w["kv_a_proj_with_mqa.weight"].T
    c_kv = rms(kv[..., :c.kv_lora_rank], w["kv_a_layernorm.weight"])
    k_pe = rope_pairs(kv[..., c.kv_lora_rank:][:, None], cos, sin, c.interleave)         # [B, 1, S, dr]
    q_pe = rope_pairs(q[..., dn:], cos, sin, c.interleave)
    kvb = (c_kv @ w["kv_b_proj.weight"].T).reshape(b, s, heads, dn + dv).transpose(0, 2, 1, 3)
    raw = (q[..., :dn] @ kvb[..., :dn].transpose(0, 1, 3, 2) + q_pe @ k_pe.transpose(0, 1, 3, 2)) * c.scale
    # the indexer
    ix = attn.indexer
    hi, di = ix.n_heads, ix.head_dim
    qi = (q_resid @ w["indexer.wq_b.weight"].T).reshape(b, s, hi, di).transpose(0, 2, 1, 3)
    qi = np.concatenate([rope_pairs(qi[..., :dr], cos, sin, False), qi[..., dr:]], -1)
    k = x @ w["indexer.wk.weight"].T
    k = (k - k.mean(-1, keepdims=True)) / np.sqrt(k.var(-1, keepdims=True) + 1e-6)
    k = (k * w["indexer.k_norm.weight"] + w["indexer.k_norm.bias"])[:, None]
    k = np.concatenate([rope_pairs(k[..., :dr], cos, sin, False), k[..., dr:]], -1)
    logits = np.maximum(qi @ k.transpose(0, 1, 3, 2) / np.sqrt(di), 0)                   # [B, Hi, S, S]
    head_w = (x @ w["indexer.weights_proj.weight"].T).transpose(0, 2, 1)[..., None] / np.sqrt(hi)
    index = (logits * head_w).sum(1)
    chosen = top_k_mask(index, mask, ix.topk)
    attended = mask if stage == "dense_warmup" else chosen
    dense_p = softmax(raw + np.where(mask[:, None], 0.0, MASK))
    probs = softmax(raw + np.where(attended[:, None], 0.0, MASK))
    out = (probs @ kvb[..., dn:]).transpose(0, 2, 1, 3).reshape(b, s, -1) @ w["o_proj.weight"].T
    return out, distill(probs, attended, index, dense_p, mask, chosen)


def _compress(w, prefix, x, cos, sin, rate, dim, overlap, eps):
    """A V4 window compressor: entries [B, T, dim] (RoPE'd at w * rate)."""
    b, s, _ = x.shape
    n = s // rate
    kv = (x[:, :n * rate] @ w[prefix + "kv_proj.weight"].T).reshape(b, n, rate, -1)
    gate = (x[:, :n * rate] @ w[prefix + "gate_proj.weight"].T).reshape(b, n, rate, -1) + w[prefix + "position_bias"]
    if overlap:
        prev_kv = np.concatenate([np.zeros((b, 1, rate, dim)), kv[:, :n - 1, :, :dim]], 1)
        prev_gate = np.concatenate([np.full((b, 1, rate, dim), MASK), gate[:, :n - 1, :, :dim]], 1)
        kv = np.concatenate([prev_kv, kv[..., dim:]], 2)
        gate = np.concatenate([prev_gate, gate[..., dim:]], 2)
    g = np.exp(gate - gate.max(2, keepdims=True))
    pooled = rms((kv * g / g.sum(2, keepdims=True)).sum(2), w[prefix + "kv_norm.weight"], eps)
    starts = np.arange(n) * rate
    return rope_tail(pooled[:, None], cos[:, :, starts], sin[:, :, starts])[:, 0]


def v4_csa_attention(attn, x, cos, sin, positions, window_keep, stage, eps):
    """V4Attention of a CSA layer: x [B, S, H], the compress rope's cos/sin [B, 1, S, r/2],
    positions [B, S], window_keep [B, S, S] bool (the sliding window)."""
    w = weights(attn)
    b, s, _ = x.shape
    d = attn.head_dim
    comp = attn.compressor
    q_resid = rms(x @ w["q_a_proj.weight"].T, w["q_a_norm.weight"], eps)
    q = rms((q_resid @ w["q_b_proj.weight"].T).reshape(b, s, -1, d), None, eps).transpose(0, 2, 1, 3)
    heads = q.shape[1]
    q = rope_tail(q, cos, sin)
    kv = rope_tail(rms(x @ w["kv_proj.weight"].T, w["kv_norm.weight"], eps)[:, None], cos, sin)[:, 0]
    entries = _compress(w, "compressor.", x, cos, sin, comp.rate, d, True, eps)          # [B, T, D]
    t = entries.shape[1]
    causal = np.arange(t)[None, None, :] < ((positions + 1) // comp.rate)[..., None]     # [B, S, T]
    # the indexer: its own compressor at index_head_dim, per-head weights
    ix = comp.indexer
    ikeys = _compress(w, "compressor.indexer.", x, cos, sin, ix.rate, ix.head_dim, True, eps)
    qi = (q_resid @ w["compressor.indexer.q_b_proj.weight"].T).reshape(b, s, ix.n_heads, ix.head_dim)
    qi = rope_tail(qi.transpose(0, 2, 1, 3), cos, sin)
    logits = np.maximum(qi @ ikeys[:, None].transpose(0, 1, 3, 2), 0) / np.sqrt(ix.head_dim)
    head_w = (x @ w["compressor.indexer.scorer.weights_proj.weight"].T).transpose(0, 2, 1) / np.sqrt(ix.n_heads)
    index = np.where(causal, (logits * head_w[..., None]).sum(1), -np.inf)
    chosen = top_k_mask(index, causal, ix.topk)
    visible = causal if stage == "dense_warmup" else chosen
    keys = np.concatenate([kv, entries], 1)                                               # [B, S+T, D]
    raw = q @ keys[:, None].transpose(0, 1, 3, 2) / np.sqrt(d)                            # [B, H, S, S+T]
    sink = np.broadcast_to(w["sinks"].reshape(1, heads, 1, 1), (b, heads, s, 1))

    def joint(entry_visible):
        keep = np.concatenate([window_keep, entry_visible], -1)[:, None]
        return softmax(np.concatenate([raw + np.where(keep, 0.0, MASK), sink], -1))[..., :-1]

    probs, dense_p = joint(visible), joint(causal)
    out = probs @ keys[:, None]                                                            # [B, H, S, D]
    out = rope_tail(out, cos, -sin).transpose(0, 2, 1, 3).reshape(b, s, -1)
    g = attn.o_a_proj.groups
    per = out.reshape(b, s, g, -1)
    wa = w["o_a_proj.weight"].reshape(g, -1, per.shape[-1])
    grouped = np.einsum("bsgi,goi->bsgo", per, wa).reshape(b, s, -1)
    out = grouped @ w["o_b_proj.weight"].T
    return out, distill(probs[..., s:], visible, index, dense_p[..., s:], causal, chosen)
