"""GGML type sizes: the table must match ggml's block layouts (ggml-common.h static asserts)."""

import pytest
from gguf.constants import GGMLQuantizationType

from proxy.footprint.ggml_types import GGML_TYPES, row_bytes, tensor_bytes, type_size

# (elements per block, bytes per block) from ggml's block structs
GGML_LAYOUTS = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20),
    "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34), "Q8_1": (32, 36), "Q2_K": (256, 84),
    "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
    "Q8_K": (256, 292), "IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98),
    "IQ1_S": (256, 50), "IQ4_NL": (32, 18), "IQ3_S": (256, 110), "IQ2_S": (256, 82),
    "IQ4_XS": (256, 136), "IQ1_M": (256, 56), "TQ1_0": (256, 54), "TQ2_0": (256, 66),
    "MXFP4": (32, 17), "I8": (1, 1), "I16": (1, 2), "I32": (1, 4), "I64": (1, 8), "F64": (1, 8),
}


@pytest.mark.parametrize("name,layout", sorted(GGML_LAYOUTS.items()))
def test_block_layouts(name, layout):
    assert GGML_TYPES[name] == layout


def test_every_gguf_type_is_known():
    for t in GGMLQuantizationType:
        assert t.name in GGML_TYPES, t.name


@pytest.mark.parametrize(
    "type_name,shape,expected",
    [
        ("Q4_K", (4096, 14336), 4096 // 256 * 144 * 14336),  # 33 030 144
        ("Q6_K", (4096, 128256), 4096 // 256 * 210 * 128256),
        ("F32", (4096,), 16384),
        ("BF16", (2880, 201088), 2880 * 201088 * 2),
        ("MXFP4", (2880, 2880, 32), 2880 // 32 * 17 * 2880 * 32),
        ("Q8_0", (128, 512, 16), 128 // 32 * 34 * 512 * 16),
        ("IQ2_XXS", (7168, 2048, 256), 7168 // 256 * 66 * 2048 * 256),
    ],
)
def test_tensor_bytes(type_name, shape, expected):
    assert tensor_bytes(type_name, shape) == expected


def test_kv_row_sizes_are_the_real_ones():
    # q8_0 is 1.0625 bytes per element and q4_0 0.5625, not Ollama's old 1.0 and 0.5
    assert row_bytes("q8_0", 1024) == 1088
    assert row_bytes("q4_0", 1024) == 576
    assert row_bytes("iq4_nl", 1024) == 576
    assert row_bytes("f16", 1024) == 2048


def test_unknown_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ggml type"):
        type_size("Q3_X")
