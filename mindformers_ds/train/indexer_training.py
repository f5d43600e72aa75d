"""`train.indexer_stage`: which parameters train in each stage of DeepSeek's indexer recipe
(models/deepseek/indexer_loss.py has the math), and what a stage change does to a resumed run.

    frozen        the release's behaviour: the indexers do not train (nothing changes)
    dense_warmup  dense attention; only the indexers train, by their KL (V3.2: lr 1e-3, 1000 steps)
    sparse        top-k attention; everything trains, the indexers by their KL only

A run may resume a checkpoint of the previous stage (`train.resume=<its step directory>`): the
weights load as usual; the optimizer state of the previous stage covers other parameters (the
indexers alone after the warm-up), and one global Adam step count cannot serve fresh moments
and old ones at once (the bias correction of the new ones would be wrong), so the whole
optimizer starts fresh and the log says so. DeepSeek restarts its optimizer between the stages
as well (the sparse stage has its own learning rate, 7.3e-6 against 1e-3).
"""
from __future__ import annotations

import logging
from typing import List, Sequence

log = logging.getLogger("mindformers_ds.train")


def apply_indexer_stage(model, stage: str, weight: float) -> List[str]:
    """Set the stage on the model (before its first compile) and the trainable flags it implies;
    -> the indexers' parameter names (empty when frozen)."""
    indexer = model.set_indexer_stage(stage, weight)
    if stage == "frozen":
        return []
    if stage == "dense_warmup":
        for p in model.get_parameters():
            p.requires_grad = False
    for p in indexer:
        p.requires_grad = True
    names = [p.name for p in indexer]
    log.info("indexer stage %s: %d indexer tensors train (KL weight %g)%s", stage, len(names), weight,
             "; every other parameter is frozen" if stage == "dense_warmup" else "")
    return names


def saved_tensor_names(path: str, filename: str) -> List[str]:
    """The tensor names of a checkpoint's file, whatever its layout (one file or shards)."""
    from ..parallel.shards import ShardedCheckpoint
    ck = ShardedCheckpoint(path)
    try:
        return ck.names(filename)
    finally:
        ck.close()


def optimizer_state_matches(saved_names: Sequence[str], state_params) -> bool:
    """Whether a checkpoint's optimizer state holds exactly the current one's tensors."""
    return set(saved_names) == {p.name for p in state_params}


def fresh_optimizer_note(path: str, saved_names: Sequence[str], state_params) -> str:
    """The log line of a resume whose optimizer state does not fit (a stage change)."""
    now = {p.name for p in state_params}
    saved = set(saved_names)
    added = sorted(n.split(".", 2)[-1] for n in now - saved if n.startswith("optimizer.exp_avg."))
    dropped = sorted(n.split(".", 2)[-1] for n in saved - now if n.startswith("optimizer.exp_avg."))
    return (f"{path}: its optimizer state covers other trainable parameters ({len(added)} newly trainable, e.g. "
            f"{added[:2]}; {len(dropped)} no longer trainable): the optimizer starts fresh (step 0, zero moments) "
            "for every parameter; the weights are resumed")
