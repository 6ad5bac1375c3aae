"""A real PostgreSQL cluster on 127.0.0.1 for the many-machine tests, started once per session
under a temp dir (`.ci/run` installs Debian's postgresql when missing) and stopped at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.postgres import PostgresServer, postgres_bindir, start_postgres


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg", reason="the cluster extra is not installed")
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    root = tmp_path_factory.mktemp("postgres")
    for folder in (root, *root.parents):  # the server user must reach its data directory
        if folder == Path(folder.anchor):
            break
        os.chmod(folder, os.stat(folder).st_mode | 0o011)
    server = start_postgres(root / "cluster")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database per test, so studies of different tests never meet."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    postgres.create_database(name)
    return postgres.url(database=name)
