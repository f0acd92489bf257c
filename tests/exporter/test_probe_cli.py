"""``certpager probe``: report, JSON and exit codes against loopback servers."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import socket

import pytest

from certpager import cli, pki
from certpager.tlsserver import TLSServer
from exporter import probe_cli
from tests.exporter.conftest import LEAF_NOT_AFTER, NOW, ts


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe_cli.configure(parser)
    return parser.parse_args(argv)


async def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.to_thread(probe_cli.run, parse(*argv), out=out)
    return code, out.getvalue()


def serve(test_pki, name: str) -> TLSServer:
    return TLSServer(test_pki.files[name].cert_file, test_pki.files[name].key_file)


async def test_trusted_chain_report_and_exit_0(test_pki):
    async with serve(test_pki, "valid") as server:
        code, text = await run(server.address, "--cafile", str(test_pki.ca_file), "--servername", "localhost")
    assert code == 0
    assert "#0 leaf         localhost" in text
    assert "#1 intermediate certpager Test Intermediate" in text
    not_after = probe_cli._when(ts(LEAF_NOT_AFTER))
    assert f"not after   {not_after}  (59 days left)" in text or f"not after   {not_after}  (60 days left)" in text
    assert "key         ec 256   signature ecdsa-with-SHA256" in text
    assert "trust     OK" in text and "hostname  OK  [localhost]" in text
    assert text.endswith("result    OK (exit 0)\n")


async def test_untrusted_chain_exit_3(test_pki):
    async with serve(test_pki, "expired") as server:
        code, text = await run(server.address, "--cafile", str(test_pki.ca_file))
    assert code == probe_cli.EXIT_UNTRUSTED
    assert "trust     FAILED: expired" in text
    assert "EXPIRED 2 days ago" in text


async def test_wrong_name_exit_3(test_pki):
    async with serve(test_pki, "valid") as server:
        code, text = await run(server.address, "--cafile", str(test_pki.ca_file), "--servername", "other.test")
    assert code == probe_cli.EXIT_UNTRUSTED
    assert "hostname  FAILED: name not in the leaf SANs  [other.test]" in text


async def test_insecure_skips_verdicts(test_pki):
    async with serve(test_pki, "self_signed") as server:
        code, text = await run(server.address, "--insecure")
    assert code == 0
    assert "trust     not checked" in text


async def test_json_output(test_pki):
    async with serve(test_pki, "valid") as server:
        code, text = await run(server.address, "--cafile", str(test_pki.ca_file), "--json")
    doc = json.loads(text)
    assert (code, doc["exit_code"], doc["target"]) == (0, 0, server.address)
    (result,) = doc["results"]
    assert (result["success"], result["chain_verified"], result["hostname_verified"]) == (True, True, True)
    assert [(c["position"], c["index"]) for c in result["chain"]] == [("leaf", 0), ("intermediate", 1)]
    assert result["chain"][0]["not_after"] == ts(LEAF_NOT_AFTER)
    assert result["earliest_expiry"] == ts(LEAF_NOT_AFTER)
    assert set(result["durations"]) == {"resolve", "connect", "handshake"}
    leaf = test_pki.chains["valid"].leaf
    assert result["chain"][0]["fingerprint_sha256"] == hashlib.sha256(leaf.der).hexdigest()
    assert "sha256" not in result["chain"][0]  # the digest bytes are internal


async def test_refused_exit_1():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, text = await run(f"127.0.0.1:{port}", "--timeout", "2s")
    assert code == probe_cli.EXIT_PROBE_FAILED
    assert "FAILED    refused: connection refused by 127.0.0.1" in text
    assert "address   127.0.0.1   resolve" in text


async def test_policies_from_config_exit_4(test_pki, tmp_path):
    config = tmp_path / "exporter.yml"
    config.write_text(f"modules:\n  lab:\n    tls:\n      ca_file: {test_pki.ca_file}\n"
                      "policies:\n  min_rsa_bits: 4096\n  max_validity_days: 398\n")
    async with serve(test_pki, "rsa") as server:
        code, text = await run(server.address, "--config", str(config), "--module", "lab")
    assert code == probe_cli.EXIT_POLICY
    assert "policies  min_rsa_bits VIOLATED, max_validity_days ok" in text


async def test_bad_config_and_arguments_exit_2(tmp_path, capsys):
    config = tmp_path / "bad.yml"
    config.write_text("modules:\n  lab:\n    kind: nonsense\n")
    code, _ = await run("127.0.0.1:1", "--config", str(config))
    assert code == probe_cli.EXIT_USAGE
    assert str(config) in capsys.readouterr().err
    code, _ = await run("127.0.0.1:1", "--timeout", "soon")
    assert code == probe_cli.EXIT_USAGE
    assert "expected a duration" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (("127.0.0.1",), "expected host:port"),
    (("127.0.0.1:1", "--cafile", "/nonexistent/ca.pem"), "--cafile: cannot read /nonexistent/ca.pem"),
    (("127.0.0.1:1", "--servername", "a\r\nb"), "--servername: expected a host name"),
    (("127.0.0.1:1", "--timeout=-5s"), "--timeout: expected a non-negative duration"),
])
def test_usage_errors_exit_2_naming_the_flag(argv, message, capsys):
    assert probe_cli.run(parse(*argv)) == probe_cli.EXIT_USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "seconds"), [("5", 5.0), ("5s", 5.0), ("2.5", 2.5), ("1500ms", 1.5)])
def test_timeout_takes_the_config_duration_syntax(flag, seconds):
    assert probe_cli.build_request(parse("127.0.0.1:1", "--timeout", flag)).timeout == seconds


async def test_through_the_certpager_command(test_pki, capsys):
    async with serve(test_pki, "valid") as server:
        code = await asyncio.to_thread(cli.main, ["probe", server.address, "--cafile", str(test_pki.ca_file)])
    assert code == 0
    assert "result    OK (exit 0)" in capsys.readouterr().out


def test_failed_resolution_shows_no_address():
    from exporter.probes.base import ProbeResult, Reason

    request = probe_cli.build_request(parse("gone.invalid:443"))
    result = ProbeResult(success=False, reason=Reason.DNS, detail="cannot resolve")
    text = probe_cli.render_text(request, [result], ts(NOW))
    assert "address   -   \nFAILED    dns: cannot resolve\n" in text
    assert text.endswith("result    NOT OK (exit 1)\n")


def test_days_left_rounding():
    now = ts(NOW)
    assert probe_cli._days_left(now + 86400 * 2 - 1, now) == "1 day left"
    assert probe_cli._days_left(now + 86400 - 1, now) == "less than a day left"
    assert probe_cli._days_left(now - 1, now) == "EXPIRED less than a day ago"
    assert probe_cli._days_left(now - 86400, now) == "EXPIRED 1 day ago"
    assert probe_cli._days_left(now - 86400 * 3, now) == "EXPIRED 3 days ago"


def test_build_request_from_flags(tmp_path):
    (tmp_path / "ca.pem").write_text("x\n")
    request = probe_cli.build_request(parse(
        "mail.test:587", "--starttls", "smtp", "--servername", "smtp.test", "--cafile", str(tmp_path / "ca.pem"),
        "--timeout", "1500ms", "--all-ips"))
    module = request.module
    assert (module.kind, module.starttls.protocol, module.probe_all_ips) == ("starttls", "smtp", True)
    assert (module.tls.server_name, module.tls.ca_file, request.timeout) == ("smtp.test", tmp_path / "ca.pem", 1.5)


def test_unknown_module_in_config_is_usage_error(tmp_path, capsys):
    config = tmp_path / "exporter.yml"
    config.write_text("modules: {}\n")
    assert probe_cli.run(parse("127.0.0.1:1", "--config", str(config), "--module", "nope")) == probe_cli.EXIT_USAGE
    assert "--module 'nope' is not in" in capsys.readouterr().err


async def test_weak_keys_and_signatures_are_flagged_without_a_config(test_pki, tmp_path):
    # RSA-1024 leaf signed with SHA-1 under an RSA intermediate: what an OpenSSL client refuses.
    rsa_inter = test_pki.chains["sha1"].intermediates[0]
    chain = pki.Chain(leaf=pki.make_leaf(rsa_inter, ("localhost",), key="rsa1024", hash="sha1"),
                      intermediates=(rsa_inter,), root=test_pki.root)
    files = chain.write(tmp_path)
    async with TLSServer(files.cert_file, files.key_file) as server:
        code, text = await run(server.address, "--cafile", str(test_pki.ca_file), "--servername", "localhost")
        assert code == probe_cli.EXIT_UNTRUSTED
        assert "trust     FAILED: weak_key (certificate 0 (CN=localhost): its RSA key of 1024 bits is about 80" in text
        assert "WEAK KEY: about 80 bits, security level 2 needs 112" in text
        assert "WEAK SIGNATURE: sha1WithRSAEncryption is below security level 2" in text
        assert "min_rsa_bits VIOLATED" in text and "forbidden_signature_algorithm VIOLATED" in text
        # Trust not checked: the level-2 policies still make the exit non-zero.
        code, text = await run(server.address, "--insecure", "--json")
        assert code == probe_cli.EXIT_POLICY
        assert json.loads(text)["results"][0]["policy_violations"]["min_rsa_bits"] is True
        # At security level 0 an OpenSSL client accepts it: trusted, but the policies still say why not.
        code, text = await run(server.address, "--cafile", str(test_pki.ca_file), "--servername", "localhost",
                               "--security-level", "0")
        assert code == probe_cli.EXIT_POLICY and "trust     OK" in text


async def test_an_unreadable_certificate_is_named_in_the_report(tmp_path):
    from tests.exporter import derkit, pki_shapes

    root = pki_shapes.make("cli dup root", None, ca=True)
    inter = pki_shapes.make("cli dup int", root, ca=True, edit=derkit.with_duplicate_extension)
    leaf = pki_shapes.make("localhost", inter, ca=False)
    (tmp_path / "chain.pem").write_bytes(leaf.pem + inter.pem)
    (tmp_path / "key.pem").write_bytes(leaf.key_pem)
    async with TLSServer(tmp_path / "chain.pem", tmp_path / "key.pem") as server:
        code, text = await run(server.address, "--insecure")
    assert code == probe_cli.EXIT_OK
    assert "#0 leaf         localhost" in text and "#1 " not in text
    assert "  certificate 1 cannot be read: extension 2.5.29.19 appears twice (at byte " in text
