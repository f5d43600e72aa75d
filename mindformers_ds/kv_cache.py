"""Incremental decoding with a per-layer cache of MLA latents (c_kv [B, L, r], k_pe [B, L, d]).

MLA's cache is the compressed latent, not per-head keys and values, so it is small. Both
graphs have static shapes: `prefill` runs the padded prompts [B, L] once and returns every
layer's latents; `decode` feeds one token per row at its own position and blends its latents
into the cache. The caches travel in and out of the graphs as tensors (no hidden state). Both
run the model's one layer loop (CausalLM.run_layers) with the bundle the model builds
(`layer_inputs`, `decode_inputs`).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .models.deepseek import results as R


class _Prefill(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, last):
        """The padded prompts [B, L] through the model's one layer loop, every slot written;
        -> (logits at each row's last prompt token [B, V], the caches)."""
        m = self.model
        b, s = input_ids.shape
        h = m.first_hidden(input_ids)
        write = ops.ones((b, s, 1), h.dtype)
        run = m.run_layers(h, m.layer_inputs(input_ids), m.empty_caches(b, s, h.dtype), write)
        h, caches = run[R.HIDDEN], run[R.CACHES]
        logits = m.head(m.last_hidden(h))
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
        inputs, write = m.decode_inputs(pos, caches[0].shape[1])
        h = m.first_hidden(token.reshape(b, 1))
        run = m.run_layers(h, inputs, caches, write.astype(h.dtype))
        h, new = run[R.HIDDEN], run[R.CACHES]
        return m.head(m.last_hidden(h)).squeeze(1), new


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
