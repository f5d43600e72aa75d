"""What one pipeline stage holds and the two graphs it runs per virtual stage.

A stage keeps the layers of its virtual stages (the layout table's `stage`), the embedding if it
holds the first virtual stage, and the final norm, head and MTP modules if it holds the last;
when MTP (or tied weights) needs the embedding there too, the last stage keeps a copy, whose
gradient is summed with the first stage's before the update (Megatron's shared embedding), so
both copies stay equal. Every other cell is replaced by a parameter-free `Dropped`.

Per virtual stage vs with layers [a, b):
    forward   h_out = layers_a..b-1(h_in)              (h_in = the embedding on vs 0)
    backward  value_and_grad of  sum(h_out * dh_out) + (aux + w * index_kl) * aux_scale  w.r.t.
              (h_in, weights): exactly the vector-Jacobian product the incoming gradient dh_out
              asks for, plus the stage's balance-loss and indexer-KL terms; on the last virtual
              stage the scalar is the scaled loss itself (train/step.scaled_loss).
MindSpore's graph mode keeps no tape between two graph calls, so the backward graph runs the
stage's forward again: the pipeline's backward is a stage-level recompute (what is kept between
a forward and its backward is the stage's input only).
"""
from __future__ import annotations

from typing import Callable, List

import mindspore as ms
from mindspore import nn, ops

from ..models.deepseek import results as R
from ..models.deepseek.indexer_loss import index_loss
from ..train.step import scaled_loss
from ..utils.cells import replace_cell


class Dropped(nn.Cell):
    """Where a module another pipeline stage owns was: no parameters, never run on this stage."""

    def construct(self, x):
        return x


def drop_unowned(model: nn.Cell, keep: Callable[[str], bool]) -> List[str]:
    """Replace every cell none of whose parameters `keep` holds; -> the dropped cells' names."""
    dropped: List[str] = []
    for name, cell in list(model.cells_and_names()):
        if not name or any(name.startswith(d + ".") for d in dropped):
            continue
        names = [p.name for p in cell.get_parameters()]
        if names and not any(keep(n) for n in names):
            replace_cell(model, name, Dropped())
            dropped.append(name)
    return dropped


class StageChunk(nn.Cell):
    """Layers [start, stop) of the model; `first` embeds the ids, `last` adds the heads' losses."""

    def __init__(self, model, start: int, stop: int, first: bool, last: bool):
        super().__init__(auto_prefix=False)
        self.model = model
        self.start, self.stop, self.first, self.last = start, stop, first, last

    def construct(self, h, input_ids, labels, position_ids, segment_ids):
        inputs = self.model.layer_inputs(input_ids, position_ids, segment_ids)
        if self.first:
            h = self.model.residual_input(input_ids)
        run = self.model.run_layers(h, inputs, None, False, self.start, self.stop)
        if self.last:
            return self.model.train_heads(run, inputs, input_ids, labels, segment_ids)
        loads = run[R.LOADS]
        load = ops.stack(loads).astype(ms.float32) if loads else ops.zeros((0,), ms.float32)
        return {R.HIDDEN: run[R.HIDDEN], R.LOAD: load, R.AUX: run[R.AUX], R.INDEX_STATS: run[R.INDEX_STATS]}


class ChunkForward(nn.Cell):
    """The activation a (non-last) virtual stage hands on."""

    def __init__(self, chunk: StageChunk):
        super().__init__(auto_prefix=False)
        self.chunk = chunk

    def construct(self, h, input_ids, labels, position_ids, segment_ids):
        return self.chunk(h, input_ids, labels, position_ids, segment_ids)[R.HIDDEN]


class ChunkObjective(nn.Cell):
    """The scalar whose gradient is the virtual stage's backward (module docstring), and the
    step parts it contributes (results.STEP_PARTS; zeros for the sums another stage makes)."""

    def __init__(self, chunk: StageChunk, has_mtp: bool, mtp_factor: float):
        super().__init__(auto_prefix=False)
        self.chunk, self.has_mtp, self.mtp_factor = chunk, has_mtp, mtp_factor

    def construct(self, h, input_ids, labels, position_ids, segment_ids, dh, inv_lm_tokens, inv_mtp_tokens,
                  aux_scale):
        out = self.chunk(h, input_ids, labels, position_ids, segment_ids)
        if self.chunk.last:
            return scaled_loss(out, inv_lm_tokens, inv_mtp_tokens, aux_scale, self.has_mtp, self.mtp_factor,
                               self.chunk.model.index_weight)
        zero = ops.zeros((), ms.float32)
        index_kl = index_loss(out[R.INDEX_STATS], self.chunk.model.index_stage)
        own = (out[R.AUX] + self.chunk.model.index_weight * index_kl) * aux_scale
        parts = {R.LOSS: own, R.LM_SUM: zero, R.LM_COUNT: zero, R.MTP_SUM: zero, R.MTP_COUNT: zero,
                 R.AUX: out[R.AUX], R.INDEX_KL: index_kl, R.LOAD: out[R.LOAD], R.INDEX_STATS: out[R.INDEX_STATS]}
        return (out[R.HIDDEN] * dh).sum() + own, parts


class ChunkBackward(nn.Cell):
    """-> (step parts, gradient of the chunk's input, gradients of `weights`)."""

    def __init__(self, objective: ChunkObjective, weights):
        super().__init__(auto_prefix=False)
        self.objective = objective
        self.weights = ms.ParameterTuple(list(weights))
        self.grad_fn = ms.value_and_grad(objective, 0, self.weights, has_aux=True)

    def construct(self, h, input_ids, labels, position_ids, segment_ids, dh, inv_lm_tokens, inv_mtp_tokens,
                  aux_scale):
        (_, parts), (dh_in, grads) = self.grad_fn(h, input_ids, labels, position_ids, segment_ids, dh,
                                                  inv_lm_tokens, inv_mtp_tokens, aux_scale)
        return R.step_tuple(parts), dh_in, grads
