"""Servers the tests start on 127.0.0.1: a free port, waiting until one answers, stopping one
with everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll `url` until it answers; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a server started with `start_new_session=True` and every process it started (its
    process group: `mlflow ui` / `mlflow server` run their web server as a child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # let the group's other processes finish their SIGTERM
