"""The attention types a decoder layer can be built with, and what each brings along.

An attention type is registered once with
* `facts(config, prefix, layer)`: its parameters (names, shapes, parallel roles), FLOPs and
  activation bytes (facts/base.py), which the converter, layout table, planner and FLOP
  counter read;
* `cached_decoding(config)`: whether kv_cache.py can decode it (its cell has `cache_count`,
  `empty_cache` and `forward_cached`); otherwise generation recomputes;
* `cell`: the MindSpore cell, `"module:Class"` (imported when a model is built, so this
  registry stays MindSpore-free) or the class itself; built as `cell(config)` for V2/V3
  layers (called as `cell(x, cos, sin, mask)`), `cell(config, layer)` for V4's;
* `family`: "v3" (MLA's layer: V2/V3/V3.2) or "v4";
* `problems(config, prefix)`: its config part's checks, [(field, one-line message)].
A V2/V3 config picks one per layer with `model.attention_types` (empty: MLA everywhere; MTP
layers are MLA); V4's `layer_types` are its three registered types. A new attention type is
its block file calling `register` (and its config checks); nothing else is edited.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple, Union

from .facts.base import BlockFacts
from .facts.mla import MlaFacts
from .facts.v4_attention import CSA, HCA, SLIDING, V4AttentionFacts, attention_kind


def _no_problems(c, prefix: str) -> List[Tuple[str, str]]:
    return []


def _no_cache(c) -> bool:
    return False


@dataclass(frozen=True)
class AttentionType:
    name: str
    facts: Callable[..., BlockFacts]
    cell: Union[str, type]
    family: str
    problems: Callable[..., List[Tuple[str, str]]] = _no_problems
    cached_decoding: Callable[..., bool] = _no_cache   # config -> has a KV-cache path (kv_cache.py)?


REGISTRY: Dict[str, AttentionType] = {}


def register(t: AttentionType) -> AttentionType:
    REGISTRY[t.name] = t
    return t


def attention_type(c, layer: int) -> str:
    """The type decoder layer `layer` of config `c` builds."""
    if c.is_v4:
        return attention_kind(c, layer)
    return c.attention_types[layer] if layer < len(c.attention_types) else "mla"


def cell_class(name: str) -> Any:
    cell = REGISTRY[name].cell
    if isinstance(cell, str):
        module, _, cls = cell.partition(":")
        return getattr(importlib.import_module(module), cls)
    return cell


def attention_problems(c, prefix: str) -> List[Tuple[str, str]]:
    """`model.attention_types` names registered types of this family, one per decoder layer;
    then each type in use checks its own config part."""
    if c.is_v4 or not c.attention_types:
        return []
    names = list(c.attention_types)
    unknown = sorted({n for n in names if n not in REGISTRY or REGISTRY[n].family != "v3"})
    if unknown:
        known = [n for n, t in REGISTRY.items() if t.family == "v3"]
        return [("attention_types", f"{prefix}attention_types has unknown types {unknown}; known: {known}")]
    if len(names) != c.num_hidden_layers:
        return [("attention_types", f"{prefix}attention_types lists {len(names)} layers but num_hidden_layers="
                                    f"{c.num_hidden_layers}")]
    out: List[Tuple[str, str]] = []
    for n in dict.fromkeys(names):
        out += REGISTRY[n].problems(c, prefix)
    return out


register(AttentionType("mla", lambda c, prefix, layer: MlaFacts(c, prefix),
                       "mindformers_ds.models.deepseek.attention:MLAttention", "v3",
                       cached_decoding=lambda c: True))
for _kind in (SLIDING, CSA, HCA):
    register(AttentionType(_kind, V4AttentionFacts, "mindformers_ds.models.deepseek.v4_attention:V4Attention", "v4",
                           cached_decoding=lambda c: True))
