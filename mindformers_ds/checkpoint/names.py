"""HuggingFace checkpoint names <-> the in-memory names of this stack.

They are the same names except for routed experts: checkpoints hold one tensor per expert
(`mlp.experts.{e}.{gate,up,down}_proj.weight`), the model holds them stacked
(`mlp.experts.gate_up_proj [E, 2I, H]`, `mlp.experts.down_proj [E, H, I]`). Official
releases also repeat the embedding and head inside the MTP block
(`model.layers.{L}.embed_tokens.weight`, `model.layers.{L}.shared_head.head.weight`); the
model shares the main ones, and those tensors pass through conversion untouched.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

EXPERT_RE = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")
STACKED_RE = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<kind>gate_up_proj|down_proj)$")
SCALE_SUFFIX = "_scale_inv"


def expert_key(name: str) -> Optional[Tuple[str, int, str]]:
    """('model.layers.3.mlp.experts', 5, 'gate_proj') for a per-expert HF tensor name, else None."""
    m = EXPERT_RE.match(name)
    return (m["prefix"], int(m["e"]), m["proj"]) if m else None


def is_release_mtp(name: str) -> bool:
    """V4's MTP block (`mtp.*`): not instantiated by the model; conversion keeps it as stored."""
    return name.startswith("mtp.")


def is_mtp_passthrough(name: str, num_hidden_layers: int) -> bool:
    """Tensors of official MTP blocks that the model shares with the main model, and V4's MTP
    block, which the model does not instantiate; conversion keeps them as they are."""
    if is_release_mtp(name):
        return True
    m = re.match(r"^model\.layers\.(\d+)\.(embed_tokens\.weight|shared_head\.head\.weight)$", name)
    return bool(m) and int(m.group(1)) >= num_hidden_layers


def stack_experts(per_expert: Dict[Tuple[int, str], np.ndarray], num_experts: int, prefix: str
                  ) -> Dict[str, np.ndarray]:
    """{(e, 'gate_proj'|'up_proj'|'down_proj'): [out, in]} -> stacked gate_up [E, 2I, H] and down [E, H, I]."""
    missing = [f"{prefix}.{e}.{p}.weight" for e in range(num_experts) for p in ("gate_proj", "up_proj", "down_proj")
               if (e, p) not in per_expert]
    if missing:
        raise KeyError(f"missing expert tensors: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    gate_up = np.stack([np.concatenate([per_expert[(e, "gate_proj")], per_expert[(e, "up_proj")]], 0)
                        for e in range(num_experts)])
    down = np.stack([per_expert[(e, "down_proj")] for e in range(num_experts)])
    return {f"{prefix}.gate_up_proj": gate_up, f"{prefix}.down_proj": down}


def unstack_experts(name: str, value: np.ndarray) -> List[Tuple[str, np.ndarray]]:
    """Stacked expert tensor -> per-expert HF tensors (views; no copy)."""
    m = STACKED_RE.match(name)
    assert m, name
    prefix, kind = m["prefix"], m["kind"]
    out = []
    for e in range(value.shape[0]):
        if kind == "gate_up_proj":
            inter = value.shape[1] // 2
            out.append((f"{prefix}.{e}.gate_proj.weight", value[e, :inter]))
            out.append((f"{prefix}.{e}.up_proj.weight", value[e, inter:]))
        else:
            out.append((f"{prefix}.{e}.down_proj.weight", value[e]))
    return out


def hf_to_internal(tensors: Dict[str, np.ndarray], num_experts: int) -> Dict[str, np.ndarray]:
    """Whole-dict conversion (small models); the streaming converter does the same per layer."""
    out: Dict[str, np.ndarray] = {}
    groups: Dict[str, Dict[Tuple[int, str], np.ndarray]] = {}
    for name, value in tensors.items():
        k = expert_key(name)
        if k is None:
            out[name] = value
        else:
            groups.setdefault(k[0], {})[(k[1], k[2])] = value
    for prefix, per_expert in groups.items():
        out.update(stack_experts(per_expert, num_experts, prefix))
    return out


def internal_to_hf(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if STACKED_RE.match(name):
            out.update(unstack_experts(name, value))
        else:
            out[name] = value
    return out


def hf_names_of(internal_names: Iterable[str], shapes: Dict[str, Tuple[int, ...]]) -> List[str]:
    names: List[str] = []
    for n in internal_names:
        m = STACKED_RE.match(n)
        if not m:
            names.append(n)
            continue
        for e in range(shapes[n][0]):
            if m["kind"] == "gate_up_proj":
                names += [f"{m['prefix']}.{e}.gate_proj.weight", f"{m['prefix']}.{e}.up_proj.weight"]
            else:
                names.append(f"{m['prefix']}.{e}.down_proj.weight")
    return names
