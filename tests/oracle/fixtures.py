"""Pytest fixtures for the oracle suite; import them into a test module to use them."""

from __future__ import annotations

import pytest

from .build import Oracle, ensure_oracle


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    """llama.cpp built into the cache; the first session on a fresh machine builds it (minutes)."""
    return ensure_oracle()
