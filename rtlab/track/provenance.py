"""Where a run came from: code version, environment and machine, as MLflow tags."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import rtlab


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@lru_cache(maxsize=1)
def provenance_tags() -> dict[str, str]:
    """Tags shared by every run this process starts (computed once per process)."""
    import torch  # late: keeps `import rtlab.track` light for the CLI

    source_dir = Path(rtlab.__file__).resolve().parent.parent
    # An installed copy without git (a Docker image) carries its commit in RTLAB_GIT_COMMIT.
    commit = _git(["rev-parse", "HEAD"], source_dir) or os.environ.get("RTLAB_GIT_COMMIT")
    # Untracked files (run state, caches) do not change what the code computes.
    status = _git(["status", "--porcelain", "--untracked-files=no"], source_dir)
    return {
        "rtlab.git_commit": commit or "unknown",
        "rtlab.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "rtlab.version": rtlab.__version__,
        "rtlab.python": platform.python_version(),
        "rtlab.torch": torch.__version__,
        "rtlab.host": socket.gethostname(),
        "rtlab.platform": f"{platform.system()}-{platform.machine()}",
    }
