"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` (the original MNIST and Fashion-MNIST files); skip if absent."""
    if not (SHARED_DATASETS / "mnist").is_dir():
        pytest.skip(f"the shared datasets folder {SHARED_DATASETS} is not here")
    return SHARED_DATASETS
