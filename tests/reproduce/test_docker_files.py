"""The Docker files' contracts that need no engine: the lock, the compose shape, the context."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def load_make_lock():
    spec = importlib.util.spec_from_file_location("make_lock", DOCKER / "make_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_pins_every_direct_requirement_of_rtlab() -> None:
    # Fails when pyproject.toml gains a dependency the image would lack: rerun make_lock.py.
    make_lock = load_make_lock()
    assert make_lock.check_lock(DOCKER / "requirements.lock") == []


def test_lock_pins_exact_versions_and_the_cpu_torch() -> None:
    pins = load_make_lock().read_lock(DOCKER / "requirements.lock")
    assert pins["torch"].endswith("+cpu")
    assert all(version and "*" not in version for version in pins.values())
    assert "pytest" not in pins and "ruff" not in pins  # dev tools stay out of the image


def test_compose_wires_workers_to_the_tracking_server_and_postgres() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "worker", "launcher"} <= set(services)
    for name in ("worker", "launcher"):
        environment = services[name]["environment"]
        assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert environment["RTLAB_STORAGE"].startswith("postgresql+psycopg://")
    assert "--backend-store-uri" in services["mlflow"]["command"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]  # not on every interface
    # The password comes from the environment, never from the file.
    assert "${RTLAB_DB_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert {"pgdata", "mlartifacts", "data"} <= set(compose["volumes"])
    # Workers share no run directories: checkpoints travel through the MLflow server.
    assert not any(".rtlab" in volume for name in ("worker", "launcher")
                   for volume in services[name]["volumes"])


def test_build_context_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # everything excluded first: tests, .git, run state, venvs
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert not any(path.startswith(("tests", ".git", ".venv", "mlruns")) for path in allowed)
