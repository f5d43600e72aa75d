"""Incremental decoding through per-layer caches, for every family.

Each attention type keeps what its next token needs (`cache_count` tensors, `empty_cache`):
* MLA (V2/V3): the compressed latents c_kv [B, L, r] and k_pe [B, L, d], not per-head keys and
  values; V3.2 adds its Lightning Indexer's keys [B, L, Di], which it scores each new query
  against to pick the top-k cached positions;
* V4: the sliding window's keys as a ring of `sliding_window` slots, and for CSA/HCA layers each
  compressor's closed entries [B, L // m, D] plus the tokens of its open window(s) (a ring of m
  or 2m slots: CSA pools two overlapping windows), and the same for CSA's indexer.
Both graphs have static shapes: `prefill` runs the padded prompts [B, L] once and returns every
layer's caches as of each row's last prompt token; `decode` feeds one token per row at its own
position and returns the updated caches. The caches travel in and out of the graphs as one flat
tuple of tensors (no hidden state). Both run the model's one layer loop (CausalLM.run_layers)
with the bundle the model builds (`prefill_inputs`, `decode_inputs`).
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
        run = m.run_layers(h, m.prefill_inputs(input_ids, last), m.empty_caches(b, s, h.dtype), True)
        h, caches = run[R.HIDDEN], run[R.CACHES]
        logits = m.head(m.last_hidden(h))
        idx = last.reshape(-1, 1, 1).broadcast_to((b, 1, logits.shape[2]))
        return ops.gather_elements(logits, 1, idx).squeeze(1), caches


class _Decode(nn.Cell):
    def __init__(self, model, max_length: int):
        super().__init__(auto_prefix=False)
        self.model = model
        self.length = max_length

    def construct(self, token, pos, caches):
        """token [B] at position pos [B]; caches: the flat tuple run_layers returned."""
        m = self.model
        b = token.shape[0]
        h = m.first_hidden(token.reshape(b, 1))
        run = m.run_layers(h, m.decode_inputs(token, pos, self.length), caches, False)
        h, new = run[R.HIDDEN], run[R.CACHES]
        return m.head(m.last_hidden(h)).squeeze(1), new


class CachedDecoder:
    def __init__(self, model, batch_size: int, max_length: int):
        self._prefill = _Prefill(model)
        self._decode = _Decode(model, max_length)
        self.caches = None

    def prefill(self, ids: np.ndarray, lens: np.ndarray) -> np.ndarray:
        logits, self.caches = self._prefill(ms.Tensor(ids), ms.Tensor((lens - 1).astype(np.int32)))
        return logits.asnumpy()

    def decode(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        logits, self.caches = self._decode(ms.Tensor(tokens.astype(np.int32)),
                                           ms.Tensor(positions.astype(np.int32)), ms.mutable(self.caches))
        return logits.asnumpy()
