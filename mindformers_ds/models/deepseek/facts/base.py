"""What every block states about itself, from the config alone (no MindSpore, no model built).

A block's facts object answers three questions, each used by one consumer:
* `params()`      -> (full name, shape, parallel role) of each parameter it owns: the converter
                     checks checkpoints against them, the layout table splits by role, the
                     planner counts them (`shapes.py` iterates);
* `flops(seq)`    -> forward FLOPs per token by component (`observe/flops.py` sums them);
* `activations(a)`-> bytes it keeps for its backward per micro-batch (`plan/memory.py` sums them).
Roles: embed, head, norm, linear_col (output dim splittable), linear_row (input dim), router,
router_bias, experts_gate_up, experts_down, mla_latent (replicated projections), indexer
(replicated, frozen), hc (hyper-connection weights), compressor, hash_table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Tuple

Spec = Tuple[str, Tuple[int, ...], str]
FP32 = 4  # bytes of what is kept in float32 whatever the compute dtype (probabilities, scores)


@dataclass(frozen=True)
class ActivationShape:
    """The micro-batch an activation count is for: `tokens` = batch * seq; `tp` splits per-head
    and FFN terms, `sp` (tp under sequence parallelism, else 1) the per-token hidden terms;
    `B` is the compute dtype's bytes."""
    tokens: float
    batch: int
    seq: int
    tp: int
    sp: int
    B: int


class BlockFacts:
    """Default: a block with no parameters, no FLOPs and no kept activations."""

    def params(self) -> Iterator[Spec]:
        return iter(())

    def flops(self, seq: int) -> Dict[str, float]:
        return {}

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        return {}


def add_into(total: Dict[str, float], part: Dict[str, float], prefix: str = "") -> Dict[str, float]:
    for k, x in part.items():
        total[prefix + k] = total.get(prefix + k, 0.0) + x
    return total


class Composite(BlockFacts):
    """A block made of blocks (a decoder layer): its facts are its parts' facts, in order;
    FLOP names get `flops_prefix` (the MTP module's layer reports `mtp_attn_proj`, ...)."""

    def __init__(self, parts: Iterable[BlockFacts], flops_prefix: str = ""):
        self.parts = list(parts)
        self.flops_prefix = flops_prefix

    def params(self) -> Iterator[Spec]:
        for p in self.parts:
            yield from p.params()

    def flops(self, seq: int) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for p in self.parts:
            add_into(out, p.flops(seq), self.flops_prefix)
        return out

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for p in self.parts:
            add_into(out, p.activations(a))
        return out


class Norms(BlockFacts):
    """RMSNorm weights (`names` under `prefix`); their activations are counted by the block each
    norm feeds (it reads the norm's input and output)."""

    def __init__(self, prefix: str, dim: int, *names: str):
        self.prefix, self.dim, self.names = prefix, dim, names

    def params(self) -> Iterator[Spec]:
        for n in self.names:
            yield self.prefix + n, (self.dim,), "norm"
