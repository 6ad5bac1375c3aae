"""Fixtures for the sweep tests: a working directory with an empty, real MLflow store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def store_workdir(workdir: Path, migrated_mlflow_db: Path) -> Iterator[Path]:
    """The working directory of a sweep: mlflow.db (empty), then mlartifacts/ and .rtlab/."""
    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    before = torch.get_num_threads()
    yield workdir
    torch.set_num_threads(before)  # a worker sets the process's thread count
