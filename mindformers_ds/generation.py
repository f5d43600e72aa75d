"""Text generation: greedy or sampled (temperature, top-k, top-p), stopping at EOS.

Two decoders share the sampling code:
* `recompute`: every step runs the whole fixed-shape [B, L] sequence through one compiled
  graph and reads the logits at each row's last position (right padding cannot affect
  earlier positions under the causal mask). Simple, always correct, O(L) work per token.
* `cache`: a prefill graph fills every layer's decoding caches (MLA latents, V3.2's indexer
  keys, V4's window ring and compressor state), then a one-token decode graph reuses them
  (see `kv_cache.py`).
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .models.deepseek.attention_types import REGISTRY, attention_type

log = logging.getLogger(__name__)


class NextTokenLogits(nn.Cell):
    """logits [B, V] at position `last[b]` of each row of ids [B, L]."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, last):
        logits = self.model(input_ids)
        idx = last.reshape(-1, 1, 1).broadcast_to((logits.shape[0], 1, logits.shape[2]))
        return ops.gather_elements(logits, 1, idx).squeeze(1)


def sample_next(logits: np.ndarray, rng: np.random.Generator, temperature: float = 0.0, top_k: int = 0,
                top_p: float = 1.0) -> np.ndarray:
    """Next token per row of logits [B, V]; temperature 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1)
    z = logits.astype(np.float64) / temperature
    if top_k > 0:
        kth = np.sort(z, -1)[:, -min(top_k, z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, -1)
        sorted_p = np.take_along_axis(p, order, -1)
        keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < top_p   # always keeps the top token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


class Generator:
    def __init__(self, model, max_length: int, batch_size: int = 8, use_cache: bool = False):
        self.model, self.max_length, self.batch_size = model, max_length, batch_size
        # an attention type registered without a cached path recomputes the prefix (exact, slower)
        c = model.config
        kinds = {attention_type(c, i) for i in range(c.num_hidden_layers)}
        uncached = sorted(k for k in kinds if not REGISTRY[k].cached_decoding(c))
        if use_cache and uncached:
            log.info("KV cache is not implemented for attention types %s (%s); generating by recomputation",
                     uncached, c.model_type)
            use_cache = False
        self.use_cache = use_cache
        self._step = NextTokenLogits(model)
        self._cached = None
        if use_cache:
            from .kv_cache import CachedDecoder
            self._cached = CachedDecoder(model, batch_size, max_length)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: Optional[int] = None,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 progress: Optional[str] = None, keep_eos: bool = False) -> List[List[int]]:
        """New tokens for each prompt (EOS excluded unless `keep_eos`). Prompts longer than
        max_length - 1 are refused. `progress`: show a bar with this title over the batches."""
        from tqdm import tqdm
        out: List[List[int]] = []
        rng = np.random.default_rng(seed)
        starts = range(0, len(prompts), self.batch_size)
        for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
            chunk = [list(p) for p in prompts[start:start + self.batch_size]]
            out += self._generate_batch(chunk, max_new_tokens, eos_id, rng, temperature, top_k, top_p, keep_eos)
        return out

    def _generate_batch(self, prompts, max_new, eos_id, rng, temperature, top_k, top_p, keep_eos=False):
        b, length = self.batch_size, self.max_length
        for p in prompts:
            if not 0 < len(p) < length:
                raise ValueError(f"prompt of {len(p)} tokens does not fit max_length={length} (needs 1..{length - 1})")
        ids = np.zeros((b, length), np.int32)
        lens = np.ones(b, np.int64)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
            lens[i] = len(p)
        n = len(prompts)
        done = np.zeros(b, bool)
        done[n:] = True
        new: List[List[int]] = [[] for _ in range(n)]
        if self._cached is not None:
            logits = self._cached.prefill(ids, lens)
        for _ in range(max_new):
            if self._cached is None:
                logits = self._step(ms.Tensor(ids), ms.Tensor((lens - 1).astype(np.int32))).asnumpy()
            nxt = sample_next(logits, rng, temperature, top_k, top_p)
            for i in range(n):
                if done[i]:
                    continue
                if (eos_id is not None and nxt[i] == eos_id) or lens[i] >= length:
                    done[i] = True
                    if keep_eos and eos_id is not None and nxt[i] == eos_id:
                        new[i].append(int(nxt[i]))
                    continue
                new[i].append(int(nxt[i]))
                ids[i, lens[i]] = nxt[i]
                lens[i] += 1
            if done.all():
                break
            if self._cached is not None:
                logits = self._cached.decode(ids[np.arange(b), lens - 1], lens - 1)
        return new


def generate_ids(model, input_ids, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                 attention_mask=None, seed: int = 0, use_cache: bool = True) -> np.ndarray:
    """transformers' `generate` on this stack: prompts [B, S] (a numpy array, list or Tensor;
    `attention_mask` marks real tokens when rows have padding, on either side) -> [B, S' + new]
    int32 ids, each row its prompt then its new tokens (EOS included, as transformers does),
    right-padded with `pad_token_id`. Greedy unless `do_sample`. EOS and pad default to the
    model config's. One compiled decoder per (batch, length) is kept on the model."""
    ids = np.asarray(input_ids.asnumpy() if hasattr(input_ids, "asnumpy") else input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(
        attention_mask.asnumpy() if hasattr(attention_mask, "asnumpy") else attention_mask)
    prompts = [[int(t) for t, m in zip(row, mrow) if m] for row, mrow in zip(ids, mask)]
    cfg = model.config
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    pad = (cfg.pad_token_id if cfg.pad_token_id is not None else eos) if pad_token_id is None else pad_token_id
    length = max(len(p) for p in prompts) + max_new_tokens
    if length > cfg.max_position_embeddings:
        raise ValueError(f"prompt + max_new_tokens = {length} tokens exceeds model.max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    key = (len(prompts), length, use_cache)
    cache = model.generators
    if key not in cache:
        cache.clear()  # one compiled pair of graphs at a time: a new shape compiles anew
        cache[key] = Generator(model, length, batch_size=len(prompts), use_cache=use_cache)
    new = cache[key].generate(prompts, max_new_tokens, eos_id=eos, temperature=temperature if do_sample else 0.0,
                              top_k=top_k if do_sample else 0, top_p=top_p if do_sample else 1.0, seed=seed,
                              keep_eos=True)
    rows = [p + n for p, n in zip(prompts, new)]
    out = np.full((len(rows), max(len(r) for r in rows)), pad, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
