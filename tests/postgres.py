"""A private PostgreSQL cluster for the tests: Debian's binaries, a temporary directory, an ephemeral port.

One cluster per test session (:func:`cluster`; ``stop_fast`` then ``start`` restart it), password
authentication over TCP on 127.0.0.1 (so the store's password handling is exercised), one fresh database
per test (:meth:`PostgresServer.create_database`). PostgreSQL refuses to run as root, so as root it runs
as the ``postgres`` system user. ``fsync=off``: the tests check behaviour, not durability on power loss
(bench/ runs with fsync on).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from tests.exporter.starttls.servers import PG_USER, START_TIMEOUT, STOP_TIMEOUT, Daemon, free_port, postgres_bin

PASSWORD = "pg-test-secret-7Hq2"  # the superuser's; tests also check it never reaches a log
_names = itertools.count(1)


class PostgresServer:
    """One running cluster; ``restart`` keeps its port and data."""

    def __init__(self, base: Path, bin_dir: Path, *, fsync: bool = False, max_connections: int = 200) -> None:
        self.base, self.bin_dir = base, bin_dir
        self.data = base / "data"
        self.port = free_port()
        pwfile = base / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if PG_USER is not None:
            shutil.chown(pwfile, PG_USER, PG_USER)
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
             "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "-E", "UTF8"],
            user=PG_USER, check=True, capture_output=True, timeout=120,
        )
        pwfile.unlink()
        self.argv = [
            str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(base),
            "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if fsync else 'off'}",
            "-c", f"max_connections={max_connections}", "-c", "shared_buffers=32MB",
        ]
        self.daemon = Daemon("postgresql", self.argv, [self.port], base / "server.log", user=PG_USER)

    def url(self, database: str = "postgres") -> str:
        """A URL without the password (the store gets it separately, as users configure it)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        self.daemon = Daemon("postgresql", self.argv, [self.port], self.base / "server.log", user=PG_USER)
        self.daemon.start()
        # The port accepts before the server takes sessions ("the database system is starting up").
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run([str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                             check=False, timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgresql not ready: {(self.base / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.daemon.stop()

    def stop_fast(self) -> None:
        """PostgreSQL's fast shutdown (SIGINT): sessions are ended now, as a crash or failover would."""
        proc = self.daemon.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.daemon.stop()

    async def connect(self, database: str = "postgres") -> asyncpg.Connection:
        return await asyncpg.connect(self.url(database), password=PASSWORD, timeout=10)

    async def create_database(self) -> str:
        name = f"t{next(_names)}"
        conn = await self.connect()
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await self.connect()
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


@contextlib.contextmanager
def cluster(*, fsync: bool = False) -> Iterator[PostgresServer | None]:
    """A started cluster, or None when PostgreSQL is not installed."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="certpager-pg-", dir="/tmp"))
    base.chmod(0o755)  # the postgres user must reach its directory
    if PG_USER is not None:
        shutil.chown(base, PG_USER, PG_USER)
    try:
        server = PostgresServer(base, bin_dir, fsync=fsync).start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
