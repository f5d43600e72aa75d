"""Pipeline schedules as timetables (no MindSpore here): which micro-batch each stage computes at
each tick, for 1F1B and for the interleaved schedule with virtual stages.

The layers are cut into p * v virtual stages; stage s holds virtual stages s, s + p, ... (chunk c
is virtual stage c * p + s, Megatron's interleaving). An op is a forward F(mb, vs) or a backward
B(mb, vs). F(mb, vs) needs the activation F(mb, vs - 1) produced; B(mb, vs) needs the gradient
B(mb, vs + 1) produced. On the last virtual stage the forward only takes the activation in and its
backward computes the loss and the gradients at once (the executor's concern, not the timetable's).

Each stage runs its ops in the schedule's order (below); a tick ends with one exchange in which
every stage hands over what it produced in that tick, so an op can run at the tick after its
input was made. The simulation gives every stage's op at every tick (None: idle), hence the
bubble: with equal op costs 1F1B idles (p - 1) / (m + p - 1) of the time.

Orders (Megatron-Core's): 1F1B warms up with p - s - 1 forwards, then alternates one forward and
one backward, then drains the backwards. Interleaved takes micro-batches in groups of p, chunk
after chunk, warms up with (p - s - 1) * 2 + (v - 1) * p forwards and needs m % p == 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

SCHEDULES = ("1f1b", "interleaved")


@dataclass(frozen=True)
class Op:
    kind: str         # "F" or "B"
    micro: int        # micro-batch
    virtual: int      # virtual stage (global index 0 .. p*v - 1)


@dataclass(frozen=True)
class Timetable:
    stages: int
    virtual_per_stage: int
    micro_batches: int
    ticks: List[List[Optional[Op]]]   # ticks[t][stage]

    def ops_of(self, stage: int) -> List[Tuple[int, Op]]:
        return [(t, row[stage]) for t, row in enumerate(self.ticks) if row[stage] is not None]

    def idle_fraction(self, stage: int, cost: Optional[Dict[str, float]] = None) -> float:
        """Idle share of the schedule's length on `stage`, ops weighted by `cost` (default: 1 each;
        a tick lasts as long as its costliest op)."""
        cost = cost or {"F": 1.0, "B": 1.0}
        length = sum(max((cost[op.kind] for op in row if op is not None), default=0.0) for row in self.ticks)
        busy = sum(cost[op.kind] for _, op in self.ops_of(stage))
        return 1.0 - busy / length


def theory_bubble_1f1b(p: int, m: int) -> float:
    return (p - 1) / (m + p - 1)


def theory_bubble_interleaved(p: int, m: int, v: int) -> float:
    return (p - 1) / (v * m + p - 1)


def stage_order(schedule: str, p: int, m: int, v: int, stage: int) -> List[Op]:
    """The ops `stage` runs, in order."""
    if schedule == "1f1b":
        chunks_f = [(i, stage) for i in range(m)]
        chunks_b = list(chunks_f)
        warmup = min(p - stage - 1, m)
    else:
        chunks_f = [((k // (p * v)) * p + k % p, ((k // p) % v) * p + stage) for k in range(m * v)]
        chunks_b = [((k // (p * v)) * p + k % p, (v - 1 - (k // p) % v) * p + stage) for k in range(m * v)]
        warmup = min((p - stage - 1) * 2 + (v - 1) * p, m * v)
    order: List[Op] = []
    fwd = [Op("F", mb, vs) for mb, vs in chunks_f]
    bwd = [Op("B", mb, vs) for mb, vs in chunks_b]
    order += fwd[:warmup]
    for i in range(len(fwd) - warmup):
        order += [fwd[warmup + i], bwd[i]]
    order += bwd[len(fwd) - warmup:]
    return order


def build_timetable(schedule: str, p: int, m: int, v: int = 1) -> Timetable:
    if schedule not in SCHEDULES:
        raise ValueError(f"pipeline schedule {schedule!r}: expected one of {list(SCHEDULES)}")
    orders = [stage_order(schedule, p, m, v, s) for s in range(p)]
    last = p * v - 1
    made = set()              # ("F"|"B", mb, vs) handed over at the end of an earlier tick
    pos = [0] * p
    ticks: List[List[Optional[Op]]] = []
    total = sum(len(o) for o in orders)
    done = 0
    while done < total:
        row: List[Optional[Op]] = []
        for s in range(p):
            op = orders[s][pos[s]] if pos[s] < len(orders[s]) else None
            if op is not None and _ready(op, made, last):
                row.append(op)
                pos[s] += 1
            else:
                row.append(None)
        if all(x is None for x in row):
            raise RuntimeError(f"pipeline schedule {schedule} (p={p}, m={m}, v={v}) deadlocks")
        for op in row:
            if op is not None:
                made.add((op.kind, op.micro, op.virtual))
                done += 1
        ticks.append(row)
    return Timetable(p, v, m, ticks)


def _ready(op: Op, made: set, last: int) -> bool:
    """F needs the previous virtual stage's activation; B the next one's gradient (the last
    virtual stage's B needs its own F, which ran on the same stage)."""
    if op.kind == "F" and op.virtual > 0 and ("F", op.micro, op.virtual - 1) not in made:
        return False
    if op.kind == "B" and op.virtual == last and ("F", op.micro, op.virtual) not in made:
        return False
    if op.kind == "B" and op.virtual < last and ("B", op.micro, op.virtual + 1) not in made:
        return False
    return True
