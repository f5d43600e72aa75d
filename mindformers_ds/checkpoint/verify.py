"""Compare two checkpoints tensor by tensor, whatever their layout (HF per-expert or stacked,
FP8 or not): names, shapes and max abs / rel difference of the float32 values."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from .fp8 import block_dequant
from .names import SCALE_SUFFIX, STACKED_RE
from .reader import CheckpointReader
from .safetensors_io import to_float32

View = Tuple[str, int, int, int]  # (source name, expert index or -1, row start, row end)


def per_expert_views(reader: CheckpointReader) -> Dict[str, View]:
    views: Dict[str, View] = {}
    for name in reader.names():
        if name.endswith(SCALE_SUFFIX):
            continue
        m = STACKED_RE.match(name)
        if not m:
            views[name] = (name, -1, 0, 0)
            continue
        _, shape = reader.info(name)
        for e in range(shape[0]):
            if m["kind"] == "gate_up_proj":
                i = shape[1] // 2
                views[f"{m['prefix']}.{e}.gate_proj.weight"] = (name, e, 0, i)
                views[f"{m['prefix']}.{e}.up_proj.weight"] = (name, e, i, shape[1])
            else:
                views[f"{m['prefix']}.{e}.down_proj.weight"] = (name, e, 0, shape[1])
    return views


def read_view(reader: CheckpointReader, view: View) -> Tuple[str, np.ndarray]:
    name, e, r0, r1 = view
    if e < 0:
        tag, arr = reader.get(name)
    else:
        tag, arr = reader.get_rows(name, e, r0, r1)
    if tag.startswith("F8_") and name + SCALE_SUFFIX in reader:
        return tag, block_dequant(arr, reader.get(name + SCALE_SUFFIX)[1].astype(np.float32), 128, tag)
    return tag, to_float32(tag, arr)


def verify(a_path: str, b_path: str, atol: float = 0.0, rtol: float = 0.0) -> Tuple[bool, List[str]]:
    a, b = CheckpointReader(a_path), CheckpointReader(b_path)
    try:
        va, vb = per_expert_views(a), per_expert_views(b)
        lines: List[str] = []
        ok = True
        only_a, only_b = sorted(set(va) - set(vb)), sorted(set(vb) - set(va))
        for n in only_a[:10]:
            lines.append(f"only in {a_path}: {n}")
        for n in only_b[:10]:
            lines.append(f"only in {b_path}: {n}")
        ok = not only_a and not only_b
        worst_abs, worst_rel, worst_name, dtype_changes = 0.0, 0.0, "", 0
        for name in sorted(set(va) & set(vb)):
            ta, xa = read_view(a, va[name])
            tb, xb = read_view(b, vb[name])
            dtype_changes += ta != tb
            if xa.shape != xb.shape:
                lines.append(f"shape differs: {name}: {list(xa.shape)} vs {list(xb.shape)}")
                ok = False
                continue
            diff = np.abs(xa.astype(np.float64) - xb.astype(np.float64))
            same_nan = np.isnan(xa) & np.isnan(xb)
            diff[same_nan] = 0.0
            mabs = float(diff.max()) if diff.size else 0.0
            mrel = float((diff / np.maximum(np.abs(xb), 1e-30)).max()) if diff.size else 0.0
            if mabs > worst_abs:
                worst_abs, worst_name = mabs, name
            worst_rel = max(worst_rel, mrel if np.isfinite(mrel) else 0.0)
            if not np.all(diff <= atol + rtol * np.abs(xb)):
                lines.append(f"values differ: {name}: max abs {mabs:.3g}, max rel {mrel:.3g}")
                ok = False
        lines.append(f"{len(set(va) & set(vb))} tensors compared; max abs diff {worst_abs:.3g}"
                     f"{f' ({worst_name})' if worst_name else ''}, max rel diff {worst_rel:.3g}; "
                     f"{dtype_changes} dtype changes; {'MATCH' if ok else 'MISMATCH'}")
        return ok, lines
    finally:
        a.close()
        b.close()
