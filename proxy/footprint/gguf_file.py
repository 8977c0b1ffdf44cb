"""Read a ModelDescription straight from a GGUF file (metadata and tensor table only).

The tensor data is never read, so sparse real-scale test files and multi-GB models cost the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType

from proxy.footprint.describe import describe
from proxy.footprint.model import ModelDescription, Tensor

# Arrays llama.cpp only needs the length of; decoding 150k tokenizer strings would dominate.
_LENGTH_ONLY = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges")


def _value(field: Any) -> Any:
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        if field.name in _LENGTH_ONLY:
            return range(len(field.data))
        return list(field.contents())
    return field.contents()


def description_from_gguf(path: str | Path, name: str | None = None) -> ModelDescription:
    """Describe the model in a GGUF file; raises OSError/ValueError for unreadable files."""
    reader = GGUFReader(str(path), "r")
    metadata = {key: _value(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = tuple(
        Tensor(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors
    )
    label = name or metadata.get("general.name") or Path(path).stem
    return describe(metadata, tensors, name=str(label))
