"""Pytest fixtures for the oracle suite; import them into a test module to use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from .build import Oracle, ensure_oracle, ensure_vision_probe


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    """llama.cpp built into the cache; the first session on a fresh machine builds it (minutes)."""
    return ensure_oracle()


@pytest.fixture(scope="session")
def vision_probe(oracle: Oracle) -> Path:
    """The vision probe (clip from tools/mtmd), built once after llama.cpp (about a minute)."""
    return ensure_vision_probe()
