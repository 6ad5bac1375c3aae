"""Fixtures for the CLI tests: a fresh working directory, with or without an empty MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture
def workdir(workdir: Path) -> Path:
    """The shared fresh working directory, with torch on one thread (as each sweep worker)."""
    torch.set_num_threads(1)
    return workdir


@pytest.fixture
def store_workdir(workdir: Path, migrated_mlflow_db: Path) -> Path:
    """A working directory whose default MLflow store exists already (empty, real)."""
    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    return workdir
