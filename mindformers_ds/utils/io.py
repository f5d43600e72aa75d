"""Crash-safe file writes: write a temp file in the same directory, fsync, rename.

A reader (or a resumed run) therefore sees either the old file or the complete new one,
never a torn write.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator


def read_json(path: str, error=ValueError) -> Any:
    """The JSON document at `path`, or `error` raised with one line naming the file and the fault."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None
    except ValueError as e:   # JSONDecodeError, and bytes that are not UTF-8
        raise error(f"{path}: not valid JSON ({e})") from None


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def normal_mode(kind: int = 0o666) -> int:
    """The mode a plain file (0o666) or directory (0o777) gets under the process's umask
    (mkstemp / mkdtemp create 0600 / 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return kind & ~umask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp path next to `path`; on success it is fsynced and renamed onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(tmp, normal_mode())  # mkstemp creates 0600; give the file normal permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_with(path: str, writer: Callable[[str], None]) -> None:
    """Call `writer(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
