"""DeepSeek-V4 release tensor names -> the transformers names this stack uses.

DeepSeek's V4 release (and transformers' own `save_pretrained` of V4, which writes that layout
back) names tensors `layers.3.attn.wq_a.weight`, `layers.3.ffn.experts.7.w1.weight`,
`layers.3.hc_attn_fn`, `embed.weight`, `head.weight`, ... with quantisation scales as
`<module>.scale`. The renames below are the facts of transformers' conversion mapping for V4;
applied to a name already in transformers form they change nothing. `mtp.*` (the MTP block the
model does not instantiate) keeps its release names: conversion passes it through.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Tuple

from .names import is_release_mtp

_RENAMES: List[Tuple[str, str]] = [
    (r"^embed\.weight$", "embed_tokens.weight"),
    (r"^head\.weight$", "lm_head.weight"),
    (r"^hc_head_(fn|base|scale)$", r"hc_head.hc_\1"),
    (r"\.attn\.", ".self_attn."),
    (r"\.ffn\.", ".mlp."),
    (r"\.indexer\.compressor\.", ".compressor.indexer."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.hc_attn_(fn|base|scale)$", r".attn_hc.\1"),
    (r"\.hc_ffn_(fn|base|scale)$", r".ffn_hc.\1"),
    (r"\.attn_sink$", ".sinks"),
    (r"\.self_attn\.indexer\.weights_proj\.", ".self_attn.compressor.indexer.scorer.weights_proj."),
    (r"\.self_attn\.indexer\.wq_b\.", ".self_attn.compressor.indexer.q_b_proj."),
    (r"\.norm\.", ".kv_norm."),
    (r"\.ape$", ".position_bias"),
    (r"\.wq_a\.", ".q_a_proj."),
    (r"\.wq_b\.", ".q_b_proj."),
    (r"\.wkv\.", ".kv_proj."),
    (r"\.wgate\.", ".gate_proj."),
    (r"\.wo_a\.", ".o_a_proj."),
    (r"\.wo_b\.", ".o_b_proj."),
    (r"\.q_norm\.", ".q_a_norm."),
    (r"\.gate\.bias$", ".gate.e_score_correction_bias"),
    (r"\.(shared_experts|experts\.\d+)\.w1\.", r".\1.gate_proj."),
    (r"\.(shared_experts|experts\.\d+)\.w2\.", r".\1.down_proj."),
    (r"\.(shared_experts|experts\.\d+)\.w3\.", r".\1.up_proj."),
]
_COMPILED = [(re.compile(a), b) for a, b in _RENAMES]


def canonical_v4_name(name: str) -> str:
    """The transformers name of one V4 tensor name (release or transformers form)."""
    if is_release_mtp(name):
        return name
    body = name[len("model."):] if name.startswith("model.") else name
    for pattern, repl in _COMPILED:
        body = pattern.sub(repl, body)
    return body if body.startswith("lm_head.") else "model." + body


def canonical_v4_names(stored: Iterable[str]) -> Dict[str, str]:
    """{canonical name: stored name}. A quantisation scale `<m>.scale` becomes
    `<m>.weight_scale_inv` (the name the FP8 code looks for) when `<m>.weight` exists."""
    stored = list(stored)
    present = set(stored)
    out: Dict[str, str] = {}
    for name in stored:
        if name.endswith(".scale") and name[:-len(".scale")] + ".weight" in present and not is_release_mtp(name):
            canonical = canonical_v4_name(name[:-len(".scale")] + ".weight") + "_scale_inv"
        else:
            canonical = canonical_v4_name(name)
        if canonical in out:
            raise ValueError(f"tensors {out[canonical]!r} and {name!r} both map to {canonical!r}")
        out[canonical] = name
    return out


_INVERSE: List[Tuple[str, str]] = [
    (r"^lm_head\.weight$", "head.weight"),
    (r"\.self_attn\.compressor\.indexer\.scorer\.weights_proj\.", ".attn.indexer.weights_proj."),
    (r"\.self_attn\.compressor\.indexer\.q_b_proj\.", ".attn.indexer.wq_b."),
    (r"\.compressor\.indexer\.", ".indexer.compressor."),
    (r"\.self_attn\.", ".attn."),
    (r"\.mlp\.", ".ffn."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
    (r"\.attn_hc\.(fn|base|scale)$", r".hc_attn_\1"),
    (r"\.ffn_hc\.(fn|base|scale)$", r".hc_ffn_\1"),
    (r"\.sinks$", ".attn_sink"),
    (r"\.kv_norm\.", ".norm."),
    (r"\.position_bias$", ".ape"),
    (r"\.(shared_experts|experts\.\d+)\.gate_proj\.", r".\1.w1."),
    (r"\.(shared_experts|experts\.\d+)\.down_proj\.", r".\1.w2."),
    (r"\.(shared_experts|experts\.\d+)\.up_proj\.", r".\1.w3."),
    (r"\.gate_proj\.", ".wgate."),
    (r"\.q_a_proj\.", ".wq_a."),
    (r"\.q_b_proj\.", ".wq_b."),
    (r"\.kv_proj\.", ".wkv."),
    (r"\.o_a_proj\.", ".wo_a."),
    (r"\.o_b_proj\.", ".wo_b."),
    (r"\.q_a_norm\.", ".q_norm."),
    (r"\.gate\.e_score_correction_bias$", ".gate.bias"),
]
_INVERSE_COMPILED = [(re.compile(a), b) for a, b in _INVERSE]


def release_v4_name(canonical: str) -> str:
    """The name transformers' `save_pretrained` writes for a V4 tensor (release names under
    `model.`, `head.weight`); `canonical_v4_name` maps it back. `mtp.*` is left alone."""
    if is_release_mtp(canonical):
        return canonical
    out = canonical
    for pattern, repl in _INVERSE_COMPILED:
        out = pattern.sub(repl, out)
    return out
