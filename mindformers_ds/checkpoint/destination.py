"""Writing a checkpoint directory (conversion, split, merge) without mixing with what is there.

A destination that is not empty is refused unless `overwrite`: an earlier conversion's shards
and index left beside new files were read back by `verify` as if they were the new output.
Output is written into a sibling work directory, `.NAME.partial`, and moved into place when
complete; with `overwrite` the old directory is swapped out in one step (Linux
`renameat2(RENAME_EXCHANGE)`, else two renames) and then removed. A conversion killed half-way
leaves only the work directory, which the next run of the same command resumes from.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from typing import List

from ..utils.io import fsync_dir
from .safetensors_io import CheckpointError

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def work_dir(dst: str) -> str:
    dst = os.path.abspath(dst)
    return os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.partial")


def _entries(path: str) -> List[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def check_destination(dst: str, overwrite: bool) -> None:
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise CheckpointError(f"{dst}: destination exists and is not a directory")
    entries = _entries(dst)
    if entries and not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise CheckpointError(f"{dst}: destination is not empty ({len(entries)} entries: {shown}); pass --overwrite "
                              f"to replace it, or choose another directory")


def begin(dst: str, overwrite: bool = False, resume: bool = True) -> str:
    """Check the destination and return the work directory to write into. `resume` keeps what an
    interrupted run of the same command left there (the converter reuses finished shards)."""
    check_destination(dst, overwrite)
    work = work_dir(dst)
    if os.path.isdir(work) and not resume:
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    return work


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def commit(work: str, dst: str) -> None:
    """Move the finished work directory onto `dst`, replacing an existing one."""
    fsync_dir(work)
    parent = os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(dst) and not _entries(dst):
        os.rmdir(dst)
    if not os.path.exists(dst):
        os.replace(work, dst)
    elif _exchange(work, dst):
        shutil.rmtree(work)  # now holds the old output
    else:
        old = os.path.join(parent, f".{os.path.basename(os.path.abspath(dst))}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(work, dst)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(parent)
