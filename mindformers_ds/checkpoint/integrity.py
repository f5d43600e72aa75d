"""Checkpoints that prove their own integrity.

Every checkpoint directory holds `manifest.json`: each of its files (paths relative to the
directory, the shards' `rank_N/` files included) with its size in bytes and its BLAKE2b digest
(16 bytes, `hashlib.blake2b(digest_size=16)`: in the standard library, ~1 GB/s per core here).
The manifest is written last into the checkpoint's temp directory, from the files as they lie
there complete and fsynced (still in the page cache, so the read costs little), just before the
directory is renamed into place: what it vouches for is what the rename publishes.

`verify` re-reads every file and returns the first problem as one line naming the file (a file
missing, truncated or grown, or its bytes changed since it was written), or None. A checkpoint
written before manifests existed has none: it is accepted, and `has_manifest` lets the caller
say it was loaded unverified.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Optional

from ..utils.io import atomic_write_json, read_json

MANIFEST = "manifest.json"
ALGORITHM = "blake2b-128"
_CHUNK = 8 << 20


def file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _files(directory: str):
    for base, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(base, name), directory)
            if rel != MANIFEST:
                yield rel


def write_manifest(directory: str) -> Dict[str, Dict[str, object]]:
    """Hash every file of `directory` (a checkpoint being written) into its manifest.json."""
    files = {}
    for rel in _files(directory):
        full = os.path.join(directory, rel)
        files[rel] = {"size": os.path.getsize(full), ALGORITHM: file_digest(full)}
    atomic_write_json(os.path.join(directory, MANIFEST), {"algorithm": ALGORITHM, "files": files})
    return files


def has_manifest(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST))


def verify(directory: str) -> Optional[str]:
    """None when every file the manifest lists is there with its size and digest (or there is no
    manifest: a checkpoint from before they existed); otherwise one line naming the first bad file."""
    manifest = os.path.join(directory, MANIFEST)
    if not os.path.isfile(manifest):
        return None
    try:
        files = read_json(manifest)["files"]
    except (ValueError, KeyError, TypeError) as e:
        return str(e) if isinstance(e, ValueError) else f"{manifest}: no 'files' mapping ({e})"
    for rel, want in files.items():
        full = os.path.join(directory, rel)
        if not os.path.isfile(full):
            return f"{full}: missing (the checkpoint's manifest lists it)"
        size = os.path.getsize(full)
        if size != want["size"]:
            return f"{full}: {size} bytes, but {want['size']} were written (truncated or appended to)"
        if file_digest(full) != want[ALGORITHM]:
            return f"{full}: its bytes changed after it was written ({ALGORITHM} differs from the manifest)"
    return None
