"""A small, fast GGUF metadata reader (header, key/values, tensor infos; never the data).

gguf.GGUFReader builds numpy views for every element of every array, which takes seconds for a
200k-token vocabulary; this reader walks the file once with struct and, unless asked, skips array
contents. It is independent of the estimator's own reader, so the /api/show dicts built from it
are a second opinion on what the file says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGMLQuantizationType

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order, innermost dimension first
    type_name: str


class _Reader:
    def __init__(self, fh: BinaryIO):
        self.fh = fh

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.fh.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        return self.fh.read(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self.fh.seek(n, 1)

    def value(self, vtype: int, keep_arrays: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            if keep_arrays:
                return [self.value(etype, True) for _ in range(count)]
            if etype in _SCALARS:
                self.fh.seek(struct.calcsize(_SCALARS[etype]) * count, 1)
            elif etype == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                for _ in range(count):
                    self.value(etype, False)
            return _Skipped(count)
        raise ValueError(f"unknown GGUF value type {vtype}")


@dataclass(frozen=True)
class _Skipped:
    """An array whose contents were not decoded (only its length is known)."""

    length: int


def read_metadata(path: Path | str, keep_arrays: bool | set[str] = False) -> tuple[dict[str, Any], list[TensorInfo]]:
    """Key/values and tensor infos. Arrays are decoded when keep_arrays is True or names them."""
    with open(path, "rb") as fh:
        r = _Reader(fh)
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = r.unpack("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} not supported")
        n_tensors = r.unpack("<Q")
        n_kv = r.unpack("<Q")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.unpack("<I")
            keep = keep_arrays if isinstance(keep_arrays, bool) else key in keep_arrays
            kv[key] = r.value(vtype, keep)
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            shape = tuple(r.unpack("<Q") for _ in range(n_dims))
            ggml_type = r.unpack("<I")
            r.unpack("<Q")  # data offset
            tensors.append(TensorInfo(name, shape, GGMLQuantizationType(ggml_type).name))
    return kv, tensors


def is_skipped(value: Any) -> bool:
    return isinstance(value, _Skipped)


def array_length(value: Any) -> int | None:
    if isinstance(value, _Skipped):
        return value.length
    if isinstance(value, list):
        return len(value)
    return None
