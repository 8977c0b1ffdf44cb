"""What llama.cpp does differently per architecture, as far as memory is concerned.

Read from the llama.cpp vendored in llama-cpp-python 0.3.36 (``src/llama-model.cpp``
``create_memory``, ``src/models/<arch>.cpp`` ``load_arch_hparams``, ``src/llama-arch.cpp``).
Only what changes a buffer size lives here; everything else is generic.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Architectures whose context has no KV cache at all (``create_memory`` returns nullptr):
#: BERT-style encoders and diffusion models.
NO_MEMORY = frozenset(
    {
        "bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert",
        "eurobert", "wavtokenizer-dec", "modern-bert", "gemma-embedding", "dream", "llada",
        "llada-moe", "rnd1",
    }
)

#: Architecture names Ollama's own converter writes for models llama.cpp knows under another name.
ALIASES = {"gptoss": "gpt-oss"}

#: Purely recurrent architectures (``llm_arch_is_recurrent``): one state per sequence per layer.
RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})

#: Hybrid architectures (``llm_arch_is_hybrid``) whose layer split we read from the tensors.
HYBRID = frozenset(
    {
        "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
        "nemotron_h_moe", "qwen3next", "qwen35", "qwen35moe",
    }
)

#: Hybrids not modelled (own state layouts: KDA, lightning attention, sparse indexers, ...).
UNMODELLED = frozenset(
    {
        "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen4exp", "deepseek4",
        "minimax-01", "minimax-m3", "glm-dsa", "deepseek32", "hy_v4", "gemma3n", "gemma4",
        "gemma4-assistant", "t5", "t5encoder", "clip",
    }
)


#: Architectures whose MTP/NextN blocks (the last ``nextn_predict_layers`` blk.*) llama.cpp skips
#: unless speculative MTP decoding is requested (TENSOR_SKIP; Ollama does not request it).
MTP_SKIPPED = frozenset(
    {"deepseek2", "deepseek32", "deepseek4", "glm4moe", "glm-dsa", "glm5-next", "step35",
     "bailingmoe3", "cohere2moe", "hy_v3", "mimo2", "qwen3next", "qwen35", "qwen35moe",
     "nemotron_h", "nemotron_h_moe"}
)


@dataclass(frozen=True)
class SwaRule:
    """How an architecture marks sliding-window layers when the GGUF has no per-layer array."""

    pattern: int  # llama_hparams::set_swa_pattern: layer il is SWA iff il % pattern < pattern - 1
    default_window: int = 0  # used when the GGUF has no sliding_window key
    needs_window_key: bool = False  # SWA only when <arch>.attention.sliding_window > 0
    dense_first: bool = False


SWA_RULES: dict[str, SwaRule] = {
    "gemma2": SwaRule(pattern=2, default_window=4096),
    "gemma3": SwaRule(pattern=6, needs_window_key=True),
    "cohere2": SwaRule(pattern=4),
    "gpt-oss": SwaRule(pattern=2),
    "llama4": SwaRule(pattern=4, default_window=8192),  # chunked attention; sized like SWA
}


def swa_layers(arch: str, n_layer: int, pattern: int, dense_first: bool = False) -> tuple[bool, ...]:
    """llama_hparams::set_swa_pattern."""
    if dense_first:
        return tuple(pattern == 0 or il % pattern != 0 for il in range(n_layer))
    return tuple(pattern == 0 or il % pattern < pattern - 1 for il in range(n_layer))


def is_known(arch: str) -> bool:
    """Architectures whose memory layout this package models (the rest get a conservative bound)."""
    return arch not in UNMODELLED and arch in KNOWN


#: Architectures whose memory is the generic attention KV (plus the rules above). Listed
#: explicitly so that a new architecture is reported as unknown instead of silently guessed.
KNOWN = frozenset(
    {
        "llama", "llama-embed", "deci", "falcon", "grok", "gpt2", "gptj", "gptneox", "mpt",
        "baichuan", "starcoder", "refact", "bloom", "stablelm", "qwen", "qwen2", "qwen2moe",
        "qwen2vl", "qwen3", "qwen3moe", "qwen3vl", "qwen3vlmoe", "phi2", "phi3", "phimoe",
        "plamo", "codeshell", "orion", "internlm2", "minicpm", "minicpm3", "gemma", "gemma2",
        "gemma3", "starcoder2", "xverse", "command-r", "cohere2", "dbrx", "olmo", "olmo2",
        "olmoe", "openelm", "arctic", "deepseek", "deepseek2", "chatglm", "glm4", "glm4moe",
        "bitnet", "jais", "nemotron", "exaone", "granite", "granitemoe", "chameleon", "plm",
        "bailingmoe", "bailingmoe2", "dots1", "arcee", "ernie4_5", "ernie4_5-moe",
        "hunyuan-moe", "hunyuan-dense", "smollm3", "gpt-oss", "seed_oss", "grovemoe",
        "apertus", "minimax-m2", "mistral3", "llama4", "pangu-embedded", "mellum", "nanbeige",
    }
    | NO_MEMORY
    | RECURRENT
    | HYBRID
)
