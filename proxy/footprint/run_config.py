"""How a model is run: the knobs that change how much memory llama.cpp allocates."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.footprint.ggml_types import KV_CACHE_TYPES
from proxy.footprint.rules import NEWEST, RuleSet


@dataclass(frozen=True)
class RunConfig:
    """One load as Ollama (>= 0.30) starts llama-server for it.

    Ollama launches ``llama-server -c num_ctx*parallel -np parallel -b num_batch -ub num_batch``,
    so the KV cache is not unified: every sequence gets its own ``pad(num_ctx, 256)`` cells.
    ``num_ctx`` is per sequence, before capping to the trained context.

    ``logits_rows``: how many rows of logits the compute graph is reserved for. ``None`` means
    what llama-server does (one output per sequence, ``n_outputs_max = parallel``; embedding
    models: ``num_batch``); ``llama-fit-params`` and the library default reserve ``num_batch``.

    ``rules``: the llama.cpp generation whose allocation rules apply (``proxy.footprint.rules``;
    the newest by default, what the oracle suite measures).
    """

    num_ctx: int
    parallel: int = 1
    kv_type_k: str = "f16"
    kv_type_v: str = "f16"
    flash_attention: bool = True
    num_batch: int = 512
    num_ubatch: int = 512
    logits_rows: int | None = None
    swa_full: bool = False  # llama-server default: SWA layers keep only the window
    rules: RuleSet = NEWEST

    def __post_init__(self) -> None:
        if self.num_ctx < 1:
            raise ValueError(f"num_ctx must be >= 1, got {self.num_ctx}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")
        if self.num_batch < 1 or self.num_ubatch < 1:
            raise ValueError("num_batch and num_ubatch must be >= 1")
        for t in (self.kv_type_k, self.kv_type_v):
            if t.lower() not in KV_CACHE_TYPES:
                raise ValueError(f"unsupported KV cache type {t!r} (one of {', '.join(KV_CACHE_TYPES)})")
