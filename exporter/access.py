"""Who may ask ``/probe`` for what: ``probe.allowed_targets``, ``probe.max_concurrent`` and ``web.auth``.

blackbox_exporter probes whatever a caller names. The allow-list lets an operator say which targets
``/probe`` may connect to: CIDRs match targets written as IP addresses, host globs match names (and
addresses written out). A name is matched as written and never resolved to be checked: a check that
resolved would race the probe's own resolution. Targets in the config or its target files are always
allowed; an empty list allows any target (the default, as blackbox).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from certpager.auth import Credentials

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_GLOB_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._*?[]!")


def parse_entry(entry: str) -> Network | str:
    """A CIDR (or one address) as a network, else a host glob in lower case; raises ValueError."""
    text = entry.strip()
    if "/" in text or _address(text) is not None:
        try:
            return ipaddress.ip_network(text.strip("[]"), strict=True)
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a CIDR like 10.0.0.0/8 or 2001:db8::/32: {exc}") from None
    glob = text.lower()
    if not glob or not set(glob) <= _GLOB_CHARACTERS:
        raise ValueError(f"{entry!r} is neither a CIDR like 10.0.0.0/8 nor a host glob like *.example.com")
    return glob


def check_entry(entry: str) -> str:
    """Validator of one ``probe.allowed_targets`` entry (the text is kept as written)."""
    parse_entry(entry)
    return entry


def _address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class AllowList:
    """Parsed ``probe.allowed_targets``; empty allows everything."""

    networks: tuple[Network, ...] = ()
    globs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        parsed = [parse_entry(entry) for entry in entries]
        return cls(tuple(p for p in parsed if not isinstance(p, str)), tuple(p for p in parsed if isinstance(p, str)))

    def allows(self, target: str) -> bool:
        """Whether ``target`` (``host:port`` or ``[v6]:port``, already validated) may be probed."""
        if not self.networks and not self.globs:
            return True
        host = target.rpartition(":")[0].strip("[]")
        address = _address(host)
        if address is not None:
            mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
            if any((mapped or address) in network for network in self.networks):
                return True
        name = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.globs)


@dataclass(frozen=True)
class ProbeAccess:
    """What a ``/probe`` request is checked against, swapped whole with the config on reload."""

    credentials: Credentials = field(default_factory=Credentials)
    allowed: AllowList = field(default_factory=AllowList)
    max_concurrent: int = 128


@dataclass
class Slots:
    """A count of ``/probe`` requests probing now, refused rather than queued beyond the limit."""

    in_use: int = 0

    def take(self, limit: int) -> bool:
        if self.in_use >= limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1

