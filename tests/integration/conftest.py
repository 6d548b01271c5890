"""Embedded real models, loaded once per session from the sublens cache (`sublens fetch`)."""

from __future__ import annotations

import pytest

from sublens.models import LoadedModel, load_model


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def gemma3() -> LoadedModel:
    return load_model("gemma3-270m", device="cpu")
