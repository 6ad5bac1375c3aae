"""Fixtures for the sweep tests: a working directory with an empty, real MLflow store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema created once (the migration takes seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_mlflow_db: Path
) -> Iterator[Path]:
    """The working directory of a sweep: mlflow.db (empty), then mlartifacts/ and .rtlab/."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RTLAB_DATA_DIR", str(tmp_path / "data"))
    shutil.copy(migrated_mlflow_db, tmp_path / "mlflow.db")
    before = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(before)  # a worker sets the process's thread count
