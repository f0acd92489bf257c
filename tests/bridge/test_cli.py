"""`certpager bridge`: --config.check, and test-alert through the real endpoint (as a subprocess)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from bridge.app import Bridge
from bridge.cli import synthetic_payload
from bridge.config import load
from bridge.store.sqlite import SqliteStore
from certpager.cli import main
from tests.bridge.conftest import RecordingSink

REPO = Path(__file__).parents[2]


def test_config_check_valid_and_invalid(tmp_path, capsys):
    good = tmp_path / "good.yml"
    good.write_text("store: {path: x.db}\n")
    assert main(["bridge", "--config.file", str(good), "--config.check"]) == 0
    assert capsys.readouterr().out == f"{good}: config is valid; delivery: dry-run (no routing key)\n"
    bad = tmp_path / "bad.yml"
    bad.write_text("store: {kind: sqlite}\n")
    assert main(["bridge", "--config.file", str(bad), "--config.check"]) == 1
    assert capsys.readouterr().err == f"{bad}: store.kind: unknown key\n"


def test_config_check_reports_statuspage_and_refuses_a_bad_template(tmp_path, capsys):
    config = tmp_path / "bridge.yml"
    config.write_text("integrations:\n  statuspage:\n    page_id: page01\n"
                      "    component_map: {Gateway API: gw0000000001}\n")
    assert main(["bridge", "--config.file", str(config), "--config.check"]) == 0
    assert capsys.readouterr().out == (
        f"{config}: config is valid; delivery: dry-run (no routing key); "
        "Statuspage: dry-run (no API token), 1 service mapped to components\n"
    )
    config.write_text("integrations:\n  statuspage:\n    page_id: page01\n"
                      "    templates: {body: 'Down: {{ labels.service }'}\n")
    assert main(["bridge", "--config.file", str(config), "--config.check"]) == 1
    assert capsys.readouterr().err == (
        f"{config}: integrations.statuspage.templates.body: unbalanced {{{{ or }}}}: a placeholder is written "
        "{{ name }}\n"
    )


def test_config_check_lists_runbook_actions_and_refuses_an_unknown_one_without_printing_secrets(tmp_path, capsys):
    config = tmp_path / "bridge.yml"
    (tmp_path / "hook").write_text("https://hooks.slack.example/services/SECRET-in-file\n")
    actions = ("actions:\n  tell: {type: notify, url_file: hook}\n"
               "  pm: {type: postmortem, directory: pm}\n")
    config.write_text(actions + "automation:\n  certificate_expired: {actions: [pm, tell], on_resolve: [tell]}\n")
    assert main(["bridge", "--config.file", str(config), "--config.check"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("; runbook actions: pm (postmortem), tell (notify)\n") and "SECRET" not in out
    config.write_text(actions + "automation:\n  certificate_expired: {actions: [pm, page_security]}\n")
    assert main(["bridge", "--config.file", str(config), "--config.check"]) == 1
    assert capsys.readouterr().err == (
        f"{config}: automation.certificate_expired.actions: unknown action 'page_security' (actions: pm, tell)\n"
    )


def test_a_bad_listen_address_flag_exits_2_before_starting(tmp_path, capsys):
    config = tmp_path / "bridge.yml"
    config.write_text(f"store: {{path: {tmp_path / 'bridge.db'}}}\n")
    assert main(["bridge", "--config.file", str(config), "--web.listen-address", "nowhere"]) == 2
    assert capsys.readouterr().err.startswith("--web.listen-address: expected a listen address like")
    assert not (tmp_path / "bridge.db").exists()  # refused before the store was opened


def test_synthetic_payload_is_a_v4_webhook():
    from datetime import UTC, datetime

    data = synthetic_payload(alert_class="certificate_expired", certificate="example.com", environment="",
                             severity="", resolve=False, now=datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    (alert,) = data["alerts"]
    assert (data["version"], data["status"], alert["status"]) == ("4", "firing", "firing")
    assert alert["labels"] == {"alertname": "CertpagerTestAlert", "class": "certificate_expired",
                               "certificate": "example.com", "test": "true"}
    assert alert["startsAt"] == "2026-11-22T12:00:00.000000Z"


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "certpager", "bridge", *args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode()


async def test_test_alert_fires_and_resolves_through_the_endpoint(serve_app, tmp_path):
    (tmp_path / "token").write_text("tok")
    config = tmp_path / "bridge.yml"
    config.write_text("server:\n  auth: {bearer_token_file: token}\n")
    sink = RecordingSink()
    app = Bridge(load(config, env={}), store=SqliteStore(tmp_path / "b.db"), sinks={"pagerduty": sink}).app
    client = await serve_app(app)
    url = str((await client.get("/-/healthy")).url.origin())  # the served app's base URL, as the CLI takes it
    base = ("test-alert", "--class", "certificate_expired", "--certificate", "example.com",
            "--environment", "production", "--url", url)
    code, out = await run_cli(*base)
    assert code == 1
    assert '401 {"error": "unauthorized", "status": "error"}' in out.splitlines()
    assert "the bridge wants credentials: pass its config with --config.file FILE" in out
    (tmp_path / "stale.yml").write_text("server:\n  auth: {bearer_token: not-the-token}\n")
    code, out = await run_cli(*base, "--config.file", str(tmp_path / "stale.yml"))
    assert code == 1 and f"the bridge refused the credentials of {tmp_path / 'stale.yml'} (server.auth)" in out
    assert "not-the-token" not in out
    code, out = await run_cli(*base, "--config.file", str(config))
    assert code == 0, out
    assert out.strip().splitlines()[-1] == (
        '200 {"alerts": 1, "duplicates": 0, "events": 1, "new": 1, "receipt": 1, "stale": 0, "status": "accepted"}')
    code, out = await run_cli(*base, "--resolve", "--config.file", str(config))
    assert code == 0, out
    deadline = time.monotonic() + 5
    while len(sink.seen) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    (k1, a1), (k2, a2) = sink.actions()
    assert (a1, a2) == ("trigger", "resolve") and k1 == k2
    assert k1.startswith("cert-example-com-production-expired-")
    assert sink.seen[0].payload["summary"] == "ERROR: Certificate Expired - example.com (production)"


async def test_test_alert_reports_an_unreachable_bridge():
    code, out = await run_cli("test-alert", "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert code == 1
    assert out.startswith("cannot reach the bridge at http://127.0.0.1:9/api/v1/alerts/alertmanager: ")


async def test_sighup_rereads_the_token_file_of_a_running_bridge(tmp_path):
    import signal

    import aiohttp

    from tests.bridge.conftest import alert, body
    from tests.bridge.test_crash import bridge_process, free_port

    port = free_port()
    token = tmp_path / "token"
    token.write_text("first")
    config = tmp_path / "bridge.yml"
    config.write_text(f"server:\n  listen_address: 127.0.0.1:{port}\n  auth: {{bearer_token_file: token}}\n"
                      f"store: {{path: {tmp_path / 'b.db'}}}\n")
    url = f"http://127.0.0.1:{port}/api/v1/alerts/alertmanager"
    async with bridge_process(config, port, tmp_path / "log") as proc, aiohttp.ClientSession() as session:

        async def status(tok: str) -> int:
            async with session.post(url, data=body(alert()), headers={"Authorization": f"Bearer {tok}"}) as resp:
                return resp.status

        assert await status("first") == 200
        token.write_text("second")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while await status("second") != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload the token"
            await asyncio.sleep(0.05)
        assert await status("first") == 401
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert "certpager_bridge_config_last_reload_successful 1.0" in await resp.text()


async def test_a_second_bridge_on_the_same_store_refuses_to_start(tmp_path):
    db = tmp_path / "b.db"
    store = SqliteStore(db)
    await store.open()
    try:
        config = tmp_path / "bridge.yml"
        config.write_text(f"server: {{listen_address: '127.0.0.1:0'}}\nstore: {{path: {db}}}\n")
        code, out = await run_cli("--config.file", str(config))
        assert code == 1
        assert out.strip().splitlines()[-1] == (
            f"cannot start: cannot open store {db}: another bridge process holds it"
            " (only one may deliver from an outbox)")
    finally:
        await store.close()


async def test_test_alert_refuses_an_unknown_class_before_sending():
    # --url points nowhere: an unknown class must fail in argument parsing, before any request.
    code, out = await run_cli("test-alert", "--class", "bogus", "--url", "http://127.0.0.1:9")
    assert code == 2
    assert "argument --class: invalid choice: 'bogus'" in out and "cannot reach" not in out


def undocumented_options(help_text: str) -> list[str]:
    """Options of an argparse --help page with no help text (nothing after them, no continuation line)."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        if not line.startswith("  -"):
            continue
        head, _, rest = line.strip().partition("  ")
        following = lines[i + 1] if i + 1 < len(lines) else ""
        continued = following.startswith("   ") and not following.strip().startswith("-")
        if not rest.strip() and not continued:
            missing.append(head)
    return [m for m in missing if not m.startswith("-h")]


async def test_every_bridge_option_has_help():
    for args in (("--help",), ("test-alert", "--help")):
        code, out = await run_cli(*args)
        assert code == 0 and "--config.file" in out
        assert undocumented_options(out) == [], args
