"""How a pipeline stage hands its boundary tensors to its neighbours, one tick at a time.

At every tick of the timetable a stage that ran a forward of a non-last virtual stage hands the
activation to the next stage, and one that ran a backward of a non-first virtual stage hands the
gradient to the previous one. Every rank knows the whole timetable, so every rank lists the same
moves in the same order (`tick_moves`), and the backend decides how they travel:

    AllReduceHandover   mccl (no Send/Receive): one all-reduce over the `pp` group of a zero
                        buffer [pp, 2, *boundary] in which stage s writes the activation it hands
                        on at [s, 0] and the gradient at [s, 1]; each receiver reads its slot
    SendReceiveHandover HCCL / NCCL: `ops.Send` / `ops.Receive` between the two neighbours over
                        the `pp` group (peers addressed by their place in the group, which is the
                        stage), move by move in the common order: a blocking pair never waits on
                        a rank that waits on it (written for Ascend, not run here)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ACTIVATION, GRADIENT = 0, 1


@dataclass(frozen=True)
class Move:
    kind: int        # ACTIVATION (forward, to the next stage) or GRADIENT (backward, to the previous)
    src: int         # sending stage
    dst: int         # receiving stage
    micro: int
    virtual: int     # the virtual stage the receiver runs it as


def tick_moves(row: Sequence, p: int, last_virtual: int) -> List[Move]:
    """The hand-overs of one timetable row (one op or None per stage), in stage order."""
    moves = []
    for s, op in enumerate(row):
        if op is None:
            continue
        if op.kind == "F" and op.virtual != last_virtual:
            moves.append(Move(ACTIVATION, s, (s + 1) % p, op.micro, op.virtual + 1))
        elif op.kind == "B" and op.virtual > 0:
            moves.append(Move(GRADIENT, s, (s - 1) % p, op.micro, op.virtual - 1))
    return moves


class AllReduceHandover:
    """Send/Receive emulated by one all-reduce per tick over the pp group (`sum`: its cell)."""

    def __init__(self, stage: int, p: int, sum_cell):
        self.stage, self.p, self.sum = stage, p, sum_cell

    def run(self, moves: List[Move], shape: Tuple[int, ...], sent: Dict[int, Optional[np.ndarray]]):
        """`sent`: this stage's outgoing tensor per kind -> {move: received numpy array}."""
        import mindspore as ms
        buf = np.zeros((self.p, 2) + shape, np.float32)
        for kind, x in sent.items():
            if x is not None:
                buf[self.stage, kind] = x
        out = self.sum(ms.Tensor(buf)).asnumpy()
        return {m: out[m.src, m.kind] for m in moves if m.dst == self.stage}


class SendReceiveHandover:
    """Native point to point between neighbours over the pp group (HCCL/NCCL)."""

    def __init__(self, stage: int, group: str):
        self.stage, self.group = stage, group
        self.cells: Dict[tuple, object] = {}

    def _cell(self, key: tuple, make):
        if key not in self.cells:
            self.cells[key] = make()
        return self.cells[key]

    def run(self, moves: List[Move], shape: Tuple[int, ...], sent: Dict[int, Optional[np.ndarray]]):
        import mindspore as ms
        got = {}
        for m in moves:   # the same order on every rank
            if m.src == self.stage:
                self._cell(("send", m.kind, m.dst), lambda: _SendCell(m.kind, m.dst, self.group))(ms.Tensor(sent[m.kind]))
            elif m.dst == self.stage:
                recv = self._cell(("recv", m.kind, m.src, shape), lambda: _ReceiveCell(m.kind, m.src, shape, self.group))
                got[m] = recv().asnumpy()
        return got


def _SendCell(tag: int, dest: int, group: str):
    from mindspore import nn, ops

    class SendCell(nn.Cell):
        def __init__(self):
            super().__init__()
            self.send = ops.Send(sr_tag=tag, dest_rank=dest, group=group)
            self.depend = ops.Depend()

        def construct(self, x):
            return self.depend(x, self.send(x))   # keeps the send in the graph
    return SendCell()


def _ReceiveCell(tag: int, src: int, shape: Tuple[int, ...], group: str):
    import mindspore as ms
    from mindspore import nn, ops

    class ReceiveCell(nn.Cell):
        def __init__(self):
            super().__init__()
            self.recv = ops.Receive(sr_tag=tag, src_rank=src, shape=list(shape), dtype=ms.float32, group=group)

        def construct(self):
            return self.recv()
    return ReceiveCell()


def make_handover(ctx, sum_cell):
    """Send/Receive where the backend has them (collectives.py), the all-reduce emulation elsewhere."""
    from .collectives import native
    if native(ctx.device, "send_recv", False):
        return SendReceiveHandover(ctx.stage, ctx.groups["pp"])
    return AllReduceHandover(ctx.stage, ctx.pp, sum_cell)
