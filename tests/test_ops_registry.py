"""The custom operators agree across targets: tools/check_ops.py passes on the repository and
reports each kind of disagreement on a tampered copy; ops/build_ascend.sh stages a buildable
project; the AscendC kernels registered through CANN match the composite operators (skipped,
with the reason, where CANN and an NPU are absent)."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mindformers_ds.ops.signatures import SIGNATURES

spec = importlib.util.spec_from_file_location("check_ops", os.path.join(ROOT, "tools", "check_ops.py"))
check_ops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_ops)


def test_repository_ops_are_consistent():
    assert check_ops.run(ROOT) == []


def _copy_tree(dst):
    shutil.copytree(os.path.join(ROOT, "ops"), os.path.join(dst, "ops"))
    os.makedirs(os.path.join(dst, "mindformers_ds", "ops"))
    for face in ("kernels.py", "attention_kernels.py"):
        shutil.copy(os.path.join(ROOT, "mindformers_ds", "ops", face), os.path.join(dst, "mindformers_ds", "ops"))
    os.makedirs(os.path.join(dst, "tests"))
    for test in glob.glob(os.path.join(ROOT, "tests", "test_*.py")):   # the check looks for each op's test
        if os.path.basename(test) != os.path.basename(__file__):       # this one names ops it tampers with
            shutil.copy(test, os.path.join(dst, "tests"))


def _edit(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text, (path, old)
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def test_check_reports_each_disagreement(tmp_path):
    root = str(tmp_path)
    _copy_tree(root)
    assert check_ops.run(root, build_lib=False) == []
    asc = os.path.join(root, "ops", "ascendc")
    # JSON: swapped input order; op_host: a dtype dropped; kernel: a renamed parameter;
    # CPU: a wrong parameter count; tests: an op no test calls; an op directory nobody knows
    _edit(os.path.join(asc, "swiglu", "swiglu.json"), '"name": "gate_up"', '"name": "gateup"')
    _edit(os.path.join(asc, "rms_norm", "op_host", "mfds_rms_norm.cpp"),
          'this->Input("eps").ParamType(REQUIRED).DataType(MFDS_F32_TYPES)',
          'this->Input("eps").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES)')
    _edit(os.path.join(asc, "rope", "op_kernel", "mfds_rope.cpp"), "GM_ADDR mode", "GM_ADDR mode_")
    _edit(os.path.join(root, "ops", "cpu", "swiglu.cc"), "nparam != 2", "nparam != 3")
    _edit(os.path.join(asc, "common", "sinkhorn_limits.h"), "kSinkhornMaxIters = 32", "kSinkhornMaxIters = 40")
    with open(os.path.join(root, "tests", "test_ops.py")) as f:
        tests = f.read().replace("fp8_block_dequant_op(", "fp8_op(")
    with open(os.path.join(root, "tests", "test_ops.py"), "w") as f:
        f.write(tests)
    os.makedirs(os.path.join(asc, "flash_mla"))
    os.makedirs(os.path.join(asc, "mla_attention"))  # its Ascend side is CANN's FlashAttentionScore
    problems = check_ops.run(root, build_lib=False)
    expected = {"swiglu.json": "input_desc", "mfds_rms_norm.cpp": "Input(eps) dtypes",
                "mfds_rope.cpp": "expected ['x', 'cos', 'sin', 'mode', 'y', 'workspace', 'tiling']",
                "swiglu.cc": "nparam != 2", "no test calls": "fp8_block_dequant", "flash_mla": "signatures.py",
                "ascendc/mla_attention": "never be used", "sinkhorn_limits.h": "kSinkhornMaxIters = 40 but"}
    for where, what in expected.items():
        assert any(where in p and what in p for p in problems), (where, what, problems)
    assert len(problems) == len(expected), problems
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "check_ops.py"), "--root", root, "--no-build"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and f"{len(expected)} problems" in out.stdout


def test_build_script_stages_a_complete_project(tmp_path):
    stage = tmp_path / "stage"
    r = subprocess.run(["bash", os.path.join(ROOT, "ops", "build_ascend.sh"), "--stage-only", str(stage)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(stage / "mfds_ops.json") as f:
        names = [d["op"] for d in json.load(f)]
    expected = [n for sig in SIGNATURES.values() for n in (sig["ascend"], sig["ascend_grad"]) if n]
    assert sorted(names) == sorted(expected)
    for name in expected:  # msopgen's file names: the snake-cased op name
        assert (stage / "op_kernel" / f"{check_ops.snake(name)}.cpp").is_file(), name
    for op, sig in SIGNATURES.items():  # ops without an AscendC kernel of ours have no sources there
        assert (stage / "op_host" / f"mfds_{op}.cpp").is_file() == bool(sig["ascend"]), op
    # the flattened sources resolve every include of their own (CANN's headers stubbed)
    stubs = tmp_path / "stubs"
    for path in glob.glob(str(stage / "op_host" / "mfds_*.cpp")):
        text = check_ops.preprocess(path, str(stubs))
        assert "public OpDef" in text, path
    # without CANN the real build stops at once with the reason
    env = {k: v for k, v in os.environ.items() if k not in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")}
    r = subprocess.run(["bash", os.path.join(ROOT, "ops", "build_ascend.sh")], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "ASCEND_HOME_PATH" in r.stderr


def _ascend_ready():
    from mindformers_ds.ops.ascend_reg import opp_installed
    if not os.environ.get("ASCEND_HOME_PATH"):
        return "CANN is not installed here (ASCEND_HOME_PATH unset): the AscendC kernels need CANN and an NPU"
    if not opp_installed():
        return "the mfds custom OPP package is not installed: run ops/build_ascend.sh and export ASCEND_CUSTOM_OPP_PATH"
    return ""


@pytest.mark.skipif(bool(_ascend_ready()), reason=_ascend_ready() or "ready")
def test_ascend_registered_kernels_match_composite():
    import mindspore as ms
    from mindspore import Tensor
    from mindformers_ds.ops import composite, kernels
    ms.set_context(mode=ms.GRAPH_MODE, device_target="Ascend")
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((5, 37)).astype(np.float32))
    w = Tensor(rng.standard_normal((37,)).astype(np.float32))
    norm = kernels.rms_norm_op(1e-6)
    assert isinstance(norm, kernels.FusedRMSNorm), "rms_norm fell back to the composite path on Ascend"
    np.testing.assert_allclose(norm(x, w, 1e-6).asnumpy(), composite.rms_norm(x, w, 1e-6).asnumpy(), atol=1e-5)
    gate_up = Tensor(rng.standard_normal((7, 2 * 45)).astype(np.float32))
    swiglu = kernels.swiglu_op()
    assert isinstance(swiglu, kernels.FusedSwiglu)
    np.testing.assert_allclose(swiglu(gate_up).asnumpy(), composite.swiglu(gate_up).asnumpy(), atol=1e-5)
    # V3.2's top-k attention: 3 keys per query of 6 keys, a masked one among them
    from mindformers_ds.ops import attention_kernels
    b, sq, sk, h, dn, dr, dv, k = 2, 4, 6, 3, 5, 4, 6, 3
    f = lambda *shape: Tensor(rng.standard_normal(shape).astype(np.float32))
    index = Tensor(np.stack([rng.permutation(sk)[:k] for _ in range(b * sq)]).reshape(b, sq, k).astype(np.int32))
    bias = np.zeros((b, sq, k), np.float32)
    bias[0, 1, 2] = -1e30
    args = (f(b, sq, h, dn + dr), f(b, h, sq, dr), f(b, sk, h, dn + dv), f(b, sk, dr), index, Tensor(bias), 0.37)
    sparse = attention_kernels.sparse_mla_attention_op(0.37)
    assert isinstance(sparse, attention_kernels.FusedSparseMlaAttention)
    np.testing.assert_allclose(sparse(*args).asnumpy(), composite.SparseMlaAttentionCore()(*args).asnumpy(), atol=1e-5)
    # V4 mHC's Sinkhorn, forward and backward: 37 positive 4 x 4 matrices (a partial tile)
    from test_ops import Call, compare
    comb = Tensor(rng.uniform(0.05, 1.0, (37, 4, 4)).astype(np.float32))
    sinkhorn = Call(kernels.hc_sinkhorn_op(20, 1e-6), 20, 1e-6)
    assert isinstance(sinkhorn.fn, kernels.FusedSinkhorn), "hc_sinkhorn fell back to the composite path on Ascend"
    compare(sinkhorn, Call(composite.sinkhorn, 20, 1e-6), (comb,), [f(37, 4, 4)], (0,))
