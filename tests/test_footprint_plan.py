"""``vramgate plan``: from a saved /api/show, a GGUF file, or the configured Ollama (the emulator)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from proxy.cli import main
from tests.oracle.models import build

DATA = Path(__file__).parent / "data"
LLAMA = DATA / "show-llama3.1-8b-q4_K_M.json"
GEMMA = DATA / "show-gemma3-12b-q4_K_M.json"
REQUIRED = {"weights_bytes", "gpu_weights_bytes", "host_weights_bytes", "kv_bytes", "compute_bytes",
            "gpu_total_bytes", "layers", "num_ctx"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("OLLAMA_NUM_PARALLEL", "OLLAMA_KV_CACHE_TYPE", "OLLAMA_FLASH_ATTENTION", "OLLAMA_CONTEXT_LENGTH",
                "VRAMGATE_CONFIG", "VRAMGATE_UPSTREAM"):
        monkeypatch.delenv(var, raising=False)


def plan_json(capsys, *args: str, rc: int = 0) -> dict:
    assert main(["plan", *args, "--json"]) == rc
    return json.loads(capsys.readouterr().out)


def test_json_from_saved_show(capsys):
    out = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "8192")
    assert REQUIRED <= out.keys()
    assert all(isinstance(out[k], int) for k in REQUIRED)
    assert out["layers"] == 33
    assert out["num_ctx"] == 8192
    assert out["kv_bytes"] == 32 * 8192 * 4096  # f16 K+V, 8 KV heads x 128
    assert "max_num_ctx" not in out


def test_modelfile_num_ctx_is_the_default_and_is_reported(capsys):
    out = plan_json(capsys, "--show", str(LLAMA))
    assert out["num_ctx"] == 8192
    assert any("Modelfile" in a for a in out["assumed"])


def test_options_change_the_estimate(capsys):
    base = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "16384")
    q8 = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "16384", "--kv-cache-type", "q8_0")
    par = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "16384", "--parallel", "2")
    nofa = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "16384", "--flash-attention", "off", "--num-batch", "512")
    nofa_default = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "16384", "--flash-attention", "off")
    fa512 = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "16384", "--num-batch", "512")
    big = plan_json(capsys, "--show", str(LLAMA), "--num-ctx", "16384", "--num-batch", "2048")
    assert q8["kv_bytes"] == base["kv_bytes"] * 34 // 64
    assert par["kv_bytes"] == 2 * base["kv_bytes"]
    # Ollama >= 0.30 picks batch 1024 at 16k with flash attention; without it, 256 above 4k on a GPU
    # of 8 GiB or less (no --vram: the size is unknown, taken as small)
    assert base["run"]["num_batch"] == 1024 and nofa_default["run"]["num_batch"] == 256
    assert nofa["compute_bytes"] > 4 * fa512["compute_bytes"]
    assert big["compute_bytes"] > 3 * fa512["compute_bytes"]


def test_vram_gives_the_largest_context(capsys):
    out = plan_json(capsys, "--show", str(LLAMA), "--vram", "8GiB", "--overhead", "0")
    assert out["budget_bytes"] == 8 * 1024**3
    assert out["max_num_ctx"] % 256 == 0 and 8192 < out["max_num_ctx"] < 131072
    tiny = plan_json(capsys, "--show", str(LLAMA), "--vram", "2GiB", rc=3)  # exit 3: does not fit
    assert tiny["max_num_ctx"] is None and tiny["fits"] is False


def test_human_output_is_a_small_table(capsys):
    assert main(["plan", "--show", str(GEMMA), "--vram", "24GiB"]) == 0
    text = capsys.readouterr().out
    for label in ("weights on GPU", "KV cache", "compute buffer", "projector", "total on GPU",
                  "in host RAM", "GPU memory", "largest num_ctx", "decode speed", "assumed:"):
        assert label in text
    # gemma3's 1024-token window plus one micro-batch (1024: Ollama's choice at its 32k default)
    assert "window layers 2048 cells" in text
    assert len(text.splitlines()) < 16


def test_gguf_file(capsys):
    _, path = build("llama", "small")
    out = plan_json(capsys, "--gguf", str(path), "--num-ctx", "2048")
    assert REQUIRED <= out.keys() and out["architecture"] == "llama"
    assert out["layers"] == 4  # the small oracle llama: 3 blocks + the output layer


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gguf", "/nonexistent/model.gguf"], "no such GGUF file"),
        (["--show", "/nonexistent/show.json"], "no such file"),
        ([], "give a model name"),
        (["--show", str(LLAMA), "--vram", "lots"], "not a size"),
        (["--show", str(LLAMA), "--flash-attention", "off", "--kv-cache-type", "q8_0"], "needs flash attention"),
    ],
)
def test_errors_are_one_line_on_stderr(capsys, args, message):
    assert main(["plan", *args]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_not_a_gguf_file(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a model")
    assert main(["plan", "--gguf", str(bad)]) == 1
    assert "cannot read GGUF file" in capsys.readouterr().err


async def test_model_from_the_configured_ollama(emulator, emulator_url, monkeypatch, capsys):
    emulator.add_model("gemma3:12b", show=json.loads(GEMMA.read_text()))
    monkeypatch.setenv("VRAMGATE_UPSTREAM", emulator_url)
    rc = await asyncio.to_thread(main, ["plan", "gemma3:12b", "--json", "--num-ctx", "4096"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["model"] == "gemma3:12b" and out["projector_bytes"] > 0
    shows = emulator.received("/api/show")
    assert shows and shows[-1].json.get("verbose") is True


async def test_unknown_model_is_ollamas_404(emulator_url, monkeypatch, capsys):
    monkeypatch.setenv("VRAMGATE_UPSTREAM", emulator_url)
    rc = await asyncio.to_thread(main, ["plan", "no-such-model"])
    err = capsys.readouterr().err
    assert rc == 1 and "answered 404" in err and "not found" in err


def test_unreachable_upstream_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("VRAMGATE_UPSTREAM", "http://127.0.0.1:9")  # discard port: refused
    assert main(["plan", "llama3"]) == 1
    assert "cannot reach Ollama at http://127.0.0.1:9" in capsys.readouterr().err
