"""The chart's release path, offline: signed with GnuPG, pushed to an OCI registry, pulled back and verified
before it is rendered, as a user installs it (README, "Install on Kubernetes"; docs/deploy.md).

Real programs: gpg makes a release key; `helm package --sign` writes the chart and its provenance file;
Debian's docker-registry (distribution v2.8) serves OCI on a unix socket, reached through a loopback TCP
proxy on an ephemeral port; `helm push` / `helm pull --verify` / `helm verify` / `helm template --verify`.
A chart changed after signing, or signed by another key, is refused.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import socketserver
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.k8s import CHART, run, tool

VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
PACKAGE = f"certpager-{VERSION}.tgz"
SIGNER = "certpager release (test) <release@certpager.test>"
PASSPHRASE = "correct horse battery staple"

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None or shutil.which("gpg") is None,
                                reason="needs Debian's docker-registry and gnupg (.ci/debian-packages)")


class _Pipe(socketserver.BaseRequestHandler):
    """One client connection, spliced to the registry's unix socket in both directions."""

    server: _Proxy

    def handle(self) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(self.server.unix_path)
        with upstream:
            back = threading.Thread(target=_copy, args=(upstream, self.request), daemon=True)
            back.start()
            _copy(self.request, upstream)
            back.join(timeout=30)


def _copy(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, unix_path: str) -> None:
        super().__init__(("127.0.0.1", 0), _Pipe)
        self.unix_path = unix_path


@contextlib.contextmanager
def registry(workdir: Path) -> Iterator[str]:
    """docker-registry on a unix socket in ``workdir``; yields its loopback ``host:port`` (ephemeral)."""
    sock = workdir / "registry.sock"
    config = workdir / "registry.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
        "http": {"net": "unix", "addr": str(sock), "secret": "test-only"},
    }))
    log = (workdir / "registry.log").open("w")
    process = subprocess.Popen([shutil.which("docker-registry") or "", "serve", str(config)], stdout=log, stderr=log)
    proxy = _Proxy(str(sock))
    serving = threading.Thread(target=proxy.serve_forever, daemon=True)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert process.poll() is None, (workdir / "registry.log").read_text()
            assert time.monotonic() < deadline, "docker-registry did not open its socket in 15 s"
            time.sleep(0.05)
        serving.start()
        yield f"127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()
        process.terminate()
        process.wait(timeout=10)
        log.close()


def gpg(home: Path, *args: str, stdout: Path | None = None) -> None:
    command = ["gpg", "--batch", "--homedir", str(home), "--pinentry-mode", "loopback",
               "--passphrase-file", str(home / "passphrase"), *args]
    with open(stdout, "wb") if stdout else contextlib.nullcontext() as out:
        subprocess.run(command, check=True, timeout=120, stdout=out or subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.contextmanager
def release_key(name: str) -> Iterator[tuple[Path, Path, Path]]:
    """A fresh signing key: (secret keyring, public keyring, passphrase file), in the legacy keyring format
    helm reads. The GnuPG home is short-pathed (gpg-agent's socket path has a length limit)."""
    home = Path(tempfile.mkdtemp(prefix="cpgpg"))
    try:
        home.chmod(0o700)
        (home / "passphrase").write_text(PASSPHRASE + "\n")
        gpg(home, "--quick-gen-key", name, "rsa2048", "sign", "1d")
        gpg(home, "--export-secret-keys", stdout=home / "secring.gpg")
        gpg(home, "--export", stdout=home / "pubring.gpg")
        yield home / "secring.gpg", home / "pubring.gpg", home / "passphrase"
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def tampered(package: Path, out: Path) -> Path:
    """The same chart archive with one byte of values.yaml changed (pullPolicy), same name and version."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(package) as source, tarfile.open(out / package.name, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "certpager/values.yaml" and data is not None:
                data = data.replace(b"pullPolicy: IfNotPresent", b"pullPolicy: Always      ")
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    return out / package.name


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """The chart packaged and signed: (package, public keyring)."""
    out = tmp_path_factory.mktemp("signed")
    with release_key(SIGNER) as (secring, pubring, passphrase):
        run(tool("helm"), "package", "--sign", "--key", SIGNER, "--keyring", secring,
            "--passphrase-file", passphrase, "--destination", out, CHART, timeout=120)
        public = out / "pubring.gpg"
        shutil.copy(pubring, public)
    assert (out / PACKAGE).exists() and (out / f"{PACKAGE}.prov").exists()
    return out / PACKAGE, public


def test_signed_chart_round_trips_through_an_oci_registry(signed, tmp_path):
    package, pubring = signed
    helm = tool("helm")
    run(helm, "verify", "--keyring", pubring, package)
    config = ["--registry-config", tmp_path / "registry.json", "--repository-cache", tmp_path / "cache"]
    with registry(tmp_path) as address:
        pushed = run(helm, "push", package, f"oci://{address}/charts", "--plain-http", *config)
        assert "Digest: sha256:" in pushed.stdout + pushed.stderr
        reference = f"oci://{address}/charts/certpager"

        # What a user runs: pull with --verify (the provenance layer travels with the chart), then verify.
        pulled = tmp_path / "pulled"
        pulled.mkdir()
        run(helm, "pull", reference, "--version", VERSION, "--plain-http", "--verify", "--keyring", pubring,
            "--destination", pulled, *config)
        assert (pulled / PACKAGE).read_bytes() == package.read_bytes()
        assert (pulled / f"{PACKAGE}.prov").exists()
        result = run(helm, "verify", "--keyring", pubring, pulled / PACKAGE)
        assert SIGNER in result.stdout + result.stderr
        # ... and render (or install) only what verifies.
        rendered = run(helm, "template", "cp", reference, "--version", VERSION, "--plain-http", "--verify",
                       "--keyring", pubring, *config)
        assert "kind: Deployment" in rendered.stdout

        # A chart changed after signing, pushed with the original provenance file, is refused on pull.
        evil = tampered(package, tmp_path / "evil")
        shutil.copy(package.with_name(f"{PACKAGE}.prov"), evil.with_name(f"{PACKAGE}.prov"))
        run(helm, "push", evil, f"oci://{address}/evil", "--plain-http", *config)
        (tmp_path / "evil-pulled").mkdir()
        refused = run(helm, "pull", f"oci://{address}/evil/certpager", "--version", VERSION, "--plain-http",
                      "--verify", "--keyring", pubring, "--destination", tmp_path / "evil-pulled", *config,
                      check=False)
        assert refused.returncode != 0 and "sha256 sum does not match" in refused.stderr, refused.stderr
        refused = run(helm, "template", "cp", f"oci://{address}/evil/certpager", "--version", VERSION,
                      "--plain-http", "--verify", "--keyring", pubring, *config, check=False)
        assert refused.returncode != 0 and "sha256 sum does not match" in refused.stderr, refused.stderr


def test_tampered_or_foreign_chart_fails_verify(signed, tmp_path):
    package, pubring = signed
    helm = tool("helm")
    evil = tampered(package, tmp_path / "evil")
    shutil.copy(package.with_name(f"{PACKAGE}.prov"), evil.with_name(f"{PACKAGE}.prov"))
    result = run(helm, "verify", "--keyring", pubring, evil, check=False)
    assert result.returncode != 0 and "sha256 sum does not match" in result.stderr
    # Signed, unchanged, but by a key the user does not trust.
    with release_key("someone else <mallory@certpager.test>") as (_, other, _):
        result = run(helm, "verify", "--keyring", other, package, check=False)
    assert result.returncode != 0 and "openpgp" in result.stderr.lower(), result.stderr
