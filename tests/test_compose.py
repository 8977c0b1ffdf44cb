"""The compose file wires Ollama (GPU, models volume, unpublished) behind vramgate (published 11434).

No Docker engine runs here, so the wiring is checked by reading the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.addresses import parse_listen, parse_ollama_host

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict[str, Any]) -> list[str]:
    out = []
    for port in service.get("ports") or []:
        out.append(str(port["published"]) + ":" + str(port["target"]) if isinstance(port, dict) else str(port))
    return out


def test_ollama_has_the_gpu_and_a_models_volume_and_is_not_published(compose: dict[str, Any]) -> None:
    ollama = compose["services"]["ollama"]
    assert ollama["image"].startswith("ollama/ollama")
    assert not ollama.get("ports"), "Ollama must be reachable only through vramgate"
    assert ollama.get("network_mode") != "host"
    devices = ollama["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    mounts = [str(v) for v in ollama["volumes"]]
    assert any(m.split(":")[0] in compose["volumes"] and m.split(":")[1] == "/root/.ollama" for m in mounts)
    assert _env(ollama)["OLLAMA_HOST"].endswith(":11434")


def test_vramgate_is_published_on_11434_and_points_at_ollama(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gate = services["vramgate"]
    assert gate["build"]["dockerfile"] == "Dockerfile" and (REPO / gate["build"]["context"] / "Dockerfile").is_file()
    assert _published(gate) == ["11434:11434"]
    env = _env(gate)
    upstream = parse_ollama_host(env["VRAMGATE_UPSTREAM"])
    assert upstream == "http://ollama:11434"
    host = upstream.removeprefix("http://").split(":")[0]
    assert host in services  # the upstream is the compose service, on the port Ollama listens on
    assert parse_listen(env["VRAMGATE_LISTEN"]) == ("0.0.0.0", 11434)
    assert "ollama" in (gate.get("depends_on") or [])
    # vramgate reads free GPU memory through NVML, so it must see the same GPUs
    devices = gate["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d.get("count") == "all" for d in devices)
    # both read the same server settings
    for name, value in _env(services["ollama"]).items():
        if name.startswith("OLLAMA_") and name != "OLLAMA_HOST":
            assert env.get(name) == value, name


def test_dockerfile_runs_the_console_script_on_the_published_port() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "uv sync --frozen --no-dev" in text
    assert 'ENTRYPOINT ["vramgate"]' in text and "EXPOSE 11434" in text
    assert "VRAMGATE_LISTEN=0.0.0.0:11434" in text


def test_vramgate_waits_for_a_healthy_ollama_and_reports_its_own_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gate, ollama = services["vramgate"], services["ollama"]
    assert gate["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    assert ollama["healthcheck"]["test"][0] == "CMD"
    check = " ".join(gate["healthcheck"]["test"])
    port = parse_listen(_env(gate)["VRAMGATE_LISTEN"])[1]
    assert f"http://127.0.0.1:{port}/vramgate/health" in check
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile and f"127.0.0.1:{port}/vramgate/health" in dockerfile


def test_the_ollama_image_is_pinned_to_a_version_the_sizing_rules_know(compose: dict[str, Any]) -> None:
    from proxy.ollama.versions import UNKNOWN_VERSION, parse_version

    image = compose["services"]["ollama"]["image"]
    tag = image.partition(":")[2]
    assert tag and tag != "latest", "pin Ollama: its memory logic changes between versions"
    version = parse_version(tag)
    assert version != UNKNOWN_VERSION and version >= (0, 30, 0)  # the llama-server era the rules model


def test_what_vramgate_learns_survives_a_restart_of_its_container(compose: dict[str, Any]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    state = next(line.split("=", 1)[1].strip() for line in dockerfile.splitlines()
                 if "VRAMGATE_STATE_DIR=" in line)
    assert f"chown nobody {state}" in dockerfile  # the image runs as nobody, who must write there
    mounts = [str(v) for v in compose["services"]["vramgate"]["volumes"]]
    assert any(m.split(":")[0] in compose["volumes"] and m.split(":")[1] == state for m in mounts)
