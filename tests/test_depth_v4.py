"""Real depth (issue 16), V4: a 43-layer DeepSeek-V4 (all three attention types, hash and learned
MoE, mHC streams) builds, trains one step with every fused op, evaluates and generates.
(A file of its own so the two xdist workers share the deep-model tests.)"""
from __future__ import annotations

import numpy as np
import pytest

from mindformers_ds import config
from test_depth import ATTN, FUSED, V4, one_step, v4_depth


@pytest.mark.timeout(1200)
def test_v4_with_43_layers_trains_evaluates_and_generates():
    cfg = config.load(V4, [*v4_depth(43), FUSED], check_paths=False)
    model, loss, norm, finite, moved, eval_loss, gen = one_step(cfg, batch=1, seq=48)
    kinds = {layer.self_attn.layer_type for layer in model.model.layers}
    assert len(model.model.layers) == 43 and kinds == set(ATTN)
    assert {layer.mlp.gate.is_hash for layer in model.model.layers} == {True, False}
    assert finite and np.isfinite(loss) and abs(loss - np.log(512)) < 1.0
    assert moved == len(model.trainable_params()) and eval_loss < loss and len(gen[0]) == 6
