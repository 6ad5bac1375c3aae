"""Fixtures for the CLI tests: a fresh working directory, with or without an empty MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: `rtlab run` puts mlflow.db, mlartifacts/, .rtlab/ here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RTLAB_DATA_DIR", str(tmp_path / "data"))
    torch.set_num_threads(1)
    return tmp_path


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema created once (the migration takes seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_workdir(workdir: Path, migrated_mlflow_db: Path) -> Path:
    """A working directory whose default MLflow store exists already (empty, real)."""
    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    return workdir
