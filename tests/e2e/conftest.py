"""The e2e stack: TLS endpoints -> certpager exporter -> Debian's prometheus -> prometheus-alertmanager -> receiver.

One stack per test package (it takes a few seconds to start): the alert test drives it, the Grafana
dashboard test queries its Prometheus. Every process and server is stopped in the fixture's finally.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certpager import pki
from certpager.tlsserver import TLSServer
from tests.e2e.harness import (
    ROOT,
    WEBHOOK_PATH,
    LoopThread,
    Program,
    Receiver,
    free_port,
    http_get,
    render_alertmanager,
    render_prometheus,
    render_rules,
    running,
    wait_until,
)

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager")
FOR = "2s"  # every rule's for: in the e2e copy of the rules
WINDOW = "4s"  # every smoothing window in the e2e copy of the rules
CONFIGURED = ("expired", "soon", "fine", "selfsigned", "weak")  # in the exporter's config; "probed" only via /probe
PROBE_LABELS = {"environment": "e2e-probe", "service": "svc-probed", "owner": "team-e2e"}


@dataclass
class Endpoint:
    name: str
    chain: pki.Chain
    server: TLSServer


@dataclass
class Stack:
    loop: LoopThread
    receiver: Receiver
    endpoints: dict[str, Endpoint]
    intermediate: pki.Issued
    renewed: pki.Chain  # the expired endpoint's renewed certificate, already on disk ...
    renewed_file: Path  # ... in this file, a file target of the exporter
    exporter_address: str
    down_address: str  # a configured target nobody listens on
    prometheus_url: str
    alertmanager_url: str
    workdir: Path
    programs: list[Program] = field(default_factory=list)

    def query(self, expr: str) -> dict[str, Any]:
        """A Prometheus instant query: the whole JSON answer (status, data or error)."""
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            return dict(json.load(exc))

    def swap_certificate(self, name: str, chain: pki.Chain) -> None:
        """Serve ``chain`` on endpoint ``name`` from now on (new handshakes), as a renewal would."""
        files = chain.write(self.workdir / "pki", f"{name}-renewed")
        endpoint = self.endpoints[name]

        async def load() -> None:
            endpoint.server._ssl.load_cert_chain(files.cert_file, files.key_file)  # type: ignore[union-attr]

        self.loop.run(load())
        endpoint.chain = chain

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.programs)


def make_chains(intermediate: pki.Issued, root: pki.Issued) -> dict[str, pki.Chain]:
    """Leaves: expired, 5 days left, 400 days left, RSA-1024, self-signed (exporter config); 60 days (file_sd).

    Distinct CNs, IP SAN 127.0.0.1, one intermediate."""
    now = pki.utcnow()
    validity = {
        "expired": (now - dt.timedelta(days=91), now - dt.timedelta(days=1)),
        "soon": (now - dt.timedelta(days=1), now + dt.timedelta(days=5)),
        "fine": (now - dt.timedelta(days=1), now + dt.timedelta(days=400)),
        "probed": (now - dt.timedelta(days=1), now + dt.timedelta(days=60)),  # only in the /probe job
    }
    chains = {
        name: pki.Chain(
            leaf=pki.make_leaf(intermediate, (f"{name}.certpager.test", "127.0.0.1"), not_before=nb, not_after=na),
            intermediates=(intermediate,), root=root,
        )
        for name, (nb, na) in validity.items()
    }
    # Trusted, but a 1024-bit RSA key: policy min_rsa_bits (policy_violation).
    chains["weak"] = pki.Chain(
        leaf=pki.make_leaf(intermediate, ("weak.certpager.test", "127.0.0.1"), key="rsa1024",
                           not_after=now + dt.timedelta(days=300)),
        intermediates=(intermediate,), root=root,
    )
    # Valid dates, but self-signed: clients reject it (verify_failed, reason self_signed).
    chains["selfsigned"] = pki.self_signed_chain(("selfsigned.certpager.test", "127.0.0.1"),
                                                 not_after=now + dt.timedelta(days=200))
    return chains


def exporter_config(endpoints: dict[str, Endpoint], ca_file: Path, down_address: str, renewed_file: Path) -> str:
    """The configured endpoints; ``down_address`` (nothing listens there: probe_failed, refused); and
    ``renewed_file`` as a file target with the expired endpoint's labels (a renewal not yet deployed)."""
    addresses = [(e.name, e.server.address) for e in endpoints.values() if e.name in CONFIGURED]
    targets = "".join(
        f"  - target: {address}\n    labels: {{environment: e2e, service: svc-{name}}}\n"
        for name, address in [*addresses, ("down", down_address)]
    )
    return (
        "global: {scrape_interval: 1s, jitter: 0, retry_backoff: 1s}\n"
        "policies: {min_rsa_bits: 2048}\n"
        f"modules:\n  tls: {{kind: tls, timeout: 2s, tls: {{ca_file: {ca_file}}}}}\n  files: {{kind: file}}\n"
        f"targets:\n{targets}"
        f"  - target: {renewed_file}\n    module: files\n    labels: {{environment: e2e, service: svc-expired}}\n"
    )


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if PROMETHEUS is None or ALERTMANAGER is None:
        pytest.skip("Debian's prometheus and prometheus-alertmanager are not installed (CI installs them)")
    workdir = tmp_path_factory.mktemp("e2e")
    root = pki.make_root()
    intermediate = pki.make_intermediate(root)
    chains = make_chains(intermediate, root)
    loop = LoopThread()
    receiver = Receiver(token=secrets.token_hex(16))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(loop.close)
        endpoints: dict[str, Endpoint] = {}
        for name, chain in chains.items():
            files = chain.write(workdir / "pki", name)
            server = TLSServer(files.cert_file, files.key_file)
            loop.run(server.__aenter__())
            cleanup.callback(_stop_server, loop, server)
            endpoints[name] = Endpoint(name, chain, server)
        loop.run(receiver.start())
        cleanup.callback(lambda: loop.run(receiver.stop()))
        st = _start_programs(cleanup, workdir, endpoints, receiver, loop, intermediate, chains["fine"],
                         renewed_chain(intermediate, root))
        yield st


def _stop_server(loop: LoopThread, server: TLSServer) -> None:
    loop.run(server.__aexit__(None, None, None))


def renewed_chain(intermediate: pki.Issued, root: pki.Issued) -> pki.Chain:
    """What renewing the expired endpoint's certificate yields: the same name, 89 days left."""
    now = pki.utcnow()
    leaf = pki.make_leaf(intermediate, ("expired.certpager.test", "127.0.0.1"),
                         not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=89))
    return pki.Chain(leaf=leaf, intermediates=(intermediate,), root=root)


def _start_programs(
    cleanup: contextlib.ExitStack, workdir: Path, endpoints: dict[str, Endpoint], receiver: Receiver,
    loop: LoopThread, intermediate: pki.Issued, any_chain: pki.Chain, renewed: pki.Chain,
) -> Stack:
    ca_file = any_chain.write(workdir / "pki", "ca").ca_file
    renewed_file = renewed.write(workdir / "renewed", "expired").cert_file
    exporter_port, prom_port, am_port, down_port = free_port(), free_port(), free_port(), free_port()
    exporter_address, down_address = f"127.0.0.1:{exporter_port}", f"127.0.0.1:{down_port}"
    (workdir / "exporter.yml").write_text(exporter_config(endpoints, ca_file, down_address, renewed_file))
    token_file = workdir / "bridge.token"
    token_file.write_text(receiver.token + "\n")
    render_alertmanager(ROOT / "deploy/alertmanager/alertmanager.yml", workdir / "alertmanager.yml",
                        url=f"http://127.0.0.1:{receiver.port}{WEBHOOK_PATH}", token_file=token_file)
    render_rules(ROOT / "rules/certpager.rules.yml", workdir / "certpager.rules.yml", for_=FOR, window=WINDOW)
    (workdir / "targets.json").write_text(json.dumps(
        [{"targets": [endpoints["probed"].server.address], "labels": PROBE_LABELS}]
    ))
    render_prometheus(ROOT / "deploy/prometheus/prometheus.yml", workdir / "prometheus.yml",
                      exporter=exporter_address, alertmanager=f"127.0.0.1:{am_port}",
                      rule_file=workdir / "certpager.rules.yml", targets_file=workdir / "targets.json")
    programs = [
        cleanup.enter_context(running("alertmanager", [
            str(ALERTMANAGER), f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ], workdir)),
        cleanup.enter_context(running("exporter", [
            sys.executable, "-m", "certpager", "exporter", f"--config.file={workdir / 'exporter.yml'}",
            f"--web.listen-address={exporter_address}",
        ], workdir)),
        cleanup.enter_context(running("prometheus", [
            str(PROMETHEUS), f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
        ], workdir)),
    ]
    st = Stack(loop, receiver, endpoints, intermediate, renewed, renewed_file, exporter_address, down_address,
               f"http://127.0.0.1:{prom_port}",
               f"http://127.0.0.1:{am_port}", workdir, programs)
    _wait_ready(st)
    return st


def _wait_ready(st: Stack) -> None:
    def up(url: str) -> bool:
        for program in st.programs:
            program.assert_running()
        return http_get(url) is not None

    try:
        wait_until("alertmanager ready", lambda: up(f"{st.alertmanager_url}/-/ready"), timeout=20)
        wait_until("prometheus ready", lambda: up(f"{st.prometheus_url}/-/ready"), timeout=20)
        wait_until("exporter probed all endpoints", lambda: (
            (body := http_get(f"http://{st.exporter_address}/metrics")) is not None
            and body.count(b"tls_probe_success{") == len(CONFIGURED) + 2
        ), timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{st.logs()}") from None
