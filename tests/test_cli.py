"""The command line itself: --version, --help, and warnings that do not stop start-up."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import proxy
from proxy import cli
from proxy.edge import server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("VRAMGATE_", "OLLAMA_")):
            monkeypatch.delenv(name)


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"vramgate {metadata.version('vramgate')}\n"


def test_version_falls_back_to_the_source_tree(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    monkeypatch.setattr(proxy, "__version__", "9.9.9")
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == "vramgate 9.9.9\n"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "commands:" in out and "--version" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["serve", "run", "the", "proxy", "in", "front", "of", "Ollama", "(the", "default)"] in lines
    assert any(words[:1] == ["plan"] and "fits" in words for words in lines)


def test_unknown_variables_warn_and_start_up_continues(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    started: list[Any] = []
    monkeypatch.setattr(server, "run", lambda settings: started.append(settings) or 0)
    config = tmp_path / "x.toml"
    config.write_text('listen = "127.0.0.1:9"\n')
    monkeypatch.setenv("VRAMGATE_CONFIG", str(config))  # known: no warning
    monkeypatch.setenv("VRAMGATE_UPSTRAEM", "ollama:1")
    assert cli.main([]) == 0
    assert capsys.readouterr().err == (
        "vramgate: warning: unknown environment variable VRAMGATE_UPSTRAEM is ignored; did you mean VRAMGATE_UPSTREAM?\n")
    assert started[0].listen == "127.0.0.1:9" and started[0].upstream == "http://127.0.0.1:11434"


def test_plan_upstream_is_checked_like_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "llama3", "--upstream", "ftp://ollama"]) == 2
    err = capsys.readouterr().err
    assert err == "vramgate: invalid setting --upstream: unsupported scheme 'ftp' in 'ftp://ollama' (use http or https)\n"
