"""The explicit executor's pipeline: runs one step's micro-batches through the stages on a
timetable (pipeline_schedule.py) and returns this stage's summed gradients and the step's parts.

Point to point (pipeline_handover.py): Send/Receive between neighbours where the backend has
them; on mccl, which has none, each tick ends with one all-reduce over the `pp` group (the ranks
at the same place of every stage) carrying every stage's outgoing activation and gradient.
Every rank knows the whole timetable, so it knows the tick's moves; ticks in which nobody hands
anything over skip the exchange. The boundary
tensor is whatever the family carries between layers (V3's hidden [B, S, H], V4's mHC streams
[B, S, n, H]); its shape is told once per micro-batch shape by the first stage (a small exchange
after the first tick, in which only the first stage computes).

After the schedule, the loss sums and the expert load (placed at the MoE layers' global rows) are
summed over the stages: every rank then holds the whole step's parts, the trainer's contract.
"""
from __future__ import annotations

import time
from typing import Dict, List, Tuple

import numpy as np
import mindspore as ms

from ..models.deepseek import results as R
from ..train.step import AccumulateGrads
from .explicit import _AllReduceCell
from .pipeline_handover import ACTIVATION, GRADIENT, make_handover, tick_moves
from .pipeline_schedule import build_timetable
from .pipeline_stage import ChunkBackward, ChunkForward, ChunkObjective, StageChunk


class PipelineRunner:
    def __init__(self, model, weights, ctx, chunks: Dict[int, Tuple[int, int]], schedule: str, virtual: int):
        """`chunks`: this stage's virtual stages -> their layer range [start, stop)."""
        self.ctx, self.p, self.stage = ctx, ctx.pp, ctx.stage
        self.schedule, self.virtual = schedule, virtual
        self.last_virtual = ctx.pp * virtual - 1
        self.timetables = {}   # micro-batches per step -> timetable
        self.forward, self.backward = {}, {}
        for vs, (start, stop) in chunks.items():
            chunk = StageChunk(model, start, stop, vs == 0, vs == self.last_virtual)
            if vs != self.last_virtual:
                self.forward[vs] = ChunkForward(chunk)
            self.backward[vs] = ChunkBackward(ChunkObjective(chunk, model.mtp_depth > 0, model.mtp_factor), weights)
        self.rows = {vs: _moe_rows(model.config, start, stop, vs == self.last_virtual)
                     for vs, (start, stop) in chunks.items()}
        self.num_rows, self.experts = model.num_moe_layers, max(model.config.n_routed_experts, 1)
        self.sum = _AllReduceCell(ctx, "pp")
        self.handover = make_handover(ctx, self.sum)
        self.accumulate = AccumulateGrads()
        self.boundary = {}     # micro-batch input shape -> boundary tensor shape
        self.stats = {}

    def run(self, micro: List[List[ms.Tensor]], scales: List[ms.Tensor]):
        """`micro`: per micro-batch [input_ids, labels, position_ids, segment_ids] -> (grads, parts)."""
        scalars = [k for k in R.STEP_PARTS if k != R.LOAD and k not in R.SUMMED_TENSORS]
        grads, sums = None, np.zeros(len(scalars), np.float64)
        tensors = {}   # results.SUMMED_TENSORS: every stage's rows, zeros where another stage's
        load = np.zeros((self.num_rows, self.experts), np.float64)
        held, dhs = {}, {}                      # (mb, vs) -> input activation / incoming gradient
        dummy = ms.Tensor(np.zeros((1,), np.float32))
        m = len(micro)   # parallel.micro_batches x train.grad_accum_steps: one pipeline flush per step
        if m not in self.timetables:
            self.timetables[m] = build_timetable(self.schedule, self.p, m, self.virtual)
        busy, t_start = 0.0, time.perf_counter()
        for t, row in enumerate(self.timetables[m].ticks):
            op = row[self.stage]
            sent_act = sent_grad = None
            c0 = time.perf_counter()
            if op is not None and op.kind == "F":
                h_in = held.setdefault((op.micro, op.virtual), dummy)
                if op.virtual != self.last_virtual:
                    sent_act = self.forward[op.virtual](h_in, *micro[op.micro])
            elif op is not None:
                key = (op.micro, op.virtual)
                dh = dhs.pop(key, dummy)
                outs, dh_in, g = self.backward[op.virtual](held.pop(key), *micro[op.micro], dh, *scales)
                grads = g if grads is None else self.accumulate(grads, g)
                parts = R.named(outs)
                sums += np.array([float(parts[k].asnumpy()) for k in scalars])
                for k in R.SUMMED_TENSORS:
                    tensors[k] = tensors.get(k, 0) + parts[k].asnumpy().astype(np.float64)
                if self.rows[op.virtual]:
                    load[self.rows[op.virtual]] += parts[R.LOAD].asnumpy()
                if op.virtual > 0:
                    sent_grad = dh_in
            # to the host once; the copy also ends the compute, so `busy` holds it, not the exchange
            sent_act = sent_act.asnumpy() if sent_act is not None else None
            sent_grad = sent_grad.asnumpy() if sent_grad is not None else None
            busy += time.perf_counter() - c0
            self._exchange(row, micro, sent_act, sent_grad, held, dhs)
        total = time.perf_counter() - t_start
        self.stats = {"busy": busy, "total": total, "idle_fraction": 1.0 - busy / max(total, 1e-9)}
        extra = [np.asarray(tensors.get(k, np.zeros((0,)))) for k in R.SUMMED_TENSORS]
        flat = np.concatenate([sums, load.reshape(-1)] + [t.reshape(-1) for t in extra]).astype(np.float32)
        summed = self.sum(ms.Tensor(flat)).asnumpy()
        parts = dict(zip(scalars, summed[:len(scalars)]))
        at = len(scalars) + load.size
        parts[R.LOAD] = summed[len(scalars):at].reshape(load.shape) if self.num_rows else np.zeros((0,), np.float32)
        for k, t in zip(R.SUMMED_TENSORS, extra):
            parts[k], at = summed[at:at + t.size].reshape(t.shape), at + t.size
        return grads, parts

    def whole_model_biases(self, biases: List[np.ndarray], rows: List[int]) -> List[np.ndarray]:
        """This stage's router correction biases (at their rows of the stacked expert load) ->
        every stage's, in model order: one sum over the pp group, each row owned by one stage."""
        if not self.num_rows:   # a dense model: no router
            return biases
        buf = np.zeros((self.num_rows, self.experts + 1), np.float32)   # last column: "has a bias"
        for b, r in zip(biases, rows):
            buf[r, :-1], buf[r, -1] = b, 1.0
        out = self.sum(ms.Tensor(buf)).asnumpy()
        return [out[r, :-1] for r in range(self.num_rows) if out[r, -1] > 0]

    def _exchange(self, row, micro, sent_act, sent_grad, held, dhs) -> None:
        """Hand over this tick's activations and gradients (every rank calls this at every tick)."""
        moves = tick_moves(row, self.p, self.last_virtual)
        if not moves:
            return
        shape = self._boundary_shape(micro[0][0].shape, sent_act)
        got = self.handover.run(moves, shape, {ACTIVATION: sent_act, GRADIENT: sent_grad})
        for m, x in got.items():
            (held if m.kind == ACTIVATION else dhs)[(m.micro, m.virtual)] = ms.Tensor(x)

    def _boundary_shape(self, ids_shape, sent_act) -> Tuple[int, ...]:
        """The first tick's activation (only the first stage computes then) tells every stage."""
        key = tuple(ids_shape)
        if key not in self.boundary:
            msg = np.zeros(8, np.float32)
            if self.stage == 0:
                shape = sent_act.shape
                msg[0], msg[1:1 + len(shape)] = len(shape), shape
            got = self.sum(ms.Tensor(msg)).asnumpy().astype(int)
            self.boundary[key] = tuple(int(x) for x in got[1:1 + got[0]])
        return self.boundary[key]


def _moe_rows(config, start: int, stop: int, last: bool) -> List[int]:
    """Global rows of the stacked expert load (main layers, then MTP) that layers [start, stop)
    and, on the last virtual stage, the MTP modules fill, in the order the chunk stacks them."""
    moe = [i for i in range(config.num_hidden_layers + config.mtp_depth) if config.is_moe_layer(i)]
    mine = [i for i in range(start, stop)] + (
        list(range(config.num_hidden_layers, config.num_hidden_layers + config.mtp_depth)) if last else [])
    return [moe.index(i) for i in mine if i in moe]
