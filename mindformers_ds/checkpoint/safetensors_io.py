"""safetensors read/write with numpy only, for every dtype DeepSeek checkpoints use.

numpy has no bfloat16 or float8, so tensors travel as (dtype tag, storage array): BF16 as
uint16 bits, F8_E4M3 as uint8 codes. `to_float32` decodes them. The reader validates the
header against the file size before touching data, so a truncated or corrupt shard gives a
one-line error naming the file and tensor, and reads tensors (or slices of them) with pread.
The writers stream tensor bytes into a temp file that is renamed into place when complete.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import CheckpointError  # noqa: F401  (raised here; importers read it from here too)

from ..utils.io import atomic_path

# dtype tag -> (storage numpy dtype, bytes per element)
DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"), "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"),
    "F8_E8M0": np.dtype("u1"),
}
NUMPY_TAG = {np.dtype("<f8"): "F64", np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64",
             np.dtype("<i4"): "I32", np.dtype("<i2"): "I16", np.dtype("i1"): "I8", np.dtype("u1"): "U8",
             np.dtype("?"): "BOOL"}
MAX_HEADER = 100 * 1024 * 1024




Tagged = Tuple[str, np.ndarray]


def tag_of(arr: np.ndarray) -> str:
    try:
        return NUMPY_TAG[arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype]
    except KeyError:
        raise CheckpointError(f"cannot store numpy dtype {arr.dtype} in safetensors") from None


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bits (NaN stays NaN)."""
    u = np.array(x, np.float32, order="C").view(np.uint32)  # keeps 0-d arrays 0-d
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(x)
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def to_float32(tag: str, arr: np.ndarray) -> np.ndarray:
    if tag == "BF16":
        return bf16_to_f32(arr)
    if tag in ("F8_E4M3", "F8_E5M2"):
        from .fp8 import decode_fp8
        return decode_fp8(arr, tag)
    if tag == "F8_E8M0":
        from .fp4 import decode_ue8m0
        return decode_ue8m0(arr)
    return arr.astype(np.float32)


def from_float32(x: np.ndarray, tag: str) -> np.ndarray:
    if tag == "BF16":
        return f32_to_bf16(x)
    if tag == "F16":
        return x.astype(np.float16)
    if tag == "F32":
        return x.astype(np.float32)
    raise CheckpointError(f"cannot cast float32 to {tag}")


class SafetensorsFile:
    """Read-only view of one .safetensors file (memory-mapped, validated header)."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
        except OSError:
            raise CheckpointError(f"{path}: file not found") from None
        if size < 8:
            raise CheckpointError(f"{path}: truncated ({size} bytes; a safetensors file starts with an 8-byte header length)")
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: header length {n} is beyond the file size {size} (truncated or not safetensors)")
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: header is not valid JSON (corrupt file)") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: header is not a JSON object")
        self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                tag, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
            if tag not in DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {tag!r} "
                                      f"(known: {', '.join(sorted(DTYPES))})")
            want = int(np.prod(shape, dtype=np.int64)) * DTYPES[tag].itemsize
            if end - begin != want or begin < 0:
                raise CheckpointError(f"{path}: tensor {name!r} spans {end - begin} bytes but {tag}{list(shape)} "
                                      f"needs {want}")
            if end > data_len:
                raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} but the file holds {data_len} "
                                      f"data bytes (truncated)")
            self.entries[name] = (tag, shape, begin, end)
        self._fd: Optional[int] = None

    def keys(self) -> List[str]:
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def info(self, name: str) -> Tuple[str, Tuple[int, ...]]:
        tag, shape, _, _ = self.entries[name]
        return tag, shape

    def nbytes(self, name: str) -> int:
        _, _, b, e = self.entries[name]
        return e - b

    def _read(self, offset: int, nbytes: int) -> np.ndarray:
        """nbytes at `offset` of the data section, read straight into a fresh numpy buffer."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        buf = np.empty(nbytes, np.uint8)
        view, done = memoryview(buf), 0
        while done < nbytes:
            got = os.preadv(self._fd, [view[done:]], self.data_start + offset + done)
            if got <= 0:
                raise CheckpointError(f"{self.path}: short read at byte {self.data_start + offset + done} (file changed?)")
            done += got
        return buf

    def get(self, name: str, copy: bool = True) -> Tagged:
        """(tag, storage array), read with pread (not mmap, so memory stays bounded)."""
        if name not in self.entries:
            raise CheckpointError(f"{self.path}: tensor {name!r} not found")
        tag, shape, b, e = self.entries[name]
        return tag, self._read(b, e - b).view(DTYPES[tag]).reshape(shape)

    def get_rows(self, name: str, index: int, row_start: int = 0, row_end: Optional[int] = None) -> Tagged:
        """Rows [row_start, row_end) of slice `index` along axis 0 of a >=2-D tensor, reading only
        those bytes (e.g. one expert's gate rows out of a stacked [E, 2I, H] tensor)."""
        tag, shape, b, _ = self.entries[name]
        item = DTYPES[tag].itemsize
        inner = shape[1:]
        row_bytes = int(np.prod(inner[1:], dtype=np.int64)) * item
        row_end = inner[0] if row_end is None else row_end
        start = b + index * inner[0] * row_bytes + row_start * row_bytes
        data = self._read(start, (row_end - row_start) * row_bytes)
        return tag, data.view(DTYPES[tag]).reshape((row_end - row_start,) + inner[1:])

    def get_f32(self, name: str) -> np.ndarray:
        tag, arr = self.get(name)
        return to_float32(tag, arr)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_safetensors(path: str, tensors: Iterable[Tuple[str, str, np.ndarray]],
                      metadata: Optional[Dict[str, str]] = None, total: Optional[int] = None) -> int:
    """Write (name, tag, storage array) items to `path` atomically; returns bytes written.

    The header needs every shape up front, so `tensors` is materialised as a list of
    references (arrays are usually memory-map views or freshly computed slices)."""
    items = list(tensors)
    header: Dict[str, object] = {}
    offset = 0
    for name, tag, arr in items:
        if arr.dtype != DTYPES[tag]:
            raise CheckpointError(f"{path}: tensor {name!r} has storage {arr.dtype}, expected {DTYPES[tag]} for {tag}")
        n = arr.nbytes
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for _, _, arr in items:
                f.write(np.ascontiguousarray(arr).tobytes(order="C"))
    return 8 + len(raw) + offset


def write_safetensors_stream(path: str, entries, metadata: Optional[Dict[str, str]] = None, progress=None) -> int:
    """Write tensors whose bytes come in pieces: entries are (name, tag, shape, pieces) where
    `pieces` is an iterable of storage arrays concatenating to the tensor. Only one piece is
    in memory at a time; the file appears (atomically) only when every byte is written."""
    header: Dict[str, object] = {}
    offset = 0
    for name, tag, shape, _ in entries:
        n = int(np.prod(shape, dtype=np.int64)) * DTYPES[tag].itemsize
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, tag, shape, pieces in entries:
                want = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
                got = 0
                for piece in pieces:
                    if piece.dtype != DTYPES[tag]:
                        raise CheckpointError(f"{path}: tensor {name!r} piece has dtype {piece.dtype}, expected {tag}")
                    piece = np.ascontiguousarray(piece)
                    f.write(memoryview(piece.reshape(-1).view(np.uint8)))  # no copy
                    got += piece.nbytes
                    if progress is not None:
                        progress(piece.nbytes)
                if got != want:
                    raise CheckpointError(f"{path}: tensor {name!r} produced {got} bytes, expected {want}")
    return 8 + len(raw) + offset


def iter_file(path: str) -> Iterator[Tuple[str, str, np.ndarray]]:
    with SafetensorsFile(path) as f:
        for name in f.keys():
            tag, arr = f.get(name)
            yield name, tag, arr
