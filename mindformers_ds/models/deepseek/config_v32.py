"""DeepSeek-V3.2's part of the model config: the Lightning Indexer's fields (index_topk,
index_n_heads, index_head_dim), validated here; the rest of V3.2 is V3's."""
from __future__ import annotations

from typing import List, Tuple

from .config_common import Problems


def v32_problems(c, p: str) -> List[Tuple[str, str]]:
    out = Problems()
    need = out.need

    need(c.index_topk > 0, "index_topk", f"{p}index_topk={c.index_topk} must be > 0 for deepseek_v32")
    need(c.q_lora_rank is not None, "q_lora_rank",
         f"{p}q_lora_rank must be set for deepseek_v32 (the indexer reads the q latent)")
    need(c.index_n_heads > 0, "index_n_heads", f"{p}index_n_heads={c.index_n_heads} must be > 0")
    need(c.index_head_dim >= c.qk_rope_head_dim, "index_head_dim",
         f"{p}index_head_dim={c.index_head_dim} must be >= {p}qk_rope_head_dim={c.qk_rope_head_dim}")
    return out
