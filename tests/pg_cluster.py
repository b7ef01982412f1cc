"""A throwaway PostgreSQL cluster, so a test may stop the server without touching the machine's own."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.storage import open_store
from tests.processes import free_port, missing


def server_bin() -> Path | None:
    """The newest installed server binaries (Debian keeps them per version, off the PATH)."""
    versions = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if versions:
        return max(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class Cluster:
    """One server in a temporary folder, on 127.0.0.1 and a free port, trust auth."""

    bin: Path
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        # PostgreSQL refuses to run as root: run its tools as the postgres OS user then.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, str(self.bin / tool), *args], capture_output=True, text=True,
                                timeout=90, check=False)
        if result.returncode != 0:
            log = self.folder / "server.log"
            raise AssertionError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
                                 + (log.read_text() if log.exists() else ""))

    def init(self) -> None:
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.folder}'\nfsync = off\n")

    def start(self) -> None:
        """Returns once the server accepts connections (pg_ctl -w polls, up to 60 s)."""
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.folder / "data"),
                  "-l", str(self.folder / "server.log"))

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.folder / "data"))

    def running(self) -> bool:
        return (self.folder / "data" / "postmaster.pid").exists()


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A fresh migrated cluster for one test, always stopped and deleted afterwards."""
    bin_dir = server_bin()
    if bin_dir is None:
        missing("no PostgreSQL server binaries (initdb) installed: apt-get install postgresql")
    if os.geteuid() == 0 and "postgres" not in {u.pw_name for u in pwd.getpwall()}:
        missing("running as root and there is no postgres OS user to run the server as")
    folder = Path(tempfile.mkdtemp(prefix="mjbridge-pg-"))
    if os.geteuid() == 0:  # mkdtemp made it 0700 for root; the server must own it
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    cluster = Cluster(bin_dir, folder, free_port())
    try:
        cluster.init()
        cluster.start()
        store = open_store(cluster.url)
        store.migrate()
        store.close()
        yield cluster
    finally:
        try:
            if cluster.running():
                cluster.stop("immediate")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
