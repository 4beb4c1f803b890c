"""A real, throwaway PostgreSQL cluster for the record tests (see conftest.py). Its own module:
test files import :class:`PgServer` from here (every test directory has a ``conftest``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

PG_MISSING = (
    "PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/initdb): "
    "scripts/setup.sh installs the `postgresql` package"
)


def pg_bindir() -> Path | None:
    """The newest Debian PostgreSQL with initdb and pg_ctl, else one on PATH."""
    found = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if re.fullmatch(r"\d+", path.parent.name) and (path / "initdb").is_file():
            found.append((int(path.parent.name), path))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PgServer:
    """A PostgreSQL cluster in ``root`` listening on ``127.0.0.1:port``."""

    bindir: Path
    root: Path
    port: int

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:1])} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}"
            )

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.root / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", log, "-o", options, "-w", "-t", "30", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def admin(self, sql: str) -> None:
        """Run ``sql`` on the ``postgres`` database, outside a transaction."""
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]
