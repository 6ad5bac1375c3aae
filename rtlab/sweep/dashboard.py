"""`rtlab dashboard FILE`: optuna-dashboard on an experiment's study storage, bound to 127.0.0.1.

optuna-dashboard is an optional extra (`pip install 'rtlab[dashboard]'`). It shows the run queue of
any experiment and, for a searched one, each arm's study with its trials' sampled values,
intermediate values and states: history, parallel-coordinate, slice and importance views.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rtlab.sweep.optuna_adapter import sqlite_path
from rtlab.sweep.queue import default_storage_url, experiment_state_dir

HOST = "127.0.0.1"  # never exposed beyond this machine
EXTRA = "pip install 'rtlab[dashboard]'  (optuna-dashboard==0.21.0)"
# optuna-dashboard's public entry point, run by the interpreter rtlab runs on
_SERVER = ("import sys, optuna_dashboard; "
           "optuna_dashboard.run_server(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]))")


class DashboardError(ValueError):
    """No storage to show, or optuna-dashboard is not installed (exit 2)."""


@dataclass(frozen=True)
class DashboardLaunch:
    storage: str
    url: str
    argv: list[str]  # argv[0] is the Python interpreter to exec


def dashboard_launch(
    spec_path: Path, overrides: Sequence[str] = (), storage: str | None = None, port: int = 8080,
    state_root: Path | None = None,
) -> DashboardLaunch:
    """How to start optuna-dashboard on the experiment's storage (default
    .rtlab/<experiment>/optuna.db). Raises SpecError (the spec) or DashboardError."""
    from rtlab.spec import load_spec

    spec = load_spec(spec_path, list(overrides))
    url = storage or default_storage_url(experiment_state_dir(spec.name, state_root))
    database = sqlite_path(url)
    if database is not None and not database.exists():
        raise DashboardError(f"{spec_path}: no study storage at {url} yet: run `rtlab run "
                             f"{spec_path}` first (or pass --storage URL)")
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise DashboardError(f"optuna-dashboard is not installed: {EXTRA}")
    return DashboardLaunch(url, f"http://{HOST}:{port}",
                           [sys.executable, "-c", _SERVER, url, HOST, str(port)])
