"""A real PostgreSQL cluster on 127.0.0.1 for the many-machine tests, started once per session
under a temp dir (`.ci/run` installs Debian's postgresql when missing) and stopped at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.postgres import PostgresServer, postgres_bindir, start_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg", reason="the cluster extra is not installed")
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    # Outside pytest's private (0700) temp folders: the server user must reach its data.
    root = Path(tempfile.mkdtemp(prefix="rtlab-postgres-"))
    os.chmod(root, 0o755)
    server = start_postgres(root / "cluster")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database per test, so studies of different tests never meet."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    postgres.create_database(name)
    return postgres.url(database=name)


@pytest.fixture
def mlflow_server(postgres: PostgresServer, tmp_path: Path) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on its own PostgreSQL database, artifacts over HTTP."""
    postgres.create_database("mlflow_" + tmp_path.name.lower()[-40:].replace("-", "_"))
    backend = postgres.url(database="mlflow_" + tmp_path.name.lower()[-40:].replace("-", "_"))
    server = MlflowServer(backend, tmp_path / "mlflow-artifacts", tmp_path / "mlflow-server.log")
    server.start()
    yield server
    server.stop()
