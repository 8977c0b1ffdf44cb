"""scripts/uv finds a uv where the README's commands need one: on PATH, else one it installed before."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _stub(path: Path, says: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {says} \"$@\"\n")
    path.chmod(0o755)


def test_a_uv_on_path_is_used_as_it_is(tmp_path: Path) -> None:
    _stub(tmp_path / "bin" / "uv", "path-uv")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    out = subprocess.run([str(REPO / "scripts" / "uv"), "run", "x"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "path-uv run x"


def test_without_uv_on_path_the_one_it_installed_before_is_used(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _stub(home / ".cache" / "vramgate" / "bin" / "uv", "private-uv")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    if any((Path(d) / "uv").exists() for d in env["PATH"].split(":")):
        pytest.skip("a uv is installed system-wide here, and is rightly found first")
    out = subprocess.run([str(REPO / "scripts" / "uv"), "--version"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "private-uv --version"
