"""Shared fixtures: one sdist download per session, one prepared data dir for read-only tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rtlab.data import load_dataset


@pytest.fixture(scope="session", autouse=True)
def sdist_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Downloaded sdists are shared by the session (RTLAB_SDIST_CACHE); prepared data never is."""
    torch.set_num_threads(1)
    existing = os.environ.get("RTLAB_SDIST_CACHE")
    path = Path(existing) if existing else tmp_path_factory.mktemp("sdists")
    os.environ["RTLAB_SDIST_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory, sdist_cache: Path) -> Path:
    """A data dir prepared once per session for tests that only read datasets."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def shakespeare_char_tiny(shared_data_dir: Path):
    return load_dataset("shakespeare_char", {"size": "tiny"}, shared_data_dir)


@pytest.fixture(scope="session")
def shakespeare_bpe_tiny(shared_data_dir: Path):
    return load_dataset("shakespeare", {"size": "tiny"}, shared_data_dir)
