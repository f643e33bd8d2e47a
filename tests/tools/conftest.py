"""Shared fixtures: one tiny model, pretrained just enough to use its context (~5 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.zoo import build_tiny_model, synthetic_corpus


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("zoo") / "tiny"
    return build_tiny_model(
        "tiny", synthetic_corpus(2000, seed=0), out_dir, steps=100, batch_size=32
    )
