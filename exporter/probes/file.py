"""The ``file`` probe kind: certificates read from PEM bundles, DER files and PKCS#12 files.

The target is a path, a glob (``*``, ``?``, ``[...]``, ``**`` recursive) or a directory (its regular,
non-hidden files; not recursive: use ``dir/**`` for that). Every file found gives one ProbeResult
with ``path`` set; a file that cannot be read or parsed gives a failed result, never an exception.

The format is found from the content, never the extension:
- text holding ``-----BEGIN`` is PEM: every CERTIFICATE (also X509 / TRUSTED CERTIFICATE) and PKCS7
  block, in file order; private keys and other blocks are ignored;
- binary starting with a DER SEQUENCE is a PKCS#12 file when it is shaped like one (version 3),
  else one DER certificate, else a DER PKCS#7 bundle.
Positions in a file (unlike a TLS peer, a file has no "first is the leaf" rule): a non-CA certificate
is the ``leaf``, a self-signed CA the ``root``, any other CA an ``intermediate``; ``index`` is the order
in the file. Trust and hostname are not checked (None). Parsed files are cached by
(path, mtime, ctime, size, inode, password), so an unchanged file is read from disk but not re-parsed.
See docs/starttls.md, section "Certificate files".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import glob
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, pkcs7, pkcs12

from exporter import certs, policy
from exporter.probes.base import CertificateInfo, Position, ProbeRequest, ProbeResult, Reason

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 16 * 1024 * 1024  # a certificate bundle is kilobytes; anything larger is not one
MAX_FILES = 10_000  # per target; a runaway glob must not read a whole file system
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
_PKCS7_LABELS = frozenset({b"PKCS7", b"CERTIFICATE CHAIN"})
_GLOB_MAGIC = re.compile(r"[*?[]")


class FileProblem(Exception):
    """A file could not be turned into certificates; ``reason`` is one of the file reasons."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one file version holds: its certificates, or why there are none."""

    chain: tuple[CertificateInfo, ...] = ()
    problem: FileProblem | None = None
    keys_only: bool = False  # PEM with private keys but no certificate (skipped in directories and globs)
    errors: tuple[str, ...] = ()  # certificates that cannot be read (the others keep their series)


def file_position(info: CertificateInfo) -> Position:
    """A file's certificate position: non-CA -> leaf, self-signed CA -> root, other CA -> intermediate."""
    if not info.is_ca:
        return Position.LEAF
    return Position.ROOT if info.self_signed else Position.INTERMEDIATE


def _parsed_certs(ders: Sequence[bytes | str], bad: Reason) -> Parsed:
    """Each certificate read on its own: one that cannot be read (a str: why) is an error for it alone."""
    infos = []
    errors = []
    for index, der in enumerate(ders):
        try:
            if isinstance(der, str):
                raise certs.CertificateParseError(der)
            info = certs.parse(der).info
        except certs.CertificateParseError as exc:
            errors.append(f"certificate #{index} is malformed: {exc}")
            continue
        infos.append(replace(info, index=index, position=file_position(info)))
    if not infos:
        raise FileProblem(bad, "; ".join(errors))
    return Parsed(tuple(infos), errors=tuple(errors))


def _header_len(data: bytes, pos: int) -> int:
    first = data[pos + 1]
    return 2 + (first & 0x7F if first >= 0x80 else 0)


def _der_tlv_end(data: bytes, pos: int) -> int:
    """End offset of the DER TLV at ``pos`` (definite lengths only); raises ValueError."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    header = _header_len(data, pos)
    if header > 6 or (header > 2 and data[pos + 1] == 0x80) or pos + header > len(data):
        raise ValueError("bad length")
    if header == 2:
        return pos + 2 + data[pos + 1]
    return pos + header + int.from_bytes(data[pos + 2 : pos + header], "big")


def _der_well_formed(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> bool:
    """Do the constructed DER TLVs in ``data[start:end]`` nest and fill it exactly?"""
    end = len(data) if end is None else end
    pos = start
    try:
        while pos < end:
            tlv_end = _der_tlv_end(data, pos)
            constructed = data[pos] & 0x20 and depth < 32
            if tlv_end > end or (constructed and not _der_well_formed(data, pos + _header_len(data, pos),
                                                                       tlv_end, depth + 1)):
                return False
            pos = tlv_end
    except ValueError:
        return False
    return pos == end


_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2, encoded


def _looks_like_pkcs7(data: bytes) -> bool:
    # ContentInfo ::= SEQUENCE { contentType OID (signedData for a certificate bundle), content [0] }
    return len(data) > 8 and data.startswith(_SIGNED_DATA_OID, _header_len(data, 0))


def _looks_like_pfx(data: bytes) -> bool:
    # PFX ::= SEQUENCE { version INTEGER (v3), authSafe ContentInfo, macData MacData OPTIONAL }
    if len(data) < 8:
        return False
    header = _header_len(data, 0)
    return data[header : header + 3] == b"\x02\x01\x03"


def parse_pem(data: bytes) -> Parsed:
    """Every certificate of a PEM bundle, in file order."""
    blocks = _PEM_BLOCK.findall(data)
    if len(blocks) != data.count(b"-----BEGIN "):
        raise FileProblem(Reason.BAD_PEM, "a PEM block has no matching END line")
    ders: list[bytes | str] = []
    for label, body in blocks:
        if label not in _CERT_LABELS | _PKCS7_LABELS:
            continue
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FileProblem(Reason.BAD_PEM, f"bad base64 in a {label.decode()} block: {exc}") from exc
        if label in _PKCS7_LABELS:
            ders += _pkcs7(der, Reason.BAD_PEM)
        elif label == b"TRUSTED CERTIFICATE":  # OpenSSL's trust settings follow the certificate
            try:
                ders.append(der[: _der_tlv_end(der, 0)])
            except ValueError:
                ders.append("a TRUSTED CERTIFICATE block that does not start with a certificate")
        else:  # the DER reader refuses bytes after the certificate (a second one would vanish)
            ders.append(der)
    if not ders:
        keys_only = any(b"PRIVATE KEY" in label for label, _ in blocks)
        return Parsed(problem=FileProblem(Reason.NO_CERTIFICATE, "no CERTIFICATE block in the PEM file"),
                      keys_only=keys_only)
    return _parsed_certs(ders, Reason.BAD_PEM)


def _pkcs7(der: bytes, bad: Reason) -> list[bytes]:
    try:
        return [c.public_bytes(Encoding.DER) for c in pkcs7.load_der_pkcs7_certificates(der)]
    except ValueError as exc:
        raise FileProblem(bad, f"malformed PKCS#7 bundle: {exc}") from exc


def parse_pkcs12(data: bytes, password: Callable[[], bytes | None]) -> Parsed:
    """The certificates of a PKCS#12 file: its own certificate first, then the others in file order."""
    secret = password()
    try:
        loaded = pkcs12.load_pkcs12(data, secret)
    except ValueError as exc:
        # OpenSSL reports a wrong password and a damaged encrypted payload the same way (MAC mismatch);
        # a file whose structure is intact is taken to have the wrong password.
        if _der_well_formed(data):
            why = "no password file is configured" if secret is None else "the password does not open it"
            raise FileProblem(Reason.BAD_PASSPHRASE, f"PKCS#12: {why}") from exc
        raise FileProblem(Reason.BAD_PKCS12, f"malformed PKCS#12 file: {exc}") from exc
    certs_in = ([loaded.cert] if loaded.cert is not None else []) + list(loaded.additional_certs)
    if not certs_in:
        return Parsed(problem=FileProblem(Reason.NO_CERTIFICATE, "the PKCS#12 file holds no certificate"))
    return _parsed_certs([c.certificate.public_bytes(Encoding.DER) for c in certs_in], Reason.BAD_PKCS12)


def parse_bytes(data: bytes, password: Callable[[], bytes | None]) -> Parsed:
    """Detect the format from the content and parse it; raises FileProblem."""
    if b"-----BEGIN " in data:
        return parse_pem(data)
    if data[:1] == b"\x30":
        if _looks_like_pfx(data):
            return parse_pkcs12(data, password)
        if _looks_like_pkcs7(data):
            return _parsed_certs(_pkcs7(data, Reason.BAD_DER), Reason.BAD_DER)
        return _parsed_certs([data], Reason.BAD_DER)
    if not data.strip():
        raise FileProblem(Reason.NO_CERTIFICATE, "the file is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileProblem(Reason.BAD_DER, "binary data that is not DER") from None
    raise FileProblem(Reason.NO_CERTIFICATE, "text without any PEM block")


def expand(target: str) -> tuple[list[Path], bool]:
    """The files a target names, sorted, and whether the target named one file explicitly."""
    # os.path.isfile, not Path.is_file: it answers False instead of raising for an unreadable entry.
    if _GLOB_MAGIC.search(target):
        return sorted(Path(p) for p in glob.iglob(target, recursive=True) if os.path.isfile(p)), False
    path = Path(target)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and os.path.isfile(p)), False
    return [path], True


def _problem_for(exc: OSError, path: Path) -> FileProblem:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return FileProblem(Reason.FILE_NOT_FOUND, f"{path}: no such file")
    if isinstance(exc, PermissionError):
        return FileProblem(Reason.FILE_PERMISSION, f"{path}: permission denied")
    return FileProblem(Reason.FILE_READ, f"{path}: {exc.strerror or exc}")


def _read(path: Path) -> bytes:
    """The bytes of a regular file, at most MAX_FILE_BYTES; raises FileProblem."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _problem_for(exc, path) from exc
    with open(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem(Reason.FILE_READ, f"{path}: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise FileProblem(Reason.FILE_READ, f"{path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise _problem_for(exc, path) from exc
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        raise FileProblem(Reason.FILE_READ, f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return data


class _Password:
    """The module's PKCS#12 password, read at most once per probe and only when a PKCS#12 file needs it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._value: bytes | None = None
        self._read = False

    def token(self) -> tuple[object, ...]:
        """Identifies the password file's version, for the parse cache."""
        if self.path is None:
            return ()
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return (type(exc).__name__,)
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def __call__(self) -> bytes | None:
        if self.path is None:
            return None
        if not self._read:
            try:
                raw = self.path.read_bytes()
            except OSError as exc:
                raise FileProblem(Reason.BAD_PASSPHRASE, f"password file {self.path}: {exc.strerror}") from exc
            self._value, self._read = raw.removesuffix(b"\n").removesuffix(b"\r"), True
        return self._value


class FileProber:
    """Probes certificate files; holds the parse cache shared by all file targets."""

    def __init__(self, *, clock: Callable[[], float] = time.time, cache_size: int = 4096) -> None:
        self.clock = clock
        self._cache: certs.LRU[tuple[object, ...], Parsed] = certs.LRU(cache_size)
        self.parses = 0  # files parsed (cache misses), for tests and debugging

    async def probe(self, request: ProbeRequest) -> list[ProbeResult]:
        """One result per file the target names (never raises for a file's failure)."""
        started = self.clock()
        try:
            async with asyncio.timeout(request.timeout):
                return await asyncio.to_thread(self._probe_files, request, started)
        except TimeoutError:
            problem = FileProblem(Reason.FILE_READ, f"reading timed out after {request.timeout:g}s")
        except Exception as exc:
            log.exception("file probe failed unexpectedly", extra={"kv": {"target": request.target}})
            problem = FileProblem(Reason.INTERNAL, f"internal error: {exc!r}")
        return [self._failed(request.target, problem, started)]

    def _probe_files(self, request: ProbeRequest, started: float) -> list[ProbeResult]:
        try:
            paths, explicit = expand(request.target)
        except OSError as exc:
            return [self._failed(request.target, _problem_for(exc, Path(request.target)), started)]
        if not paths:
            return [self._failed(request.target, FileProblem(Reason.FILE_NOT_FOUND, "no file matches"), started)]
        if len(paths) > MAX_FILES:
            log.warning("too many files, reading the first ones",
                        extra={"kv": {"target": request.target, "files": len(paths), "limit": MAX_FILES}})
        password = _Password(request.module.file.password_file)
        results = []
        for path in paths[:MAX_FILES]:
            parsed = self._parsed(path, password)
            if parsed.keys_only and not explicit:
                continue  # tls.key next to tls.crt: not a certificate file, not an error
            results.append(self._result(request, str(path), parsed, started))
        return results or [self._failed(request.target, FileProblem(Reason.NO_CERTIFICATE,
                                                                    "only private keys found"), started)]

    def _parsed(self, path: Path, password: _Password) -> Parsed:
        try:
            st = os.stat(path)
        except OSError as exc:
            return Parsed(problem=_problem_for(exc, path))
        key = (str(path), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev, *password.token())
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            parsed = parse_bytes(_read(path), password)
        except FileProblem as problem:
            if problem.reason in (Reason.FILE_NOT_FOUND, Reason.FILE_PERMISSION, Reason.FILE_READ):
                return Parsed(problem=problem)  # not cached: nothing was parsed
            parsed = Parsed(problem=problem)
        self.parses += 1
        self._cache.put(key, parsed)
        return parsed

    def _result(self, request: ProbeRequest, path: str, parsed: Parsed, started: float) -> ProbeResult:
        if parsed.problem is not None:
            return self._failed(path, parsed.problem, started)
        return ProbeResult(
            success=True, path=path, chain=parsed.chain, detail="; ".join(parsed.errors),
            policy_violations=policy.evaluate(request.policies, parsed.chain, None, request.labels),
            started_at=started, duration=max(0.0, self.clock() - started),
        )

    def _failed(self, path: str, problem: FileProblem, started: float) -> ProbeResult:
        return ProbeResult(success=False, reason=problem.reason, detail=problem.detail, path=path,
                           started_at=started, duration=max(0.0, self.clock() - started))


@functools.cache
def default_prober() -> FileProber:
    """The process-wide file prober (shared parse cache)."""
    return FileProber()


async def probe(request: ProbeRequest) -> list[ProbeResult]:
    """The ``file`` ProbeFn: probe with the process-wide file prober."""
    return await default_prober().probe(request)
