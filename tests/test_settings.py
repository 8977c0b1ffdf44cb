"""Settings from the environment, the TOML file and OLLAMA_*; bad values stop start-up with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from proxy import cli
from proxy.config.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "vramgate.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("VRAMGATE_", "OLLAMA_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.upstream == "http://127.0.0.1:11434"
    assert settings.listen == "127.0.0.1:11435" and settings.listen_address == ("127.0.0.1", 11435)
    assert settings.connect_timeout == 5.0 and settings.read_timeout == 0.0


@pytest.mark.parametrize("value,expected", [
    ("ollama", "http://ollama:11434"),
    ("ollama:8080", "http://ollama:8080"),
    (":11435", "http://127.0.0.1:11435"),
    ("0.0.0.0", "http://0.0.0.0:11434"),
    ("http://gpu-box", "http://gpu-box:80"),
    ("https://gpu-box", "https://gpu-box:443"),
    ("https://gpu-box:8443/ollama/", "https://gpu-box:8443/ollama"),
    ("[::1]:11434", "http://[::1]:11434"),
    ("  http://ollama:11434  ", "http://ollama:11434"),
])
def test_upstream_accepts_ollama_host_forms(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("VRAMGATE_UPSTREAM", value)
    assert load_settings().upstream == expected


def test_toml_file_overlaid_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "vg.toml"
    config.write_text('upstream = "ollama:11434"\nlisten = "0.0.0.0:11434"\nread_timeout = 600\n')
    from_file = load_settings(config)
    assert (from_file.upstream, from_file.listen, from_file.read_timeout) == ("http://ollama:11434", "0.0.0.0:11434", 600)
    monkeypatch.setenv("VRAMGATE_LISTEN", "127.0.0.1:9999")
    monkeypatch.setenv("VRAMGATE_CONFIG", str(config))
    both = load_settings()
    assert both.listen == "127.0.0.1:9999" and both.upstream == "http://ollama:11434"


def test_ollama_server_variables_are_read_and_vramgate_ones_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "4")
    monkeypatch.setenv("OLLAMA_KV_CACHE_TYPE", "Q8_0")
    monkeypatch.setenv("OLLAMA_FLASH_ATTENTION", "1")
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "8192")
    settings = load_settings()
    assert (settings.num_parallel, settings.kv_cache_type, settings.flash_attention, settings.context_length) == (
        4, "q8_0", "on", 8192)
    monkeypatch.setenv("VRAMGATE_NUM_PARALLEL", "2")
    assert load_settings().num_parallel == 2


def test_example_config_documents_every_setting_with_its_default() -> None:
    text = EXAMPLE.read_text()
    keys = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.MULTILINE))
    assert keys == set(Settings.model_fields), "config/vramgate.toml must hold exactly the settings"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^#? ?[a-z_]+ = ", line):
            assert lines[i - 1].startswith("# "), f"no comment line above {line!r}"
    from_example = load_settings(EXAMPLE)
    assert from_example == load_settings()  # the example holds the defaults
    assert set(tomllib.loads(text)) == set(Settings.model_fields) - {"audit_file"}


def test_the_console_script_and_module_share_main() -> None:
    import tomllib as _toml

    scripts = _toml.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vramgate": "proxy.cli:main"}
    assert "from proxy.cli import main" in (REPO / "proxy" / "__main__.py").read_text()


@pytest.mark.parametrize("env,args,expected", [
    ({"VRAMGATE_UPSTREAM": "ftp://ollama"}, [], "invalid setting VRAMGATE_UPSTREAM: unsupported scheme 'ftp'"),
    ({}, ["--upstream", "ollama:99999"], "invalid setting VRAMGATE_UPSTREAM: invalid port '99999'"),
    ({"VRAMGATE_CONNECT_TIMEOUT": "-1"}, [], "invalid setting VRAMGATE_CONNECT_TIMEOUT"),
    ({"VRAMGATE_LOG_FORMAT": "xml"}, [], "invalid setting VRAMGATE_LOG_FORMAT"),
    ({"VRAMGATE_LISTEN": "nowhere"}, [], "invalid setting VRAMGATE_LISTEN: expected host:port"),
    ({"VRAMGATE_CONFIG": "/no/such/file.toml"}, [], "config file /no/such/file.toml does not exist"),
])
def test_invalid_settings_print_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict[str, str], args: list[str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("vramgate: ")
    assert expected in captured.err


def test_bad_toml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("upstream = \n")
    assert cli.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read settings" in err


def test_python_m_proxy_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRAMGATE_", "OLLAMA_"))}
    env["VRAMGATE_READ_TIMEOUT"] = "soon"
    done = subprocess.run([sys.executable, "-m", "proxy"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("vramgate: invalid setting VRAMGATE_READ_TIMEOUT")
