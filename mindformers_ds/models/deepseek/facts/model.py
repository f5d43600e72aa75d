"""The blocks a config builds, in the model's order: embedding, decoder layers (attention and
feed-forward, V4's hyper-connections, the MTP modules of V3), final norm, head.

A layer's attention facts come from the type it builds (attention_types.py: "mla" for
V2/V3/V3.2, V4's three types, and whatever else is registered).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Iterator, List

from ..attention_types import REGISTRY, attention_type
from .base import ActivationShape, BlockFacts, Composite, Norms, Spec
from .ffn import MoeFacts, ffn_facts
from .v4_attention import HyperConnectionFacts


class MtpInputFacts(BlockFacts):
    """What an MTP module adds around its decoder layer: enorm, hnorm, eh_proj over [emb; h], the
    shared head's norm; the head's FLOPs again (it predicts through the shared head)."""

    def __init__(self, c, prefix: str):
        self.c, self.prefix = c, prefix

    def params(self) -> Iterator[Spec]:
        p, h = self.prefix, self.c.hidden_size
        yield p + "enorm.weight", (h,), "norm"
        yield p + "hnorm.weight", (h,), "norm"
        yield p + "eh_proj.weight", (h, 2 * h), "mla_latent"
        yield p + "shared_head.norm.weight", (h,), "norm"

    def flops(self, seq: int) -> Dict[str, float]:
        h = self.c.hidden_size
        return {"mtp_proj": float(2 * 2 * h * h), "mtp_head": float(2 * h * self.c.vocab_size)}

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        return {"mtp_inputs": a.B * a.tokens * 5 * self.c.hidden_size}   # norms, concat, eh_proj


class ReplicatedLayer(Composite):
    """A V4 layer: nothing in it is split by tp or sequence parallelism (transformers' TP plan)."""

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        return super().activations(replace(a, tp=1, sp=1))


def layer_facts(c, i: int) -> BlockFacts:
    p = f"model.layers.{i}."
    attention = REGISTRY[attention_type(c, i)].facts(c, p + "self_attn.", i)
    norms = Norms(p, c.hidden_size, "input_layernorm.weight", "post_attention_layernorm.weight")
    if c.is_v4:
        return ReplicatedLayer([norms, HyperConnectionFacts(c, p + "attn_hc."), HyperConnectionFacts(c, p + "ffn_hc."),
                                attention, MoeFacts(c, p + "mlp.", i)])
    if i < c.num_hidden_layers:
        return Composite([norms, attention, ffn_facts(c, p + "mlp.", i)])
    # an MTP module: its decoder layer's FLOPs are reported as mtp_*
    return Composite([Composite([norms, attention, ffn_facts(c, p + "mlp.", i)], "mtp_"), MtpInputFacts(c, p)])


def layer_graph_key(c, i: int):
    """What makes layer i's compiled graph differ from another's (the cells' `reuse_key`, reuse.py:
    dense or MoE and the attention type; V4's attention type and hash or learned routing; an MTP
    module is a class of its own); every layer its own without cell reuse."""
    if not c.cell_reuse:
        return i
    if c.is_v4:
        return attention_type(c, i), c.is_hash_layer(i)
    return i >= c.num_hidden_layers, c.is_moe_layer(i), attention_type(c, i)


class EmbeddingFacts(BlockFacts):
    def __init__(self, c):
        self.c = c

    def params(self) -> Iterator[Spec]:
        yield "model.embed_tokens.weight", (self.c.vocab_size, self.c.hidden_size), "embed"


class HyperHeadFacts(BlockFacts):
    """V4: the n streams mixed into one before the final norm."""

    def __init__(self, c):
        self.c = c

    def params(self) -> Iterator[Spec]:
        n, h = self.c.hc_mult, self.c.hidden_size
        yield "model.hc_head.hc_fn", (n, n * h), "hc"
        yield "model.hc_head.hc_base", (n,), "hc"
        yield "model.hc_head.hc_scale", (1,), "hc"

    def flops(self, seq: int) -> Dict[str, float]:
        n, h = self.c.hc_mult, self.c.hidden_size
        return {"hyper_connections": float(2 * n * h * n)}


class HeadFacts(BlockFacts):
    """Final norm and the head (tied to the embedding or not); its activations are the norm's
    output and the fp32 logits and softmax the loss backward reads, once per head (main + MTP)."""

    def __init__(self, c):
        self.c = c

    def params(self) -> Iterator[Spec]:
        c = self.c
        yield "model.norm.weight", (c.hidden_size,), "norm"
        if not c.tie_word_embeddings:
            yield "lm_head.weight", (c.vocab_size, c.hidden_size), "head"

    def flops(self, seq: int) -> Dict[str, float]:
        return {"lm_head": float(2 * self.c.hidden_size * self.c.vocab_size)}

    def head_activations(self, a: ActivationShape, vocab_split: int) -> float:
        c = self.c
        v = c.vocab_size / vocab_split
        return (1 + c.mtp_depth) * (a.B * a.tokens * 2 * c.hidden_size + 4 * a.tokens * 2 * v)


def decoder_layers(c, include_mtp: bool = True) -> List[int]:
    """Indices of the decoder layers a config builds (V3's MTP modules after the main ones;
    V4's MTP is not built: the converter keeps the release's `mtp.*` tensors)."""
    return list(range(c.num_hidden_layers + (c.mtp_depth if include_mtp else 0)))


def model_facts(c, include_mtp: bool = True) -> List[BlockFacts]:
    """Every block of the model in parameter order (the MTP modules last among the layers)."""
    ends = [HyperHeadFacts(c)] if c.is_v4 else []
    return [EmbeddingFacts(c), *(layer_facts(c, i) for i in decoder_layers(c, include_mtp)), *ends, HeadFacts(c)]
