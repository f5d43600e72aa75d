"""Replacing a cell inside a built model (LoRA adapters; the parallel executors' wrappers).

A model's parameter names are its dotted attribute paths from the root cell (HF's names:
`model.layers.0.self_attn.q_b_proj.weight`). MindSpore renames a cell's parameters relative to
the parent it is set on (measured on 2.10: `layers.0.proj = W(...)` names W's weight
`proj.weight`), so after setting the new cell this puts the full paths back: every parameter
of the new cell is named `<dotted path of the cell>.<its path inside the cell>`.
"""
from __future__ import annotations

from typing import Callable, Dict

from mindspore import nn


def find_cells(root: nn.Cell, keep: Callable[[str, nn.Cell], bool]) -> Dict[str, nn.Cell]:
    """{dotted name: cell} of the cells under `root` for which keep(name, cell) holds."""
    return {name: cell for name, cell in root.cells_and_names() if name and keep(name, cell)}


def replace_cell(root: nn.Cell, dotted: str, new: nn.Cell) -> None:
    """Put `new` where the cell `dotted` (a name from `root.cells_and_names()`) is."""
    parent_name, _, child = dotted.rpartition(".")
    parent = root
    for part in parent_name.split(".") if parent_name else ():
        parent = parent._cells[part] if part in parent._cells else getattr(parent, part)  # CellList: "0"
    if child not in parent._cells:
        raise KeyError(f"{dotted}: no such cell")
    if isinstance(parent, (nn.CellList, nn.SequentialCell)):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
    for local, param in new.parameters_and_names():
        param.name = f"{dotted}.{local}"
