"""One real MLflow store (sqlite in a tmp dir) per session, holding every test experiment.

Creating the store runs MLflow's migrations (seconds), so it is made once; each experiment
has runs with known final values (tests/helpers/report_store.py) so tests can recompute every
table number.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.fake_store import FakeRun, log_experiment
from tests.helpers.report_store import (
    GRID_SPEC,
    RELOGGED_VAL,
    Store,
    grid_runs,
    known_runs,
    messy_runs,
)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = {}
    for name, runs in (("known", known_runs()), ("grid", grid_runs()), ("messy", messy_runs())):
        ids[name] = log_experiment(uri, name, runs, artifact_location=str(root / name))
    # As `rtlab run` does: the spec text on the parent run, and the path it was read from.
    from mlflow import MlflowClient

    MlflowClient(uri).log_text(ids["grid"]["parent"], GRID_SPEC, "spec.yaml")
    MlflowClient(uri).set_tag(ids["grid"]["parent"], "rtlab.spec_path", "experiments/grid.yaml")
    # A resumed run re-logs a step after its checkpoint: the later value must win.

    MlflowClient(uri).log_metric(ids["messy"]["reason1-s0"], "val_loss", RELOGGED_VAL, step=20,
                                 timestamp=int(time.time() * 1000) + 60_000)
    ids["orphans"] = log_experiment(uri, "orphans", [FakeRun("baseline", 0, 3.0, 3.1)],
                                    artifact_location=str(root / "orphans"), with_parent=False)
    return Store(uri, root, ids)
