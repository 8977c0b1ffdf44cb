"""What the footprint oracle needs to know about a model: plain, frozen data, no I/O.

Both readers (``show.py`` for Ollama's ``/api/show`` JSON, ``gguf_file.py`` for a GGUF file) build
this same description through ``describe.py``, so an estimate never depends on where the model
was read from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.footprint.ggml_types import tensor_bytes
from proxy.footprint.vision import VisionEncoder

_BLOCK = re.compile(r"^blk\.(\d+)\.")

#: Tensors of llama.cpp's input layer (LLM_TENSOR_LAYER_INPUT): always kept in host memory.
INPUT_TENSORS = frozenset(
    {
        "token_embd.weight",
        "token_embd.bias",
        "position_embd.weight",
        "token_types.weight",
        "per_layer_token_embd.weight",
    }
)
#: Prefixes of vision/audio projector tensors stored inside the main GGUF.
PROJECTOR_PREFIXES = ("v.", "mm.", "a.", "mmproj.")


@dataclass(frozen=True)
class Tensor:
    name: str
    ggml_type: str
    shape: tuple[int, ...]  # GGUF order, innermost dimension first

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.ggml_type, self.shape)

    @property
    def block(self) -> int | None:
        """Index of the repeating layer (``blk.N.``) this tensor belongs to, else None."""
        m = _BLOCK.match(self.name)
        return int(m.group(1)) if m else None

    @property
    def is_projector(self) -> bool:
        return self.name.startswith(PROJECTOR_PREFIXES)

    @property
    def is_input(self) -> bool:
        return self.name in INPUT_TENSORS

    @property
    def is_expert(self) -> bool:
        """A routed-expert tensor (``ffn_{up,down,gate,gate_up}_exps``): MoE reads k of E per token."""
        return "_exps" in self.name and ".ffn_" in self.name and "shexp" not in self.name


@dataclass(frozen=True)
class ModelDescription:
    """The hyper-parameters llama.cpp sizes its buffers from, per layer where they vary.

    Per-layer tuples have ``block_count`` entries. ``attention_layers`` marks the layers that get an
    attention KV cache (false for recurrent layers, MTP/NextN layers, BERT-style encoders, ...);
    ``recurrent_layers`` the layers that get a recurrent state of ``recurrent_r + recurrent_s``
    f32 values per sequence.
    """

    architecture: str
    block_count: int
    context_length: int  # trained context (n_ctx_train)
    embedding_length: int
    vocab_size: int
    head_count: tuple[int, ...]
    head_count_kv: tuple[int, ...]
    key_length: int  # per head, full-attention layers
    value_length: int
    tensors: tuple[Tensor, ...]
    feed_forward_length: int = 0
    key_length_swa: int = 0  # 0 = same as key_length
    value_length_swa: int = 0
    sliding_window: int = 0
    swa_layers: tuple[bool, ...] = ()
    attention_layers: tuple[bool, ...] = ()
    recurrent_layers: tuple[bool, ...] = ()
    recurrent_r: int = 0  # f32 values per sequence per recurrent layer (conv / token-shift state)
    recurrent_s: int = 0  # f32 values per sequence per recurrent layer (SSM / wkv state)
    expert_count: int = 0
    expert_used_count: int = 0
    mla: bool = False  # K-only latent cache (deepseek2 family, V-less since llama.cpp #19067)
    kv_lora_rank: int = 0
    key_length_mla: int = 0
    value_length_mla: int = 0
    ssm_conv_kernel: int = 0
    ssm_inner_size: int = 0
    ssm_state_size: int = 0
    ssm_group_count: int = 0
    ssm_time_step_rank: int = 0
    nextn_layers: int = 0  # MTP heads at the end of blk.*, not attended by the trunk
    is_embedding: bool = False  # embedding/reranker model (pooling_type set, or non-causal)
    causal: bool = True
    known_architecture: bool = True
    projector_bytes: int = 0  # a separate projector blob (Ollama projector_info); inline ones are tensors
    vision: VisionEncoder | None = None  # the projector's vision encoder (its compute buffer: vision.py)
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    name: str | None = None
    file_type: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def layers(self) -> int:
        """Layers Ollama counts for ``num_gpu``: every ``blk.N`` plus the output layer."""
        return self.block_count + 1

    @property
    def head_count_max(self) -> int:
        return max(self.head_count, default=0)

    def __hash__(self) -> int:
        # Cheap and stable: estimates are cached per description, and hashing a 1000-tensor tuple
        # on every lookup would cost more than the estimate. Equality still compares every field.
        try:
            return self.__dict__["_hash"]
        except KeyError:
            h = hash(
                (self.architecture, self.name, self.block_count, self.embedding_length,
                 self.vocab_size, len(self.tensors), self.tensors[0] if self.tensors else None)
            )
            object.__setattr__(self, "_hash", h)
            return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ModelDescription):
            return NotImplemented
        return all(
            getattr(self, f) == getattr(other, f) for f in self.__dataclass_fields__
        )
