"""``certpager report`` over a scripted week with an injected clock: pages in and off working hours on both
sides of Europe/Berlin's 2027 daylight saving change, acknowledgements from PagerDuty (a webhook) and from
Alertmanager (a person's silence, seen by the poller), resolves from both sides. Checked to the second in
every format; the CSV loads with the csv module as written."""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import io
import json
from datetime import datetime
from zoneinfo import ZoneInfo

from bridge import acksync, audit, report
from bridge.alertmanager import parse
from bridge.config import Analytics
from bridge.decisions import Policy
from bridge.keys import incident_key
from bridge.pagerduty_webhook import parse as parse_webhook
from bridge.sinks.base import OutboxItem
from bridge.store.base import Receipt
from bridge.store.sqlite import SqliteStore
from tests.bridge.conftest import alert, body

BERLIN = ZoneInfo("Europe/Berlin")
SETTINGS = acksync.Settings(silence_max=3600.0, rest=False)
HOURS = Analytics(timezone="Europe/Berlin").working()


def local(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


SINCE, UNTIL, NOW = local("2027-03-22T00:00:00"), local("2027-03-30T00:00:00"), local("2027-04-01T12:00:00")
A = {"certificate": "api.example.com", "issuer": "R3"}
B = {"certificate": "db.example.com", "cls": "certificate_expiring_7_days", "issuer": "Corp CA"}
C = {"certificate": "api.example.com", "environment": "staging", "issuer": "R3"}
D = {"certificate": "www.example.com", "cls": "verify_failed"}


def key(labels) -> str:
    return incident_key(labels.get("cls", "certificate_expired"), labels["certificate"],
                        labels.get("environment", "production"))


async def webhook(store, labels, status, at, starts_at):
    raw = body(alert(status, starts_at=starts_at, **labels))
    await store.ingest(Receipt("alertmanager", raw, local(at), peer="10.0.0.7"), parse(raw), Policy(),
                       sinks=["pagerduty"])


async def pagerduty(store, labels, event_type, at, who):
    data = json.dumps({"event": {
        "id": f"{event_type}-{at}", "event_type": event_type, "occurred_at": "2027-03-24T09:04:10Z",
        "agent": {"type": "user_reference", "summary": who},
        "data": {"type": "incident", "id": "PINC", "incident_key": key(labels), "html_url": "https://pd/i/PINC"},
    }}).encode()
    event = parse_webhook(data, {"x-webhook-id": f"{event_type}-{at}"})
    now = local(at)
    await store.sync([key(labels)], lambda s: acksync.on_pagerduty_event(s, event, [key(labels)], SETTINGS, now=now),
                     now=now)


async def silence(store, labels, at, who):
    """A person's silence in Alertmanager, as the poller sees it."""
    fingerprint = alert(**labels)["fingerprint"]
    snapshot = acksync.Snapshot(
        alerts={fingerprint: acksync.AlertView(fingerprint, "suppressed", ("sil-1",))},
        silences={"sil-1": acksync.SilenceView("sil-1", who, "renewing it", "active")},
    )
    now = local(at)
    await store.sync(None, lambda s: acksync.on_poll(s, snapshot, now=now, vanished_after=300.0), now=now)


async def scripted_week(store) -> None:
    # Wednesday, in working hours (CET): acknowledged in PagerDuty after 4:10, resolved in Alertmanager.
    await webhook(store, A, "firing", "2027-03-24T10:00:00", "2027-03-24T08:59:00Z")
    await pagerduty(store, A, "incident.acknowledged", "2027-03-24T10:04:10", "Jane Doe")
    await webhook(store, A, "resolved", "2027-03-24T11:02:03", "2027-03-24T08:59:00Z")
    # Thursday 03:00: a new occurrence, off hours, nobody acknowledges, resolved after 5 minutes.
    await webhook(store, A, "firing", "2027-03-25T03:00:00", "2027-03-25T01:59:00Z")
    await webhook(store, A, "resolved", "2027-03-25T03:05:00", "2027-03-25T01:59:00Z")
    # Friday 17:30, off hours: a person silences it in Alertmanager, another resolves it in PagerDuty.
    await webhook(store, B, "firing", "2027-03-26T17:30:00", "2027-03-26T16:29:00Z")
    await silence(store, B, "2027-03-26T17:40:00", "bob")
    await pagerduty(store, B, "incident.resolved", "2027-03-26T18:00:00", "Jane Doe")
    # Sunday 2027-03-28 02:00 CET -> 03:00 CEST. Monday 08:59:59 CEST is off hours, 09:00:00 is not
    # (in CET they would be 07:59:59 and 08:00:00: both off hours).
    await webhook(store, C, "firing", "2027-03-29T08:59:59", "2027-03-29T06:59:00Z")
    await webhook(store, D, "firing", "2027-03-29T09:00:00", "2027-03-29T06:59:30Z")
    await pagerduty(store, D, "incident.acknowledged", "2027-03-29T09:00:01", "Sam")
    await webhook(store, C, "resolved", "2027-03-29T09:01:59", "2027-03-29T06:59:00Z")
    # Runbook actions of A's page, as the outbox records their deliveries: one ran, one failed for good.
    item = OutboxItem(9, "actions", key(A), {"action": "trigger_renewal", "phase": "open", "event": {
        "component": "api.example.com", "group": "production", "event_class": "certificate_expired"}}, 0, 0.0)
    await store.record_audit([
        audit.delivery_entry(item, local("2027-03-24T10:00:01"), audit.DELIVERED, "the action accepted it"),
        audit.delivery_entry(dataclasses.replace(item, payload={**item.payload, "action": "notify"}),
                             local("2027-03-24T10:00:02"), audit.DEAD_LETTER, "the action said 400 no such team"),
    ])
    # After the window: not counted.
    await webhook(store, C, "firing", "2027-03-31T10:00:00", "2027-03-31T07:59:00Z")


EXPECTED_CSV = [
    ["section", "name", "value"],
    ["window", "since", "2027-03-22T00:00:00+01:00"],
    ["window", "until", "2027-03-30T00:00:00+02:00"],
    ["window", "timezone", "Europe/Berlin"],
    ["window", "working_hours", "09:00-17:00 mon,tue,wed,thu,fri"],
    ["pages", "total", "5"],
    ["pages", "off_hours", "3"],
    ["pages", "still_open", "1"],
    ["mtta", "count", "3"],
    ["mtta", "mean_seconds", "283.667"],
    ["mtta", "p50_seconds", "250"],
    ["mtta", "p90_seconds", "600"],
    ["mttr", "count", "4"],
    ["mttr", "mean_seconds", "1485.75"],
    ["mttr", "p50_seconds", "300"],
    ["mttr", "p90_seconds", "3723"],
    ["acknowledged_from", "pagerduty", "2"],
    ["acknowledged_from", "alertmanager", "1"],
    ["resolved_from", "alertmanager", "3"],
    ["resolved_from", "pagerduty", "1"],
    ["by_class", "certificate_expired", "3"],
    ["by_class", "certificate_expiring_7_days", "1"],
    ["by_class", "verify_failed", "1"],
    ["by_issuer", "R3", "3"],
    ["by_issuer", "(unknown)", "1"],
    ["by_issuer", "Corp CA", "1"],
    ["by_environment", "production", "4"],
    ["by_environment", "staging", "1"],
    ["deliveries", "delivered", "1"],
    ["deliveries", "retry", "0"],
    ["deliveries", "held", "0"],
    ["deliveries", "dead_letter", "1"],
    ["noisiest", "api.example.com (production)", "2"],
    ["noisiest", "api.example.com (staging)", "1"],
    ["noisiest", "db.example.com (production)", "1"],
    ["noisiest", "www.example.com (production)", "1"],
    ["week_pages", "2027-03-22", "3"],
    ["week_off_hours_pages", "2027-03-22", "2"],
    ["week_pages", "2027-03-29", "2"],
    ["week_off_hours_pages", "2027-03-29", "1"],
    ["actions", "run", "1"],
    ["actions", "failed", "1"],
]

EXPECTED_TABLE = """\
certpager report: 2027-03-22T00:00:00+01:00 to 2027-03-30T00:00:00+02:00
time zone Europe/Berlin, working hours 09:00-17:00 mon,tue,wed,thu,fri

pages                5   off hours 3   still open 1
MTTA                 mean 0:04:44   p50 0:04:10   p90 0:10:00   (3 incidents)
MTTR                 mean 0:24:46   p50 0:05:00   p90 1:02:03   (4 incidents)
acknowledged from    pagerduty 2, alertmanager 1
resolved from        alertmanager 3, pagerduty 1

by class
  certificate_expired          3
  certificate_expiring_7_days  1
  verify_failed                1

by issuer
  R3         3
  (unknown)  1
  Corp CA    1

by environment
  production  4
  staging     1

noisiest certificates
  api.example.com (production)  2
  api.example.com (staging)     1
  db.example.com (production)   1
  www.example.com (production)  1

pages per on-call week (weeks from Monday, Europe/Berlin)
  2027-03-22   3 pages, 2 off hours
  2027-03-29   2 pages, 1 off hours

deliveries           delivered 1, retry 0, held 0, dead letter 1
actions              run 1, failed 1
"""


async def test_the_report_of_a_scripted_week_on_every_backend(any_store):
    await scripted_week(any_store)
    entries = await any_store.audit_trail(since=SINCE)
    built = report.build(entries, since=SINCE, until=UNTIL, hours=HOURS)
    assert [list(row) for row in report.csv_rows(built)] == EXPECTED_CSV[1:]


async def test_the_command_in_every_format(tmp_path):
    store = SqliteStore(tmp_path / "b.db")
    await store.open()
    try:
        await scripted_week(store)
    finally:
        await store.close()
    config = tmp_path / "bridge.yml"
    config.write_text(f"store:\n  path: {tmp_path / 'b.db'}\nanalytics:\n  timezone: Europe/Berlin\n")

    async def run(fmt: str, capsys_out: io.StringIO) -> str:
        def call() -> int:
            import contextlib

            with contextlib.redirect_stdout(capsys_out):
                return report.run(argparse.Namespace(config_file=str(config), since="2027-03-22T00:00:00+01:00",
                                                     until="2027-03-30T00:00:00+02:00", format=fmt),
                                  now=lambda: NOW)

        assert await asyncio.to_thread(call) == 0
        return capsys_out.getvalue()

    assert list(csv.reader(io.StringIO(await run("csv", io.StringIO())))) == EXPECTED_CSV
    assert await run("table", io.StringIO()) == EXPECTED_TABLE
    data = json.loads(await run("json", io.StringIO()))
    assert (data["pages"], data["off_hours"], data["still_open"]) == (5, 3, 1)
    assert data["mtta"] == {"count": 3, "mean": 851 / 3, "p50": 250.0, "p90": 600.0}
    assert data["mttr"] == {"count": 4, "mean": 1485.75, "p50": 300.0, "p90": 3723.0}
    assert data["weeks"] == [{"week": "2027-03-22", "pages": 3, "off_hours": 2},
                             {"week": "2027-03-29", "pages": 2, "off_hours": 1}]
    assert data["noisiest"][0] == {"certificate": "api.example.com", "environment": "production", "pages": 2}
    assert data["acknowledged_from"] == {"pagerduty": 2, "alertmanager": 1}
    assert (data["since"], data["until"]) == (SINCE, UNTIL)


def test_off_hours_follow_the_zone_across_daylight_saving():
    assert HOURS.off_hours(local("2027-03-29T08:59:59")) and not HOURS.off_hours(local("2027-03-29T09:00:00"))
    assert not HOURS.off_hours(local("2027-10-29T16:59:59")) and HOURS.off_hours(local("2027-10-29T17:00:00"))
    assert HOURS.off_hours(local("2027-03-27T12:00:00"))  # a Saturday
    assert HOURS.week(local("2027-03-28T23:59:59")) == "2027-03-22"  # Sunday night still that week
    assert HOURS.week(local("2027-03-29T00:00:00")) == "2027-03-29"
