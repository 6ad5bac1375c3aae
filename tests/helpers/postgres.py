"""A throwaway PostgreSQL cluster on 127.0.0.1: `initdb` under a temp dir, `pg_ctl` on a free
port, one database and one password user. Run as the unprivileged `postgres` user when the tests
run as root (PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.servers import free_port

USER, PASSWORD, DATABASE = "rtlab", "s3cret-pw", "rtlab"


def postgres_bindir() -> Path | None:
    """The newest installed server binaries (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresServer:
    root: Path
    bindir: Path
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, password: str = PASSWORD, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "pw").write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "pw", "postgres")
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
                   f"--pwfile={self.root / 'pw'}", "--auth-host=scram-sha-256",
                   "--auth-local=trust", "-E", "UTF8", "--no-sync"])

    def start(self) -> None:
        self.port = self.port or free_port()
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                   str(self.root / "server.log"), "-o", options, "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def create_database(self, name: str = DATABASE) -> None:
        self._run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", USER, name], env={"PGPASSWORD": PASSWORD})

    def _run(self, command: list[str], env: dict[str, str] | None = None) -> None:
        subprocess.run(_as_server_user(command), check=True, capture_output=True, text=True,
                       cwd="/", env={**os.environ, **(env or {})}, timeout=120)


def start_postgres(root: Path) -> PostgresServer:
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = PostgresServer(root, bindir)
    server.init()
    server.start()
    server.create_database()
    return server
