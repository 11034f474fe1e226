"""A throwaway PostgreSQL cluster on loopback for tests and benchmarks.

    with LocalPostgres() as pg:              # initdb + pg_ctl start as the `postgres` user
        url = pg.create_database("t1")       # postgresql://postgres@127.0.0.1:<port>/t1
    # stopped (pg_ctl stop) and its folder removed

Runs `initdb`/`pg_ctl` through `runuser -u postgres` when we are root (initdb refuses root),
in a temp folder owned by that user, on a free port of 127.0.0.1, with its own
unix_socket_directories folder and trust auth for loopback only. `find_binaries()` returns
None when PostgreSQL is not installed (callers skip with `MISSING_REASON`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATE_BIN_DIRS = [f"/usr/lib/postgresql/{v}/bin" for v in (17, 16, 15, 14, 13)] + ["/usr/local/pgsql/bin", "/usr/bin"]
MISSING_REASON = "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql (Debian: apt-get install postgresql)"


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    env = os.environ.get("CUTOVER_PG_BIN")
    for folder in ([env] if env else []) + CANDIDATE_BIN_DIRS:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalPostgres:
    """One PostgreSQL cluster of our own; `url`, `create_database()`, `dump()`, `stop()`."""

    def __init__(self, bin_dir: Path | None = None, host: str = "127.0.0.1", port: int | None = None, durable: bool = False):
        found = bin_dir or find_binaries()
        if found is None:
            raise RuntimeError(MISSING_REASON)
        self.bin_dir = Path(found)
        self.host = host
        self.port = port or free_port(host)
        self.superuser = "postgres"
        self.folder: Path | None = None
        self._as_user: list[str] = []
        self._started = False
        self._counter = 0
        self.durable = durable  # False: fsync off (tests); True: the server's defaults (benchmarks)

    @property
    def data_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.folder is not None
        return self.folder / "socket"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def start(self) -> "LocalPostgres":
        self.folder = Path(tempfile.mkdtemp(prefix="cutover-pg-"))
        os.chmod(self.folder, 0o755)
        self.socket_dir.mkdir()
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as the `postgres` user
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, but there is no `postgres` user to run initdb/pg_ctl as "
                                   "(the Debian postgresql package creates it)") from None
            for path in (self.folder, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser, "--auth=trust",
                   "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        options = " ".join([
            f"-c listen_addresses={self.host}", f"-c port={self.port}", f"-c unix_socket_directories={self.socket_dir}",
            "-c max_connections=100",
        ] + ([] if self.durable else ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]))
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.folder / "server.log"),
                   "-o", options, "-w", "-t", "60", "start"])
        self._started = True
        self._wait_ready()
        return self

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        result = subprocess.run(self._as_user + argv, capture_output=True, text=True, cwd=self.folder)
        if result.returncode != 0:
            log = ""
            if self.folder and (self.folder / "server.log").exists():
                log = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        if name is None:
            self._counter += 1
            name = f"t{os.getpid()}_{self._counter}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def dump(self, database: str) -> bytes:
        """pg_dump of one database (plain SQL), as bytes."""
        result = subprocess.run([str(self.bin_dir / "pg_dump"), "-h", self.host, "-p", str(self.port), "-U", self.superuser,
                                 "--no-password", database], capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def stop(self) -> None:
        if self._started:
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
            self._started = False
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
