"""The footprint oracle: llama.cpp's memory for a model and a run, from metadata alone."""

from proxy.footprint.estimate import Footprint, estimate, max_num_ctx, min_budget
from proxy.footprint.ggml_types import GGML_TYPES, tensor_bytes
from proxy.footprint.gguf_file import description_from_gguf
from proxy.footprint.model import ModelDescription, Tensor
from proxy.footprint.roofline import decode_tokens_per_s
from proxy.footprint.run_config import RunConfig
from proxy.footprint.show import description_from_show

__all__ = [
    "GGML_TYPES",
    "Footprint",
    "ModelDescription",
    "RunConfig",
    "Tensor",
    "decode_tokens_per_s",
    "description_from_gguf",
    "description_from_show",
    "estimate",
    "max_num_ctx",
    "min_budget",
    "tensor_bytes",
]
