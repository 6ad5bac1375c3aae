"""Fixtures for the track tests: a working directory, and a real MLflow SQLite store in it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema created once (the migration takes seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def store(workdir: Path, migrated_mlflow_db: Path) -> str:
    """The URI of an empty, real store in the working directory."""
    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    return f"sqlite:///{workdir / 'mlflow.db'}"
