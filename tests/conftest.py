"""Shared fixtures: tiny random models of every supported family (see tiny.py)."""

from __future__ import annotations

import os

# Tests never reach a model hub (none is reachable here); set before transformers loads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tiny import FAMILIES, VOCAB, tiny_model


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def model(family: str) -> torch.nn.Module:
    return tiny_model(family)


@pytest.fixture
def input_ids() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 7))
