"""The collectives a rank runs: read from the graphs MindSpore compiled, not predicted.

Under the explicit executor every collective is a node of a compiled graph: Megatron's f/g pairs
and MoE's dispatch/combine in the model's cells (parallel/comm.py), the gradient reduction and
the norm in the step, the all-reduce of the loss sums. MindSpore may rewrite them while it
compiles (fusion, emulated gathers: parallel/collectives.py), so the inventory is taken from what
it compiled: during the first step the trainer has it dump one IR file per kernel graph, after
the backend's communication passes (pass `hwopt_comm_after_eliminate_nopnode`, the only one
dumped: MS_DEV_DUMP_IR_PASSES; dumping switched on and off with `set_context(save_graphs)`), and
reads each collective node there: its primitive, its group and its input's shape and dtype.

Each graph belongs to the loop phase it compiled in (hang_watch.Progress tells when a phase is
left). A step runs each graph of "step graph" and "loss sums" once when it has one micro-batch
and no pipeline, so the per-step totals are their sum: `{"all_reduce(tp)": {"count", "bytes"}}`
by primitive and mesh axes. With gradient accumulation or pipeline stages the graphs run a
varying number of times per step: the graphs are listed and the per-step total is left out (the
record says why). On CPU a group all-gather or reduce-scatter is an all-reduce of padded buffers
(parallel/collectives.py): it is listed as the all-reduce it compiled to. The time of an
in-graph collective cannot be told from the compute around it without the device profiler; the
host-side ones have their phase's time in each step record (`phase_s`).

Cost: the dump of the first step's graphs (one ~6 MB text file per graph on the tiny model),
parsed and deleted, and, measured but not explained, slower steady steps afterwards (graphs
compiled with dumping on run 5-28% slower on the tiny dp=2 run: tools/bench/README.md). So it is
off by default (`logging.collective_inventory: true` for a diagnostic run). On Ascend the same
pass runs in the common backend; not run here.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Dict, List

IR_PASS = "hwopt_comm_after_eliminate_nopnode"
PRIMITIVES = {"AllReduce": "all_reduce", "AllGather": "all_gather", "ReduceScatter": "reduce_scatter",
              "AlltoAll": "all_to_all", "AllToAll": "all_to_all", "AlltoAllV": "all_to_all_v",
              "Broadcast": "broadcast", "Send": "send", "Receive": "receive"}
WORLD_GROUPS = ("mccl_world_group", "hccl_world_group", "nccl_world_group")
AXIS_ORDER = ("tp", "dp", "ep", "edp", "pp", "ends")
PER_STEP_PHASES = ("step graph", "loss sums")
DTYPE_BYTES = {"Float32": 4, "Float16": 2, "BFloat16": 2, "Int32": 4, "Int64": 8, "Bool": 1, "Int8": 1, "UInt8": 1}
# `%5(CNode_7) = AllReduce(%4) {... group: "tp_0_1" ...}` and, on the next line, its input types
_NODE = re.compile(r"= (" + "|".join(PRIMITIVES) + r")\([^\n]*?group: \"([^\"]+)\"[^\n]*\n\s*: \(([^\n]*?)\) ->")
_TENSOR = re.compile(r"<Tensor\[(\w+)\], \(([\d, ]*)\)>")


def axis_names(groups: Dict[str, str]) -> Dict[str, str]:
    """MindSpore group name -> the mesh axes it is (parallel/comm.py's `groups`: axis -> name;
    "__world__" is MindSpore's world group). Axes with the same ranks share one group, and a
    collective of theirs cannot be told apart: it is named by all of them, e.g. "dp+ep" when
    the expert-parallel group is the whole data-parallel group."""
    by_group: Dict[str, List[str]] = {}
    for axis in sorted(groups, key=lambda a: AXIS_ORDER.index(a) if a in AXIS_ORDER else len(AXIS_ORDER)):
        by_group.setdefault(groups[axis], []).append(axis)
    names: Dict[str, str] = {}
    for name, axes in by_group.items():
        for real in (WORLD_GROUPS if name == "__world__" else (name,)):
            names[real] = "+".join(axes)
    return names


def parse_graph(text: str, axes: Dict[str, str]) -> Dict[str, Dict[str, int]]:
    """{"primitive(axis)": {"count", "bytes"}} of one kernel graph's IR text."""
    found: Dict[str, Dict[str, int]] = {}
    for prim, group, inputs in _NODE.findall(text):
        label = axes.get(group, "world" if group in WORLD_GROUPS else group)
        nbytes = 0
        for dtype, shape in _TENSOR.findall(inputs):
            n = 1
            for d in (int(s) for s in shape.replace(" ", "").split(",") if s):
                n *= d
            nbytes += n * DTYPE_BYTES.get(dtype, 4)
        entry = found.setdefault(f"{PRIMITIVES[prim]}({label})", {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += nbytes
    return found


def add_into(total: Dict[str, Dict[str, int]], part: Dict[str, Dict[str, int]]) -> None:
    for key, v in part.items():
        entry = total.setdefault(key, {"count": 0, "bytes": 0})
        entry["count"] += v["count"]
        entry["bytes"] += v["bytes"]


class CollectiveInventory:
    """Dumps the kernel graphs compiled while it is on, and lists their collectives by phase."""

    def __init__(self, run_dir: str, rank: int, groups: Dict[str, str], one_run_per_step: bool):
        """`groups`: axis -> MindSpore group name ({} when MindSpore made the groups itself: they
        are then listed by name); `one_run_per_step`: each graph of the step runs once a step."""
        self.dir = os.path.join(run_dir, "logs", f".ir_rank{rank}")
        self.rank, self.axes, self.one_run_per_step = rank, axis_names(groups), one_run_per_step
        self.graphs: List[Dict] = []
        self._seen: set = set()
        self.progress = None

    def start(self, progress) -> None:
        """Dump the graphs compiled from now on; `progress` (hang_watch.Progress) says the phases."""
        import mindspore as ms
        shutil.rmtree(self.dir, ignore_errors=True)
        os.environ["MS_DEV_DUMP_IR_PASSES"] = IR_PASS   # read when a graph is dumped: only this pass
        ms.set_context(save_graphs=1, save_graphs_path=self.dir)
        self.progress = progress
        progress.on_leave = self.phase_left

    def phase_left(self, phase: str) -> None:
        """Called as the loop leaves `phase`: the graphs dumped since belong to it."""
        for path in self._new_files():
            with open(path, encoding="utf-8", errors="replace") as f:
                found = parse_graph(f.read(), self.axes)
            graph = re.search(r"kernel_graph(\d+)", os.path.basename(path))
            self.graphs.append({"phase": phase, "graph": int(graph.group(1)) if graph else -1, "collectives": found})

    def _new_files(self) -> List[str]:
        out = []
        for base, _, names in os.walk(self.dir):
            for name in sorted(names):
                path = os.path.join(base, name)
                if name.startswith(IR_PASS) and name.endswith(".ir") and path not in self._seen:
                    self._seen.add(path)
                    out.append(path)
        return out

    def stop(self, step: int) -> Dict:
        """Switch dumping off (after the first step: every graph of a step is compiled) and return
        the metrics record."""
        import mindspore as ms
        ms.set_context(save_graphs=0)
        os.environ.pop("MS_DEV_DUMP_IR_PASSES", None)
        self.progress.on_leave = None
        shutil.rmtree(self.dir, ignore_errors=True)
        rec = {"type": "collectives", "rank": self.rank, "step": step, "source": f"compiled IR ({IR_PASS})",
               "graphs": [g for g in self.graphs if g["collectives"]]}
        if self.one_run_per_step:
            per_step: Dict[str, Dict[str, int]] = {}
            for g in self.graphs:
                if g["phase"] in PER_STEP_PHASES:
                    add_into(per_step, g["collectives"])
            rec["per_step"] = per_step
        else:
            rec["per_step"] = None
            rec["why"] = "gradient accumulation or pipeline stages run the step's graphs several times per step"
        return rec
