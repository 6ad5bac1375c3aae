"""Fixtures for the track tests: a working directory, and a real MLflow SQLite store in it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def store(workdir: Path, migrated_mlflow_db: Path) -> str:
    """The URI of an empty, real store in the working directory."""
    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    return f"sqlite:///{workdir / 'mlflow.db'}"
