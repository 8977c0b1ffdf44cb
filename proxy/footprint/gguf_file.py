"""Read a ModelDescription straight from a GGUF file (metadata and tensor table only).

The tensor data is never read, so sparse real-scale test files and multi-GB models cost the same.
A small header parser instead of ``gguf.GGUFReader``: the reader materialises every tokenizer
string as a numpy view (about 6 s for a 128k vocabulary on the CI machine); here arrays the
estimator does not need are skipped and only their length is kept (tens of milliseconds).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGUFValueType

from proxy.footprint.describe import describe
from proxy.footprint.ggml_types import TYPE_NAMES_BY_ID
from proxy.footprint.model import ModelDescription, Tensor

_MAGIC = b"GGUF"
_SCALARS: dict[int, tuple[str, int]] = {
    GGUFValueType.UINT8: ("<B", 1), GGUFValueType.INT8: ("<b", 1),
    GGUFValueType.UINT16: ("<H", 2), GGUFValueType.INT16: ("<h", 2),
    GGUFValueType.UINT32: ("<I", 4), GGUFValueType.INT32: ("<i", 4),
    GGUFValueType.FLOAT32: ("<f", 4), GGUFValueType.BOOL: ("<?", 1),
    GGUFValueType.UINT64: ("<Q", 8), GGUFValueType.INT64: ("<q", 8),
    GGUFValueType.FLOAT64: ("<d", 8),
}
_NUMPY = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}
# Arrays longer than this are only counted (tokenizer vocabularies, scores, merges).
_MAX_DECODED_ARRAY = 4096


class _Buffer:
    """Sequential reads over the file, refilled in chunks (the header can be tens of MB)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.data = b""
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            rest = self.data[self.pos:]
            more = self.f.read(max(n - len(rest), 1 << 20))
            self.data = rest + more
            self.pos = 0
            if len(self.data) < n:
                raise ValueError("truncated GGUF header")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        n = self.unpack("<Q", 8)
        return self.take(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.take(self.unpack("<Q", 8))


def _value(buf: _Buffer, vtype: int) -> Any:
    if vtype == GGUFValueType.STRING:
        return buf.string()
    if vtype == GGUFValueType.ARRAY:
        etype = buf.unpack("<I", 4)
        count = buf.unpack("<Q", 8)
        if etype == GGUFValueType.STRING:
            if count > _MAX_DECODED_ARRAY:
                buf.skip_strings(count)
                return range(count)
            return [buf.string() for _ in range(count)]
        if etype == GGUFValueType.ARRAY:
            return [_value(buf, GGUFValueType.ARRAY) for _ in range(count)]
        fmt, size = _SCALARS[etype]
        raw = buf.take(size * count)
        if count > _MAX_DECODED_ARRAY:
            return range(count)
        values = np.frombuffer(raw, dtype=_NUMPY[etype]).tolist()
        return [bool(v) for v in values] if etype == GGUFValueType.BOOL else values
    fmt, size = _SCALARS[vtype]
    return buf.unpack(fmt, size)


def read_gguf_header(path: str | Path) -> tuple[dict[str, Any], tuple[Tensor, ...]]:
    """(metadata, tensors) of a GGUF v2/v3 file; raises ValueError when it is not one."""
    with open(path, "rb") as f:
        buf = _Buffer(f)
        if buf.take(4) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        version = buf.unpack("<I", 4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors = buf.unpack("<Q", 8)
        n_kv = buf.unpack("<Q", 8)
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = buf.string()
            metadata[key] = _value(buf, buf.unpack("<I", 4))
        tensors = []
        for _ in range(n_tensors):
            name = buf.string()
            n_dims = buf.unpack("<I", 4)
            dims = struct.unpack(f"<{n_dims}Q", buf.take(8 * n_dims))
            type_id = buf.unpack("<I", 4)
            buf.take(8)  # data offset
            type_name = TYPE_NAMES_BY_ID.get(type_id)
            if type_name is None:
                raise ValueError(f"tensor {name} has unknown ggml type id {type_id}")
            tensors.append(Tensor(name, type_name, tuple(int(d) for d in dims)))
    return metadata, tuple(tensors)


def description_from_gguf(
    path: str | Path, name: str | None = None, projector: str | Path | None = None
) -> ModelDescription:
    """Describe the model in a GGUF file, with its separate projector (mmproj) GGUF if given;
    raises OSError/ValueError for unreadable files."""
    metadata, tensors = read_gguf_header(path)
    label = name or metadata.get("general.name") or Path(path).stem
    if projector is None:
        return describe(metadata, tensors, name=str(label))
    proj_metadata, proj_tensors = read_gguf_header(projector)
    return describe(metadata, tensors, name=str(label), projector_bytes=sum(t.nbytes for t in proj_tensors),
                    projector_metadata=proj_metadata)
