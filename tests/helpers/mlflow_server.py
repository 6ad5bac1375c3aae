"""A real `mlflow server` on 127.0.0.1: a backend store URI, artifacts served over HTTP from a
local folder (`--serve-artifacts`), started as a process group and stopped with it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.servers import free_port, stop_process_group, wait_until_serving


@dataclass
class MlflowServer:
    backend_uri: str
    artifacts: Path
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        self.port = self.port or free_port()
        command = [str(Path(sys.executable).parent / "mlflow"), "server",
                   "--backend-store-uri", self.backend_uri, "--serve-artifacts",
                   "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        wait_until_serving(f"{self.url}/health", self.process, timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process)
