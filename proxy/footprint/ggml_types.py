"""GGML tensor types and their exact storage sizes.

The table comes from the ``gguf`` package (llama.cpp's own Python library) so that it knows every
type llama.cpp knows; names are spelled as Ollama prints them in ``/api/show`` (``Q4_K``, ``BF16``).
"""

from __future__ import annotations

from collections.abc import Iterable
from math import prod

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType


def _table() -> dict[str, tuple[int, int]]:
    table = {t.name: GGML_QUANT_SIZES[t] for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}
    # gguf 0.19 lists Q8_1 as 40 bytes; ggml's block_q8_1 is two f16 (d, s) + 32 int8 = 36 bytes.
    table["Q8_1"] = (32, 36)
    # Interleaved types removed from ggml in 2024 but still inside old GGUF files (same block bytes).
    for name in _LEGACY_IDS.values():
        table.setdefault(name, (32, 18))
    return table


_LEGACY_IDS = {31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8"}


#: type name -> (elements per block, bytes per block)
GGML_TYPES: dict[str, tuple[int, int]] = _table()

#: ggml enum id -> type name (GGUF files store the id)
TYPE_NAMES_BY_ID: dict[int, str] = {**_LEGACY_IDS, **{t.value: t.name for t in GGMLQuantizationType}}

#: KV cache types llama.cpp accepts for -ctk/-ctv, by their lower-case CLI name.
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl")


def type_size(type_name: str) -> tuple[int, int]:
    """(block size, bytes per block) of a type; accepts any case ("q8_0", "Q8_0")."""
    try:
        return GGML_TYPES[type_name.upper()]
    except KeyError:
        raise ValueError(f"unknown ggml type {type_name!r}") from None


def row_bytes(type_name: str, n: int) -> int:
    """Bytes of one row of ``n`` elements (ggml_row_size)."""
    block, size = type_size(type_name)
    return -(-n // block) * size  # ggml requires whole blocks; round up if a shape is odd


def tensor_bytes(type_name: str, shape: Iterable[int]) -> int:
    """Exact bytes of a tensor: rows of the innermost dimension times the row size (ggml_nbytes)."""
    dims = tuple(shape)
    if not dims:
        return row_bytes(type_name, 1)
    return row_bytes(type_name, dims[0]) * prod(dims[1:])
