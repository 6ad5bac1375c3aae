"""Store URLs as people see them: no password, and no absolute path in a committed report."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtlab.urls import public_store_uri, redact_url


@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql+psycopg://rtlab:s3cret@127.0.0.1:5432/db",
     "postgresql+psycopg://rtlab:***@127.0.0.1:5432/db"),
    ("http://me:p%40ss@server.lan:5000", "http://me:***@server.lan:5000"),
    ("failed at postgresql://a:b@h/db: refused", "failed at postgresql://a:***@h/db: refused"),
    ("sqlite:////tmp/x/optuna.db", "sqlite:////tmp/x/optuna.db"),
    ("http://server.lan:5000/#/experiments/1", "http://server.lan:5000/#/experiments/1"),
    ("postgresql+psycopg://rtlab@127.0.0.1/db", "postgresql+psycopg://rtlab@127.0.0.1/db"),
])
def test_redact_url_hides_only_the_password(text: str, shown: str) -> None:
    assert redact_url(text) == shown


def test_public_store_uri_names_local_files_without_absolute_paths(tmp_path: Path) -> None:
    inside = f"sqlite:///{tmp_path / 'lab' / 'mlflow.db'}"
    assert public_store_uri(inside, here=tmp_path) == "sqlite:///lab/mlflow.db"
    assert public_store_uri(inside, here=tmp_path / "elsewhere") == "sqlite:///mlflow.db"
    assert public_store_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert public_store_uri("http://u:pw@h:5000") == "http://u:***@h:5000"
