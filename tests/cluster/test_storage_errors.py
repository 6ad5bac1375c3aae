"""Bad shared-store input: one line naming the URL (password redacted), exit 2, within 10 s,
and nothing created: no MLflow store, no state directory."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.postgres import PostgresServer
from tests.helpers.servers import free_port

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "experiments" / "mini_sweep.yaml"
RTLAB = [sys.executable, "-m", "rtlab.cli"]


def rtlab(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run([*RTLAB, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - start


def bad_urls(postgres: PostgresServer) -> dict[str, str]:
    return {
        "unreachable": f"postgresql+psycopg://rtlab:s3cret-pw@127.0.0.1:{free_port()}/rtlab",
        "wrong password": postgres.url(password="not-the-pw"),
        "missing driver": f"postgresql+pg8000://rtlab:s3cret-pw@127.0.0.1:{postgres.port}/rtlab",
    }


@pytest.mark.parametrize("case", ["unreachable", "wrong password", "missing driver"])
@pytest.mark.parametrize("command", ["run", "worker", "status"])
def test_a_bad_storage_url_fails_fast_with_the_password_redacted(
    postgres: PostgresServer, tmp_path: Path, case: str, command: str
) -> None:
    url = bad_urls(postgres)[case]
    args = ([command, str(SPEC), "--storage", url] if command in ("run", "status")
            else [command, "--study", "mini_sweep", "--storage", url])
    done, seconds = rtlab(args, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert seconds < 10
    assert "s3cret-pw" not in output and "not-the-pw" not in output
    redacted = url.replace("s3cret-pw", "***").replace("not-the-pw", "***")
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and redacted in lines[0], output
    assert list(tmp_path.iterdir()) == []  # no mlruns, no .rtlab
