#!/usr/bin/env python3
"""Check that every custom operator is complete and agrees with itself across targets.

For each op of mindformers_ds/ops/signatures.py (the one interface table), unless its Ascend side
is one of CANN's own operators (`ascend_builtin`: then MindSpore must have it and the Python face
must call it) or it has none (`ascend` None: `ascend_note` says what runs there instead):
  * ops/ascendc/<op>/<op>.json (msopgen definition): op names, inputs/outputs in order, dtypes of
    every variant and ND formats equal the table, and equal the CustomRegOp info that
    mindformers_ds registers on Ascend (ascend_reg.build_reg_info);
  * op_host: every OpDef (read after the C preprocessor, so macro-built defs count) declares the
    same inputs/outputs/dtypes/formats, is added with OP_ADD and has its tiling data registered;
  * op_kernel: a kernel entry `<snake_name>(GM_ADDR <inputs>, <outputs>, workspace, tiling)`;
  * the CPU kernel in ops/cpu: defined with MFDS_AOT, checks nparam == inputs + outputs (>= for a
    `variadic` op, whose one input repeats) and the
    dtypes of the table, and is exported by the built library;
  * the Python face (mindformers_ds/ops/kernels.py) has the factory `<op>_op` and a test in tests/
    exercises it;
  * limits a kernel's host side and its Python face share (SHARED_LIMITS) are equal.
Every ascendc/<op> directory must be in the table. Prints one line per problem; exit status 1
when there is any.

  python tools/check_ops.py [--root REPO] [--no-build]
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mindformers_ds.ops.signatures import SIGNATURES  # noqa: E402

GE_TYPES = {"DT_FLOAT16": "float16", "DT_BF16": "bfloat16", "DT_FLOAT": "float32", "DT_INT32": "int32",
            "DT_UINT8": "uint8"}


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def variants(op: str) -> Tuple[str, ...]:
    from mindformers_ds.ops.ascend_reg import float_variants
    return tuple(float_variants(op))


def expected_ios(op: str) -> Dict[str, Tuple[list, list]]:
    """Ascend function name -> (inputs, outputs) with the per-variant dtype lists."""
    sig, out = SIGNATURES[op], {}
    var = variants(op)

    def typed(ios):
        return [(n, [v if t == "float" else t for v in var]) for n, t in ios]
    out[sig["ascend"]] = (typed(sig["inputs"]), typed(sig["outputs"]))
    if sig["ascend_grad"]:
        out[sig["ascend_grad"]] = (typed(sig["grad_inputs"]), typed(sig["grad_outputs"]))
    return out


def check_json(root: str, op: str) -> List[str]:
    path = os.path.join(root, "ops", "ascendc", op, f"{op}.json")
    if not os.path.isfile(path):
        return [f"{path}: missing (msopgen definition of {op})"]
    try:
        with open(path) as f:
            defs = {d["op"]: d for d in json.load(f)}
    except (ValueError, KeyError, TypeError) as e:
        return [f"{path}: not a list of msopgen op definitions ({e})"]
    problems = []
    want = expected_ios(op)
    if sorted(defs) != sorted(want):
        problems.append(f"{path}: defines ops {sorted(defs)}, signatures.py expects {sorted(want)}")
    for name, (ins, outs) in want.items():
        d = defs.get(name)
        if d is None:
            continue
        for key, ios in (("input_desc", ins), ("output_desc", outs)):
            got = [(x.get("name"), x.get("type")) for x in d.get(key, [])]
            if got != ios:
                problems.append(f"{path}: {name}.{key} is {got}, expected {ios}")
            for x in d.get(key, []):
                if x.get("format") != ["ND"] * len(variants(op)) or x.get("param_type") != "required":
                    problems.append(f"{path}: {name}.{key}.{x.get('name')} must be required with ND formats "
                                    f"for {len(variants(op))} variants")
        problems += check_reg_info(path, op, name, ins, outs)
    return problems


def check_reg_info(path: str, op: str, name: str, ins, outs) -> List[str]:
    """The CustomRegOp info registered on Ascend must describe the same op as the JSON."""
    from mindformers_ds.ops.ascend_reg import build_reg_info
    info = build_reg_info(op, name)
    problems = []
    if [i["name"] for i in info["inputs"]] != [n for n, _ in ins] or \
            [o["name"] for o in info["outputs"]] != [n for n, _ in outs]:
        problems.append(f"{path}: {name}: CustomRegOp inputs/outputs differ from the JSON")
    rows = [[t for t, _ in row] for row in info["dtype_format"]]
    cols = [types for _, types in ins + outs]
    expect = [[c[v] for c in cols] for v in range(len(variants(op)))]
    if rows != expect:
        problems.append(f"{path}: {name}: CustomRegOp dtype_format {rows} differs from the JSON {expect}")
    if any(fmt != "DefaultFormat" for row in info["dtype_format"] for _, fmt in row):
        problems.append(f"{path}: {name}: CustomRegOp formats must be DefaultFormat (ND)")
    return problems


def preprocess(path: str, stubs: str) -> str:
    """The op_host source after the C preprocessor, CANN headers replaced by empty stubs."""
    ascendc = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    for header in glob.glob(os.path.join(ascendc, "**", "*.[ch]*"), recursive=True):
        with open(header) as f:
            for inc in re.findall(r'#include\s+[<"]([^>"]+)[>"]', f.read()):
                if "/" in inc and not inc.startswith(".."):  # CANN headers such as register/op_def_registry.h
                    stub = os.path.join(stubs, inc)
                    os.makedirs(os.path.dirname(stub), exist_ok=True)
                    open(stub, "a").close()
    r = subprocess.run(["g++", "-E", "-P", "-std=c++17", "-I", stubs, path], capture_output=True, text=True)
    if r.returncode != 0:
        errors = [line for line in r.stderr.splitlines() if "error" in line] or r.stderr.splitlines() or ["?"]
        raise RuntimeError(errors[0])
    return r.stdout


def parse_opdefs(text: str) -> Dict[str, Tuple[list, list]]:
    defs = {}
    for m in re.finditer(r"class\s+(\w+)\s*:\s*public\s+OpDef\s*\{(.*?)\}\s*;", text, re.S):
        ios = {"Input": [], "Output": []}
        for kind, name, body in re.findall(r"->\s*(Input|Output)\(\s*\"(\w+)\"\s*\)((?:\.\w+\([^()]*\))*)", m.group(2)):
            dts = re.search(r"\.DataType\(\{([^}]*)\}\)", body)
            fmts = re.search(r"\.Format\(\{([^}]*)\}\)", body)
            types = [GE_TYPES.get(t.strip().split("::")[-1], t.strip()) for t in dts.group(1).split(",")] if dts else None
            formats = [f.strip().split("::")[-1] for f in fmts.group(1).split(",")] if fmts else None
            required = ".ParamType(REQUIRED)" in body
            ios[kind].append((name, types, formats, required))
        defs[m.group(1)] = (ios["Input"], ios["Output"])
    return defs


def check_host(root: str, op: str, stubs: str) -> List[str]:
    host = os.path.join(root, "ops", "ascendc", op, "op_host")
    path = os.path.join(host, f"mfds_{op}.cpp")
    if not os.path.isfile(path):
        return [f"{path}: missing (OpDef and tiling of {op})"]
    if shutil.which("g++") is None:
        return [f"{path}: cannot check without g++ (the C preprocessor expands the OpDef macros)"]
    try:
        text = preprocess(path, stubs)
    except RuntimeError as e:
        return [f"{path}: preprocessing failed: {e}"]
    defs = parse_opdefs(text)
    host_text = "".join(open(p).read() for p in sorted(glob.glob(os.path.join(host, "*"))))
    problems = []
    n_var = len(variants(op))
    for name, (ins, outs) in expected_ios(op).items():
        if name not in defs:
            problems.append(f"{path}: no OpDef class {name}")
            continue
        if not re.search(rf"OP_ADD\(\s*{name}\s*\)", text):
            problems.append(f"{path}: {name} is not added with OP_ADD")
        if not re.search(rf"REGISTER_TILING_DATA_CLASS\(\s*{name}\s*,", host_text):
            problems.append(f"{host}: no REGISTER_TILING_DATA_CLASS({name}, ...)")
        got_in, got_out = defs[name]
        for kind, want, got in (("Input", ins, got_in), ("Output", outs, got_out)):
            if [g[0] for g in got] != [w[0] for w in want]:
                problems.append(f"{path}: {name} {kind}s {[g[0] for g in got]}, expected {[w[0] for w in want]}")
                continue
            for (wname, wtypes), (_, types, formats, required) in zip(want, got):
                # an OpDef with a single variant lists each dtype once
                if types != wtypes and not (n_var == 1 and types == wtypes[:1]):
                    problems.append(f"{path}: {name}.{kind}({wname}) dtypes {types}, expected {wtypes}")
                if not formats or any(f != "FORMAT_ND" for f in formats) or len(formats) != len(types or []):
                    problems.append(f"{path}: {name}.{kind}({wname}) formats {formats}, expected ND per dtype")
                if not required:
                    problems.append(f"{path}: {name}.{kind}({wname}) must be ParamType(REQUIRED)")
    return problems


def check_kernels(root: str, op: str) -> List[str]:
    problems = []
    for name, (ins, outs) in expected_ios(op).items():
        entry = snake(name)
        path = os.path.join(root, "ops", "ascendc", op, "op_kernel", f"{entry}.cpp")
        if not os.path.isfile(path):
            problems.append(f"{path}: missing (kernel of {name})")
            continue
        with open(path) as f:
            text = f.read()
        m = re.search(rf'extern\s+"C"\s+__global__\s+__aicore__\s+void\s+{entry}\s*\(([^)]*)\)', text)
        if not m:
            problems.append(f'{path}: no extern "C" __global__ __aicore__ void {entry}(...)')
            continue
        params = [p.split()[-1] for p in m.group(1).split(",")]
        want = [n for n, _ in ins + outs] + ["workspace", "tiling"]
        if params != want:
            problems.append(f"{path}: {entry} takes {params}, expected {want}")
    return problems


def cpu_functions(op: str) -> Dict[str, Tuple[list, list]]:
    sig = SIGNATURES[op]
    funcs = {sig["cpu"]: (sig["inputs"], sig["outputs"])}
    if sig.get("cpu_grad_io"):
        funcs.update(sig["cpu_grad_io"])
    elif sig["cpu_grad"]:
        funcs[sig["cpu_grad"]] = (sig["grad_inputs"], sig["grad_outputs"])
    return funcs


def check_cpu(root: str, op: str, lib) -> List[str]:
    cpu_dir = os.path.join(root, "ops", "cpu")
    sources = {p: open(p).read() for p in sorted(glob.glob(os.path.join(cpu_dir, "*.cc")))}
    problems = []
    sig = SIGNATURES[op]
    if sig["cpu_grad"] and sorted(sig["cpu_grad"].split("|")) != sorted(cpu_functions(op))[1:] and \
            sorted(sig["cpu_grad"].split("|") + [sig["cpu"]]) != sorted(cpu_functions(op)):
        problems.append(f"signatures.py: {op}: cpu_grad {sig['cpu_grad']} and cpu_grad_io disagree")
    for func, (ins, outs) in cpu_functions(op).items():
        where = [(p, t) for p, t in sources.items() if re.search(rf"MFDS_AOT\(\s*{func}\s*\)", t)]
        if not where:
            problems.append(f"{cpu_dir}: no CPU kernel MFDS_AOT({func}) for {op}")
            continue
        path, text = where[0]
        body = text[re.search(rf"MFDS_AOT\(\s*{func}\s*\)", text).end():]
        body = body[:body.find("\nMFDS_AOT(")] if "\nMFDS_AOT(" in body else body
        relation = "<" if sig.get("variadic") else "!="  # variadic: the first input repeats
        guard = re.search(rf"nparam\s*{relation}\s*(\d+)", body)
        if not guard or int(guard.group(1)) != len(ins) + len(outs):
            problems.append(f"{path}: {func} must check nparam {relation} {len(ins) + len(outs)} "
                            f"(found {guard.group(0) if guard else 'no check'})")
        for idx, dtype in re.findall(r'is\(dtypes\[(\d+)\],\s*"(\w+)"\)', body):
            ios = ins + outs
            want = ios[int(idx)][1] if int(idx) < len(ios) else None
            want = "float32" if want == "float" else want
            if dtype != want:
                problems.append(f"{path}: {func} expects dtypes[{idx}] == {dtype}, signatures.py says {want}")
        if lib is not None and not hasattr(lib, func):
            problems.append(f"built CPU library does not export {func}")
    return problems


def check_builtin(root: str, op: str) -> List[str]:
    """An op whose Ascend side is one of CANN's own (ascend_builtin): MindSpore must have it and
    the Python face must call it; there is no AscendC source of ours to check."""
    import mindspore.ops
    name = SIGNATURES[op]["ascend_builtin"]
    problems = []
    if not hasattr(mindspore.ops, name):
        problems.append(f"signatures.py: {op}: mindspore.ops has no {name} (ascend_builtin)")
    if os.path.isdir(os.path.join(root, "ops", "ascendc", op)):
        problems.append(f"ops/ascendc/{op}: {op} runs CANN's {name} on Ascend; an AscendC kernel would never be used")
    kernels = python_faces(root)
    if f"ops.{name}(" not in kernels:
        problems.append(f"mindformers_ds/ops/kernels.py: {op} on Ascend never calls ops.{name}")
    return problems


def python_faces(root: str) -> str:
    """The source of the fused ops' Python faces: ops/kernels.py and ops/attention_kernels.py."""
    return "".join(open(os.path.join(root, "mindformers_ds", "ops", f)).read()
                   for f in ("kernels.py", "attention_kernels.py"))


def check_python(root: str, op: str) -> List[str]:
    problems = []
    kernels = python_faces(root)
    if not re.search(rf"^def {op}_op\(", kernels, re.M) or f'"{op}"' not in kernels:
        problems.append(f"mindformers_ds/ops/kernels.py: no factory {op}_op registering \"{op}\"")
    tests = "".join(open(path).read() for path in sorted(glob.glob(os.path.join(root, "tests", "test_*.py"))))
    if f"{op}_op(" not in tests:
        problems.append(f"tests/: no test calls {op}_op (no test of the fused {op})")
    return problems


# Limits a kernel's host side and its Python face must agree on: (header, C++ name, Python name).
SHARED_LIMITS = [("ops/ascendc/common/sinkhorn_limits.h", "kSinkhornMaxIters", "ASCEND_SINKHORN_MAX_ITERS")]


def check_limits(root: str) -> List[str]:
    problems = []
    faces = python_faces(root)
    for header, cpp, py in SHARED_LIMITS:
        with open(os.path.join(root, header)) as f:
            c = re.search(rf"\b{cpp}\s*=\s*(\d+)", f.read())
        p = re.search(rf"^{py}\s*=\s*(\d+)", faces, re.M)
        if not c or not p or c.group(1) != p.group(1):
            problems.append(f"{header}: {cpp} = {c.group(1) if c else '?'} but mindformers_ds/ops: {py} = "
                            f"{p.group(1) if p else '?'} (the kernel and its Python face must agree)")
    return problems


def run(root: str, build_lib: bool = True) -> List[str]:
    problems = check_limits(root)
    ascendc = os.path.join(root, "ops", "ascendc")
    dirs = {d for d in os.listdir(ascendc) if os.path.isdir(os.path.join(ascendc, d)) and d != "common"}
    for extra in sorted(dirs - set(SIGNATURES)):
        problems.append(f"{ascendc}/{extra}: not in mindformers_ds/ops/signatures.py")
    lib = None
    if build_lib:
        from mindformers_ds.ops import build
        try:
            lib = ctypes.CDLL(build.build(os.path.join(root, "ops", "cpu")))
        except (build.KernelBuildError, OSError) as e:
            problems.append(f"ops/cpu: the CPU kernel library does not build or load: {e}")
    with tempfile.TemporaryDirectory() as stubs:
        for op in SIGNATURES:
            if SIGNATURES[op].get("ascend_builtin"):
                problems += check_builtin(root, op)
            elif SIGNATURES[op]["ascend"] is None:  # CPU only: the table says what runs on Ascend
                if not SIGNATURES[op].get("ascend_note"):
                    problems.append(f"signatures.py: {op} has no Ascend kernel and no ascend_note saying what runs there")
            else:
                problems += check_json(root, op)
                problems += check_host(root, op, stubs)
                problems += check_kernels(root, op)
            problems += check_cpu(root, op, lib)
            problems += check_python(root, op)
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=REPO)
    ap.add_argument("--no-build", action="store_true", help="skip building the CPU library (no symbol check)")
    args = ap.parse_args(argv)
    problems = run(os.path.abspath(args.root), build_lib=not args.no_build)
    for p in problems:
        print(p)
    print(f"{len(SIGNATURES)} ops checked: " + ("all consistent" if not problems else f"{len(problems)} problems"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
