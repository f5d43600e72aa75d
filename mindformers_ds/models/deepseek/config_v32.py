"""DeepSeek-V3.2's part of the model config: the Lightning Indexer's fields, validated here; the
rest of V3.2 is V3's. V4's CSA layers index with the same three fields (config_v4.py checks them
for V4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from .config_common import Problems


@dataclass(frozen=True)
class V32Fields:
    # DeepSeek Sparse Attention (Lightning Indexer); index_topk 0 = dense MLA
    index_topk: int = 0
    index_n_heads: int = 64
    index_head_dim: int = 128

    def v32_problems(self, p: str) -> List[Tuple[str, str]]:
        out = Problems()
        need = out.need

        need(self.index_topk > 0, "index_topk", f"{p}index_topk={self.index_topk} must be > 0 for deepseek_v32")
        need(self.q_lora_rank is not None, "q_lora_rank",
             f"{p}q_lora_rank must be set for deepseek_v32 (the indexer reads the q latent)")
        need(self.index_n_heads > 0, "index_n_heads", f"{p}index_n_heads={self.index_n_heads} must be > 0")
        need(self.index_head_dim >= self.qk_rope_head_dim, "index_head_dim",
             f"{p}index_head_dim={self.index_head_dim} must be >= {p}qk_rope_head_dim={self.qk_rope_head_dim}")
        return out
