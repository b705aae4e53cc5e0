"""A real PostgreSQL server for the sweep tests: Debian's `postgresql` package run as an ordinary local server
(its own data folder under the test's temp folder, initdb + pg_ctl, 127.0.0.1 on a free port), with a database
and a user with a password, stopped at the end. Where the server or the driver is absent the tests skip, saying
how to install them (.ci/run installs the package; `make test` the driver, kdzoo's `postgres` extra)."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import pytest

USER, PASSWORD, DATABASE = "kdzoo", "s3cret-pw", "sweeps"


def _bin_dir() -> Optional[Path]:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if versions:  # Debian's layout: the server's tools are not on PATH
        return Path(versions[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "psql").exists() else None


def skip_unless_available() -> Path:
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server here: apt-get install postgresql (.ci/run installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("no PostgreSQL driver: pip install 'kdzoo[postgres]' (make test installs it)")
    return bin_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in `folder`; as root, the server runs as the package's `postgres` user (initdb refuses
    root). `url` reaches the database as the password user."""

    def __init__(self, folder: Path):
        self.bin = skip_unless_available()
        self.as_user: list[str] = []
        self.own_folder = os.geteuid() == 0
        if self.own_folder:  # pytest's temp root is root's alone (mode 700): the postgres user needs its own
            self.as_user = ["runuser", "-u", "postgres", "--"]
            folder = Path(tempfile.mkdtemp(prefix="kdzoo-pg-"))
            shutil.chown(folder, "postgres")
        self.folder, self.port = folder, _free_port()
        self.data, self.log = folder / "data", folder / "server.log"
        self._run("initdb", "-D", self.data, "-U", "admin", "--auth=trust", "-E", "UTF8", "--locale=C")
        hba = "local all admin trust\nhost all all 127.0.0.1/32 scram-sha-256\n"  # passwords over TCP only
        self._run("sh", "-c", f"printf '{hba}' > {self.data}/pg_hba.conf")
        self.start()
        try:
            self.sql(f"CREATE USER {USER} PASSWORD '{PASSWORD}'")
            self.sql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        except Exception:  # a server that started must not outlive a failed setup
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def url_with(self, password: str = PASSWORD, database: str = DATABASE, port: Optional[int] = None) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def _run(self, tool: str, *args) -> None:
        cmd = [*self.as_user, tool if tool == "sh" else str(self.bin / tool), *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def sql(self, statement: str) -> None:
        self._run("psql", "-h", self.folder, "-p", self.port, "-U", "admin", "-d", "postgres", "-v",
                  "ON_ERROR_STOP=1", "-c", statement)

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped by the test
        if self.own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
