"""Registration of the AscendC kernels with MindSpore (`CustomRegOp(...).target("Ascend")`).

The kernels come from the custom OPP package `ops/build_ascend.sh` builds and installs (vendor
`mfds`, found through ASCEND_CUSTOM_OPP_PATH). Without it there is nothing to register and
the caller falls back to the composite operators. Inputs, outputs and dtypes come from
signatures.py, the same table ops/ascendc/<op>/<op>.json is checked against.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

from .signatures import ASCEND_FLOAT, SIGNATURES

VENDOR = "mfds"


def opp_installed() -> bool:
    paths = os.environ.get("ASCEND_CUSTOM_OPP_PATH", "").split(":")
    return any(p and os.path.isdir(p) and VENDOR in os.path.basename(os.path.normpath(p)) for p in paths)


def _io(op: str, func: str):
    sig = SIGNATURES[op]
    if func in (sig["ascend"] or "").split("|"):
        return sig["inputs"], sig["outputs"]
    return sig["grad_inputs"], sig["grad_outputs"]


def reg_info(op: str, func: str) -> Optional[Dict]:
    """The registration of `func` when the OPP package is installed, else None (use composite)."""
    return build_reg_info(op, func) if opp_installed() else None


def build_reg_info(op: str, func: str) -> Dict:
    """The CustomRegOp info of `func` (pure Python: tools/check_ops.py compares it with the
    msopgen JSON and the OpDef on any machine)."""
    from mindspore.ops import CustomRegOp, DataType
    dt = {"float16": DataType.F16_Default, "bfloat16": DataType.BF16_Default, "float32": DataType.F32_Default,
          "int32": DataType.I32_Default, "uint8": DataType.U8_Default}
    inputs, outputs = _io(op, func)
    reg = CustomRegOp(func)
    for i, (name, _) in enumerate(inputs):
        reg = reg.input(i, name)
    for i, (name, _) in enumerate(outputs):
        reg = reg.output(i, name)
    for f in float_variants(op):
        reg = reg.dtype_format(*[dt[f if t == "float" else t] for _, t in inputs + outputs])
    return reg.target("Ascend").get_op_info()  # one dict: a list of reg infos is broken in 2.10


def float_variants(op: str):
    """The Ascend dtype variants of `op`: one per float type when it has "float" tensors."""
    sig = SIGNATURES[op]
    ios = sig["inputs"] + sig["outputs"] + sig["grad_inputs"] + sig["grad_outputs"]
    return ASCEND_FLOAT if any(t == "float" for _, t in ios) else ("float32",)
