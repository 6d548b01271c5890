"""Shared fixtures: tiny random models of every supported family (see tiny.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny models run fastest and most reproducibly on one, and on
    a busy 2-core machine two threads wait on each other (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
