"""Build (once) and locate the CPU kernel library compiled from the top-level `ops/cpu/`.

The library is cached under $MFDS_OPS_CACHE (default ~/.cache/mindformers_ds/ops) in a
directory named by a hash of the sources, the compiler flags and the compiler version, so a
changed source is rebuilt automatically and a stale library is never loaded. Concurrent
processes (msrun workers) serialise on a file lock; the .so appears by atomic rename. A
build failure is reported once and the caller falls back to the composite operators.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Optional

log = logging.getLogger(__name__)

SRC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "ops", "cpu")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]
LIB_NAME = "libmfds_cpu_ops.so"
_cached: dict = {}


class KernelBuildError(RuntimeError):
    pass


def cache_root() -> str:
    return os.environ.get("MFDS_OPS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mindformers_ds", "ops")


def sources(src_dir: str = SRC_DIR):
    if not os.path.isdir(src_dir):
        return []
    return sorted(os.path.join(src_dir, f) for f in os.listdir(src_dir) if f.endswith((".cc", ".h")))


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def fingerprint(src_dir: str = SRC_DIR) -> str:
    h = hashlib.sha256()
    for path in sources(src_dir):
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(" ".join(FLAGS).encode())
    try:
        h.update(subprocess.run([_compiler(), "--version"], capture_output=True, text=True, timeout=30).stdout.encode())
    except (OSError, subprocess.TimeoutExpired):
        h.update(b"no-compiler")
    return h.hexdigest()[:16]


def build(src_dir: str = SRC_DIR, force: bool = False) -> str:
    """Path of the compiled library, building it when missing or stale. Raises KernelBuildError."""
    srcs = [s for s in sources(src_dir) if s.endswith(".cc")]
    if not srcs:
        raise KernelBuildError(f"no kernel sources in {src_dir}")
    out_dir = os.path.join(cache_root(), fingerprint(src_dir))
    lib = os.path.join(out_dir, LIB_NAME)
    if os.path.isfile(lib) and not force:
        return lib
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(lib) and not force:
            return lib  # another process built it while we waited
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        cmd = [_compiler(), *FLAGS, "-I", src_dir, "-o", tmp, *srcs, "-ldl"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            os.unlink(tmp)
            raise KernelBuildError(f"cannot run {cmd[0]}: {e}") from None
        if r.returncode != 0:
            os.unlink(tmp)
            first = (r.stderr.strip().splitlines() or ["?"])[0]
            raise KernelBuildError(f"compiling {src_dir} failed: {first}")
        os.replace(tmp, lib)
    return lib


def library(src_dir: str = SRC_DIR) -> Optional[str]:
    """The library path, or None (with one warning) when it cannot be built."""
    if src_dir in _cached:
        return _cached[src_dir]
    try:
        lib = build(src_dir)
        root = cache_root()
        allowed = os.environ.get("MS_CUSTOM_AOT_WHITE_LIST", "")
        if root not in allowed.split(":"):  # MindSpore only loads aot libraries from listed directories
            os.environ["MS_CUSTOM_AOT_WHITE_LIST"] = f"{allowed}:{root}" if allowed else root
    except KernelBuildError as e:
        log.warning("CPU kernels unavailable (%s); using the composite MindSpore operators", e)
        lib = None
    _cached[src_dir] = lib
    return lib


def clean() -> None:
    shutil.rmtree(cache_root(), ignore_errors=True)
    _cached.clear()
