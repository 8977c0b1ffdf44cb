"""Read a ModelDescription from Ollama's ``POST /api/show`` response JSON.

Without ``verbose`` Ollama serialises every non-empty array in ``model_info`` as ``null``; the
``tensors`` list is always there, and ``describe`` recovers per-layer values from it.
"""

from __future__ import annotations

from typing import Any

from proxy.footprint.describe import describe
from proxy.footprint.model import ModelDescription, Tensor

# bytes per parameter of a projector blob by general.file_type (clip GGUFs are mostly f16)
_PROJECTOR_BYTES_PER_PARAM = {0: 4.0, 1: 2.0, 7: 34 / 32, 8: 22 / 32, 2: 18 / 32, 3: 20 / 32, 32: 2.0}


def parse_parameters(text: str | None) -> dict[str, Any]:
    """Ollama's ``parameters`` text ("num_ctx    8192" per line) as a dict; repeated keys -> list."""
    out: dict[str, Any] = {}
    for line in (text or "").splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            continue
        key, raw = parts
        value: Any = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        else:
            for conv in (int, float):
                try:
                    value = conv(value)
                    break
                except ValueError:
                    pass
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[key] = value
    return out


def projector_bytes(info: dict[str, Any] | None) -> int:
    """Size of a separate projector blob from its metadata (parameter count x bytes per param)."""
    if not info:
        return 0
    count = info.get("general.parameter_count")
    if not isinstance(count, (int, float)) or count <= 0:
        return 0
    file_type = info.get("general.file_type", 1)
    per = _PROJECTOR_BYTES_PER_PARAM.get(int(file_type) if isinstance(file_type, (int, float)) else 1, 2.0)
    return int(count * per)


def description_from_show(show: dict[str, Any], name: str | None = None) -> ModelDescription:
    """Describe a model from its /api/show JSON; raises ValueError when it has no model_info."""
    info = show.get("model_info")
    if not isinstance(info, dict) or "general.architecture" not in info:
        raise ValueError("the /api/show response has no model_info.general.architecture")
    tensors = tuple(
        Tensor(str(t["name"]), str(t["type"]), tuple(int(d) for d in t.get("shape") or ()))
        for t in show.get("tensors") or ()
    )
    if not tensors:
        raise ValueError("the /api/show response has no tensors list (Ollama older than 0.6.4?)")
    return describe(
        info,
        tensors,
        parameters=parse_parameters(show.get("parameters")),
        name=name,
        projector_bytes=projector_bytes(show.get("projector_info")),
        projector_metadata=show.get("projector_info") if isinstance(show.get("projector_info"), dict) else None,
    )
