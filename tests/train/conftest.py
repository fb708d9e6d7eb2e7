"""Fixtures shared by the training tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def data_dir(shared_datasets: Path) -> str:
    """The folder with the original MNIST files (conftest skips the test without it)."""
    return str(shared_datasets)
