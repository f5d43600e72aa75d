"""Incremental decoding with a per-layer cache of MLA latents (c_kv [B, L, r], k_pe [B, L, d]).

MLA's cache is the compressed latent, not per-head keys and values, so it is small. Both
graphs have static shapes: `prefill` runs the padded prompts [B, L] once and returns every
layer's latents; `decode` feeds one token per row at its own position and blends its latents
into the cache. The caches travel in and out of the graphs as tensors (no hidden state).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .models.deepseek.masks import attention_mask


class _Prefill(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, last):
        m = self.model
        b, s = input_ids.shape
        pos = ops.broadcast_to(ops.arange(s, dtype=ms.int32).expand_dims(0), (b, s))
        cos, sin = m.model.rotary_emb(pos)
        mask = attention_mask(b, s)
        h = m.model.embed_tokens(input_ids)
        caches = ()
        for i in range(m.num_layers):
            attn = m.model.layers[i].self_attn
            zeros_c = ops.zeros((b, s, attn.kv_lora_rank), h.dtype)
            zeros_k = ops.zeros((b, s, attn.rope_dim), h.dtype)
            h, c, k = m.model.layers[i].forward_cached(h, cos, sin, mask, zeros_c, zeros_k,
                                                       ops.ones((b, s, 1), h.dtype))
            caches = caches + (c, k)
        logits = m.head(m.model.norm(h))
        idx = last.reshape(-1, 1, 1).broadcast_to((b, 1, logits.shape[2]))
        return ops.gather_elements(logits, 1, idx).squeeze(1), caches


class _Decode(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, token, pos, caches):
        """token [B] at position pos [B]; caches: (c_0, k_0, c_1, k_1, ...)."""
        m = self.model
        b = token.shape[0]
        length = caches[0].shape[1]
        cos, sin = m.model.rotary_emb(pos.reshape(b, 1))
        slots = ops.arange(length, dtype=ms.int32).expand_dims(0)
        mask = (slots <= pos.reshape(b, 1)).reshape(b, 1, 1, length)
        write = (slots == pos.reshape(b, 1)).astype(ms.float32).reshape(b, length, 1)
        h = m.model.embed_tokens(token.reshape(b, 1))
        new = ()
        for i in range(m.num_layers):
            h, c, k = m.model.layers[i].forward_cached(h, cos, sin, mask, caches[2 * i], caches[2 * i + 1],
                                                       write.astype(h.dtype))
            new = new + (c, k)
        return m.head(m.model.norm(h)).squeeze(1), new


class CachedDecoder:
    def __init__(self, model, batch_size: int, max_length: int):
        self._prefill = _Prefill(model)
        self._decode = _Decode(model)
        self.caches = None

    def prefill(self, ids: np.ndarray, lens: np.ndarray) -> np.ndarray:
        logits, self.caches = self._prefill(ms.Tensor(ids), ms.Tensor((lens - 1).astype(np.int32)))
        return logits.asnumpy()

    def decode(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        logits, self.caches = self._decode(ms.Tensor(tokens.astype(np.int32)),
                                           ms.Tensor(positions.astype(np.int32)), ms.mutable(self.caches))
        return logits.asnumpy()
