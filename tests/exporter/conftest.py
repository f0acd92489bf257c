"""Fixtures for the probe tests: a session PKI with exact dates, a fake resolver, loopback servers.

Dates are fixed relative to ``NOW`` (taken once per session, whole seconds) so that tests can assert
notAfter to the second without reading it back from the certificate they test.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from certpager import pki
from certpager.pki import Chain, ChainFiles
from exporter.config import Module, TLSSettings
from exporter.probes.tls import TLSProber

NOW = pki.utcnow()
DAY = dt.timedelta(days=1)
LEAF_NOT_BEFORE = NOW - 10 * DAY
LEAF_NOT_AFTER = NOW + 60 * DAY
NAMES = ("localhost", "127.0.0.1", "::1")


def ts(moment: dt.datetime) -> float:
    return moment.timestamp()


class FakeResolver:
    """A Resolver answering from a table; any other name fails like NXDOMAIN, without a DNS query."""

    def __init__(self, table: Mapping[str, list[tuple[int, str]]]) -> None:
        self.table = dict(table)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[tuple[int, str]]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


V4 = (socket.AF_INET, "127.0.0.1")
V6 = (socket.AF_INET6, "::1")
RESOLVER_TABLE = {
    "localhost": [V4],
    "dual.test": [V6, V4],
    "v4only.test": [V4],
    "v6only.test": [V6],
    "service.test": [V4],
}


@dataclass(frozen=True)
class ProbePKI:
    """Every chain the probe tests serve, written to disk once per session."""

    dir: Path
    root: pki.Issued
    intermediate: pki.Issued
    chains: Mapping[str, Chain]
    files: Mapping[str, ChainFiles]
    client: ChainFiles  # a client certificate under its own CA (ca_file = client CA)

    @property
    def ca_file(self) -> Path:
        return self.files["valid"].ca_file


def _chains(root: pki.Issued, inter: pki.Issued) -> dict[str, Chain]:
    leaf_dates = {"not_before": LEAF_NOT_BEFORE, "not_after": LEAF_NOT_AFTER}
    expired_inter = pki.make_intermediate(root, cn="Expired Intermediate", not_before=NOW - 400 * DAY,
                                          not_after=NOW - 5 * DAY, slot=11)
    rsa_inter = pki.make_intermediate(root, cn="RSA Intermediate", key="rsa2048", slot=12)
    return {
        "valid": pki.build_chain(NAMES, root=root, intermediate=inter, **leaf_dates),
        "rsa": pki.build_chain(NAMES, root=root, intermediate=rsa_inter, key="rsa2048", **leaf_dates),
        "expired": pki.build_chain(NAMES, root=root, intermediate=inter, not_before=NOW - 100 * DAY,
                                   not_after=NOW - 2 * DAY),
        "not_yet_valid": pki.build_chain(NAMES, root=root, intermediate=inter, not_before=NOW + 3 * DAY,
                                         not_after=NOW + 90 * DAY),
        "self_signed": pki.self_signed_chain(NAMES, **leaf_dates),
        "wrong_name": pki.build_chain(("other.example",), root=root, intermediate=inter, **leaf_dates),
        "wildcard": pki.build_chain(("*.wild.test",), root=root, intermediate=inter, **leaf_dates),
        "service": pki.build_chain(("service.test",), root=root, intermediate=inter, **leaf_dates),
        "expired_intermediate": pki.build_chain(NAMES, root=root, intermediate=expired_inter, **leaf_dates),
        "sha1": pki.build_chain(NAMES, root=root, intermediate=rsa_inter, hash="sha1", **leaf_dates),
    }


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> ProbePKI:
    directory = tmp_path_factory.mktemp("pki")
    root = pki.make_root(not_before=NOW - 1000 * DAY, not_after=NOW + 3000 * DAY)
    inter = pki.make_intermediate(root, not_before=NOW - 500 * DAY, not_after=NOW + 2000 * DAY)
    chains = _chains(root, inter)
    files = {name: chain.write(directory / name) for name, chain in chains.items()}
    client_root = pki.make_root("certpager Client Root", slot=20)
    client = pki.Chain(leaf=pki.make_leaf(client_root, ("probe-client",), slot=21), root=client_root)
    return ProbePKI(directory, root, inter, chains, files, client.write(directory / "client", "client"))


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(RESOLVER_TABLE)


@pytest.fixture
def prober(resolver: FakeResolver) -> TLSProber:
    return TLSProber(resolver=resolver)


@pytest.fixture
def trusting(test_pki: ProbePKI) -> Module:
    """A module that trusts the test root."""
    return Module(tls=TLSSettings(ca_file=test_pki.ca_file))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
