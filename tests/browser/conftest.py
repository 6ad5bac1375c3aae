"""Fixtures of the browser tests: a tiny study (sweep + report) run once per module, the folder
screenshots go to, and a fresh headless chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser.chrome import chromium, missing_browser
from tests.helpers.tiny_spec import subprocess_env, write_spec

# Three arms, long enough and a learning rate high enough for curves that show something
# (about 40 s on 2 cores).
ARMS = """\
  baseline: {}
  reasoning_1:
    model:
      reasoning: {n_tokens: 1}
  myopic:
    model:
      myopic: strict
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> Path:
    """A working directory where `rtlab run` and `rtlab report` ran a tiny 3-arm, 2-seed study."""
    workdir = tmp_path_factory.mktemp("browser-study")
    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    spec = write_spec(workdir, max_iters=60, log_interval=5, variants=ARMS)
    env = subprocess_env(workdir)
    rtlab = [sys.executable, "-m", "rtlab.cli"]
    run = ["run", spec.name, "--workers", "1", "--quiet", "--set", "base.train.learning_rate=0.01"]
    for command in (run, ["report", spec.name]):
        done = subprocess.run(rtlab + command, cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    return workdir


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $RTLAB_BROWSER_ARTIFACTS (CI keeps it), else a temporary folder."""
    folder = os.environ.get("RTLAB_BROWSER_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path: Path):
    """A headless chromium with a profile no browser has used before."""
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    with chromium(tmp_path / "profile") as driver:
        yield driver
