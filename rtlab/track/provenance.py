"""Where a run came from: code version, environment and machine, as MLflow tags."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import rtlab
from rtlab.track.names import (
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    HOST_TAG,
    PLATFORM_TAG,
    PYTHON_TAG,
    TORCH_TAG,
    VERSION_TAG,
)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the rtlab source tree; None for what cannot be known.

    An installed copy without git (a Docker image) carries its commit in RTLAB_GIT_COMMIT.
    Untracked files (run state, caches) do not change what the code computes, so they do not
    make the tree dirty.
    """
    source_dir = Path(rtlab.__file__).resolve().parent.parent
    commit = _git(["rev-parse", "HEAD"], source_dir) or os.environ.get("RTLAB_GIT_COMMIT") or None
    status = _git(["status", "--porcelain", "--untracked-files=no"], source_dir)
    return commit, (None if status is None else bool(status))


@lru_cache(maxsize=1)
def provenance_tags() -> dict[str, str]:
    """Tags shared by every run this process starts (computed once per process)."""
    import torch  # late: keeps `import rtlab.track` light for the CLI

    commit, dirty = git_state()
    return {
        GIT_COMMIT_TAG: commit or "unknown",
        GIT_DIRTY_TAG: "unknown" if dirty is None else str(dirty).lower(),
        VERSION_TAG: rtlab.__version__,
        PYTHON_TAG: platform.python_version(),
        TORCH_TAG: torch.__version__,
        HOST_TAG: socket.gethostname(),
        PLATFORM_TAG: f"{platform.system()}-{platform.machine()}",
    }
