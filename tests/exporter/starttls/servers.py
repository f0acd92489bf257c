"""Real Debian servers for the STARTTLS tests, run on loopback from a temporary directory.

Each :class:`Daemon` runs one foreground process in its own process group, waits (bounded) until
its port accepts connections, and is stopped with SIGTERM then SIGKILL, always. PostgreSQL refuses
to run as root, so (as root) it runs as the ``postgres`` system user from a directory it owns.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 20.0  # seconds a server may take to accept connections
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the server binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Daemon:
    """One server process; ``start`` returns once every port in ``ports`` accepts a connection."""

    name: str
    argv: Sequence[str]
    ports: Sequence[int]
    log: Path
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Daemon:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         user=self.user, process_group=0)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(_accepts(port) for port in self.ports):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"{self.name} did not start (exit {self.proc.returncode}):\n{tail}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group (process_group=0)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)


def workdir(base: Path, name: str, owner: str | None = None) -> Path:
    """A fresh directory for one server, owned by ``owner`` when given."""
    path = base / name
    path.mkdir(mode=0o755)
    if owner is not None:
        shutil.chown(path, owner, owner)
    return path


def install_cert(directory: Path, cert: Path, key: Path, owner: str | None = None) -> tuple[Path, Path]:
    """Copy a certificate chain and key where the server (running as ``owner``) can read them."""
    dest_cert, dest_key = directory / "server.crt", directory / "server.key"
    shutil.copyfile(cert, dest_cert)
    shutil.copyfile(key, dest_key)
    dest_key.chmod(0o600)
    if owner is not None:
        for path in (dest_cert, dest_key):
            shutil.chown(path, owner, owner)
    return dest_cert, dest_key


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server binaries directory."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


# PostgreSQL refuses to run as root: as root, run it as the postgres system user; else as ourselves.
PG_USER = "postgres" if os.geteuid() == 0 else None


def postgres_cluster(base: Path, bin_dir: Path) -> Path:
    """initdb once; the returned data directory is copied per server."""
    data = workdir(base, "pg-template", PG_USER) / "data"
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                    "-E", "UTF8"], user=PG_USER, check=True, capture_output=True, timeout=60)
    return data


def postgres(base: Path, bin_dir: Path, template: Path, name: str, cert: Path, key: Path, *, ssl: bool) -> Daemon:
    directory = workdir(base, name, PG_USER)
    subprocess.run(["cp", "-a", str(template), str(directory / "data")], check=True, timeout=30)
    cert, key = install_cert(directory, cert, key, PG_USER)
    port = free_port()
    argv = [str(bin_dir / "postgres"), "-D", str(directory / "data"), "-p", str(port), "-k", str(directory),
            "-c", "listen_addresses=127.0.0.1", "-c", f"ssl={'on' if ssl else 'off'}",
            "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}", "-c", "shared_buffers=8MB",
            "-c", "fsync=off", "-c", "max_connections=10"]
    return Daemon(name, argv, [port], directory / "server.log", user=PG_USER)


def mariadb(base: Path, cert: Path, key: Path) -> Daemon:
    directory = workdir(base, "mariadb")
    (directory / "data").mkdir()
    cert, key = install_cert(directory, cert, key)
    port = free_port()
    # No mariadb-install-db: with --skip-grant-tables the server starts on an empty datadir, which
    # is all a handshake needs and saves seconds.
    argv = ["mariadbd", "--no-defaults", f"--datadir={directory / 'data'}", f"--port={port}",
            "--bind-address=127.0.0.1", f"--socket={directory / 'sock'}", f"--pid-file={directory / 'pid'}",
            "--skip-grant-tables", "--user=root", f"--ssl-cert={cert}", f"--ssl-key={key}",
            "--innodb-buffer-pool-size=8M", "--innodb-log-file-size=4M", "--skip-log-bin",
            f"--log-error={directory / 'error.log'}"]
    return Daemon("mariadb", argv, [port], directory / "server.log")


DOVECOT_CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
instance_name = certpager-test-{imap}
protocols = imap pop3
listen = 127.0.0.1
ssl = {ssl}
ssl_cert = <{cert}
ssl_key = <{key}
mail_location = maildir:{dir}/mail/%u
passdb {{
  driver = static
  args = password=unused-by-the-tests
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={dir}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def dovecot(base: Path, name: str, cert: Path, key: Path, *, ssl: bool) -> tuple[Daemon, int, int]:
    """Dovecot with IMAP and POP3 listeners; returns the daemon and the (imap, pop3) ports."""
    directory = workdir(base, name)
    for sub in ("run", "state", "mail"):
        (directory / sub).mkdir()
    cert, key = install_cert(directory, cert, key)
    imap, pop3 = free_port(), free_port()
    conf = directory / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(dir=directory, cert=cert, key=key, imap=imap, pop3=pop3,
                                        ssl="yes" if ssl else "no"))
    return Daemon(name, ["dovecot", "-F", "-c", str(conf)], [imap, pop3], directory / "server.log"), imap, pop3


def slapd(base: Path, name: str, cert: Path, key: Path, *, tls: bool) -> tuple[Daemon, int]:
    """slapd with the core schema, no database, and (when ``tls``) the test certificate."""
    directory = workdir(base, name)
    cert, key = install_cert(directory, cert, key)
    conf = directory / "slapd.conf"
    lines = ["include /etc/ldap/schema/core.schema", f"pidfile {directory / 'slapd.pid'}"]
    if tls:
        lines += [f"TLSCertificateFile {cert}", f"TLSCertificateKeyFile {key}"]
    conf.write_text("\n".join(lines) + "\n")
    port = free_port()
    argv = ["slapd", "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"]
    return Daemon(name, argv, [port], directory / "server.log"), port
