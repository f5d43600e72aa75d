"""Held-out evaluation: token-mean loss and perplexity, and exact match of greedy answers."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import nn

from ..data.packing import Rows
from ..models.deepseek import results as R


class EvalSums(nn.Cell):
    """(nll sum, target count) of a batch under the next-token loss."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, labels, position_ids, segment_ids):
        parts = self.model.forward_train(input_ids, labels, position_ids, segment_ids)
        return parts[R.LM_SUM], parts[R.LM_COUNT]


def eval_loss(sums: EvalSums, rows: Rows, batch_size: int, max_batches: int) -> Dict[str, float]:
    total, count = 0.0, 0.0
    n = min(len(rows), batch_size * max_batches) if max_batches > 0 else len(rows)
    for start in range(0, n - batch_size + 1, batch_size):   # fixed batch shape: one compiled graph
        part = rows.take(np.arange(start, start + batch_size))
        s, c = sums(ms.Tensor(part.input_ids), ms.Tensor(part.labels), ms.Tensor(part.position_ids),
                    ms.Tensor(part.segment_ids))
        total += float(s.asnumpy())
        count += float(c.asnumpy())
    loss = total / max(count, 1.0)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": count}


def exact_match(generator, tokenizer, records: Sequence[Dict], max_new_tokens: int,
                progress: Optional[str] = None) -> Dict[str, object]:
    """Share of records whose greedy answer equals the reference `output` (whitespace-stripped).
    `progress`: a bar with this title over the generated batches (the first one compiles)."""
    from ..data.datasets import to_messages
    prompts, refs = [], []
    for r in records:
        msgs = to_messages(r, "auto", "eval")
        prompts.append(tokenizer.encode_prompt(msgs[:-1]))
        refs.append(msgs[-1]["content"].strip())
    outs = generator.generate(prompts, max_new_tokens, eos_id=tokenizer.eos_id, progress=progress)
    answers = [tokenizer.decode(o).strip() for o in outs]
    hits = [a == ref for a, ref in zip(answers, refs)]
    examples: List[Dict[str, str]] = [{"prompt": r.get("instruction", "") + " " + r.get("input", ""),
                                       "expected": ref, "got": a} for r, ref, a in zip(records[:3], refs, answers)]
    return {"exact_match": float(np.mean(hits)) if hits else 0.0, "n": len(hits), "examples": examples}
