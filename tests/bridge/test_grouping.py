"""Grouping and correlation (``grouping: type: intelligent``): the pure decision, then on both store backends."""

from __future__ import annotations

import asyncio

import pytest

import tests.bridge.test_statuspage_e2e as e2e
from bridge import history
from bridge.alertmanager import parse
from bridge.app import ALERTMANAGER_PATH
from bridge.decisions import Decision, Policy, State, decide
from bridge.events import Action, Severity
from bridge.store.base import Receipt
from tests.bridge.conftest import T1, alert, body
from tests.bridge.test_statuspage_e2e import GATEWAY, TOKEN, WEB, start, until, write_config
from tests.fakes.pagerduty import run_fake_pagerduty
from tests.fakes.statuspage import run_fake_statuspage

EXP, RF, E7 = "certificate_expired", "renewal_failed", "certificate_expiring_7_days"
LE = "Let's Encrypt R3"
POLICY = Policy(
    severity_mapping={EXP: Severity.CRITICAL, RF: Severity.CRITICAL, E7: Severity.ERROR},
    correlation=frozenset({EXP, RF, "deployment_failed"}),
    group_fields=("environment", "issuer"),
    group_window=300.0,
)


class Bridge:
    """decide() with its rows kept between notifications, as a store keeps them; ``at`` sets the clock."""

    def __init__(self, policy: Policy = POLICY) -> None:
        self.policy = policy
        self.occurrences: dict = {}
        self.incidents: dict = {}
        self.groups: dict = {}

    def send(self, *alerts, at: float) -> Decision:
        decision = decide(State(self.occurrences, self.incidents, self.groups), parse(body(*alerts)), self.policy,
                          now=at)
        self.occurrences.update({(o.fingerprint, o.starts_at): o for o in decision.occurrences})
        self.incidents.update({i.key: i for i in decision.incidents})
        self.groups.update({g.key: g for g in decision.groups})
        return decision


def rf(cert: str, status: str = "firing", *, issuer: str = LE, env: str = "production", **kw) -> dict:
    return alert(status, cls=RF, certificate=cert, environment=env, issuer=issuer, **kw)


def shown(decision: Decision) -> list[tuple[str, str, bool]]:
    return [(e.key, e.action.value, e.update) for e in decision.events]


def test_correlated_alerts_within_the_window_are_one_incident_with_a_summary_and_members():
    b = Bridge()
    first = b.send(rf("a.example.com"), at=1000.0)
    [opened] = first.events
    assert opened.action == Action.TRIGGER and not opened.update and opened.key.startswith("certgroup-")
    assert opened.summary == "1 certificate: renewal failed — production, issuer Let's Encrypt R3"
    second = b.send(rf("b.example.com"), rf("c.example.com"), at=1300.0)  # the window's last instant
    [joined] = second.events
    assert (joined.key, joined.action, joined.update) == (opened.key, Action.TRIGGER, True)
    assert joined.summary == "3 certificates: renewal failed — production, issuer Let's Encrypt R3"
    assert joined.severity == Severity.CRITICAL and joined.component == "3 certificates"
    details = joined.custom_details
    assert details["certificates"] == 3 and details["issuer"] == LE and details["environment"] == "production"
    assert [m["certificate"] for m in details["members"]] == ["a.example.com", "b.example.com", "c.example.com"]
    assert details["members_not_shown"] == 0
    assert "joined: b.example.com, c.example.com" in joined.note


def test_an_alert_just_after_the_window_starts_a_new_group():
    b = Bridge()
    [first] = b.send(rf("a.example.com"), at=1000.0).events
    [second] = b.send(rf("b.example.com"), at=1300.001).events
    assert second.key != first.key and not second.update
    assert second.summary.startswith("1 certificate:")


def test_other_issuer_environment_or_uncorrelated_class_is_not_grouped():
    b = Bridge()
    [group] = b.send(rf("a.example.com"), at=1000.0).events
    d = b.send(rf("b.example.com", issuer="ZeroSSL"), rf("c.example.com", env="staging"),
               alert(cls=E7, certificate="d.example.com", issuer=LE), at=1001.0)
    keys = [e.key for e in d.events]
    assert group.key not in keys and len(set(keys)) == 3
    [single] = [e for e in d.events if e.event_class == E7]
    assert single.key.startswith("cert-d-example-com-production-expiring-7d")  # one incident per certificate


def test_members_are_bounded_with_a_count_of_the_rest():
    b = Bridge()
    d = b.send(*(rf(f"h{n:02d}.example.com") for n in range(25)), at=1000.0)
    [event] = d.events
    assert event.summary.startswith("25 certificates:")
    assert len(event.custom_details["members"]) == 20 and event.custom_details["members_not_shown"] == 5


def test_partial_resolves_update_and_the_last_one_resolves_the_group():
    b = Bridge()
    [opened] = b.send(rf("a.example.com"), rf("b.example.com"), at=1000.0).events
    [partial] = b.send(rf("a.example.com", "resolved"), at=1100.0).events
    assert (partial.key, partial.action, partial.update) == (opened.key, Action.TRIGGER, True)
    assert partial.summary.startswith("1 certificate:") and "resolved: a.example.com" in partial.note
    [closed] = b.send(rf("b.example.com", "resolved"), at=1200.0).events
    assert (closed.key, closed.action) == (opened.key, Action.RESOLVE)
    # The same certificate firing anew (a new occurrence) after the group closed: a new group, within the old window.
    [again] = b.send(rf("a.example.com", starts_at=T1), at=1250.0).events
    assert again.action == Action.TRIGGER and not again.update and again.key != opened.key


def test_a_late_joiner_after_the_window_does_not_join_but_the_group_stays_open():
    b = Bridge()
    [first] = b.send(rf("a.example.com"), at=1000.0).events
    [second] = b.send(rf("b.example.com"), at=2000.0).events
    assert second.key != first.key
    [closing_first] = b.send(rf("a.example.com", "resolved"), at=2001.0).events
    assert (closing_first.key, closing_first.action) == (first.key, Action.RESOLVE)


def test_ha_duplicates_of_a_member_change_nothing():
    b = Bridge()
    b.send(rf("a.example.com"), rf("b.example.com"), at=1000.0)
    again = b.send(rf("a.example.com"), at=1001.0)
    assert again.events == [] and again.duplicates == 1
    b.send(rf("a.example.com", "resolved"), at=1002.0)
    stale = b.send(rf("a.example.com"), at=1003.0)  # the slower peer's stale firing snapshot
    assert stale.events == [] and stale.stale == 1


def test_a_group_never_shows_a_certificate_at_two_rungs():
    policy = Policy(correlation=frozenset({E7, EXP}), group_fields=("environment", "issuer"))
    b = Bridge(policy)
    [opened] = b.send(alert(cls=E7, certificate="a.example.com", issuer=LE),
                      alert(cls=E7, certificate="b.example.com", issuer=LE), at=1000.0).events
    [moved] = b.send(alert(cls=EXP, certificate="a.example.com", issuer=LE), at=1010.0).events
    assert moved.key == opened.key and moved.update
    members = moved.custom_details["members"]
    assert sorted((m["certificate"], m["class"]) for m in members) == [("a.example.com", EXP), ("b.example.com", E7)]
    assert moved.summary.startswith("2 certificates: expiring in 7 days, expired")
    # Back down the ladder: a's expired resolves while its 7-day alert still fires; a is shown once, at 7 days.
    [down] = b.send(alert("resolved", cls=EXP, certificate="a.example.com", issuer=LE), at=1020.0).events
    assert sorted((m["certificate"], m["class"]) for m in down.custom_details["members"]) == [
        ("a.example.com", E7), ("b.example.com", E7)]


def test_the_ladder_resolves_an_ungrouped_lower_rung_when_the_grouped_one_opens():
    b = Bridge()
    [low] = b.send(alert(cls=E7, certificate="a.example.com", issuer=LE), at=1000.0).events
    d = b.send(alert(cls=EXP, certificate="a.example.com", issuer=LE), at=1010.0)
    assert [(e.key == low.key, e.key.startswith("certgroup-"), e.action.value) for e in d.events] == [
        (False, True, "trigger"), (True, False, "resolve")]


def test_grouping_off_keeps_one_incident_per_certificate():
    b = Bridge(Policy())
    d = b.send(rf("a.example.com"), rf("b.example.com"), at=1000.0)
    assert len(d.events) == 2 and not any(e.key.startswith("certgroup-") for e in d.events)


def test_the_decision_is_the_same_from_the_stored_rows_alone():
    """Two replicas given the same rows decide the same: no state outside the rows, no clock but ``now``."""
    one, two = Bridge(), Bridge()
    one.send(rf("a.example.com"), at=1000.0)
    two.occurrences, two.incidents, two.groups = dict(one.occurrences), dict(one.incidents), dict(one.groups)
    assert shown(one.send(rf("b.example.com"), at=1200.0)) == shown(two.send(rf("b.example.com"), at=1200.0))


# --- on both store backends --------------------------------------------------------------------------


async def ingest(store, *alerts, now: float):
    raw = body(*alerts)
    return await store.ingest(Receipt("alertmanager", raw, now), parse(raw), POLICY, sinks=["pagerduty", "statuspage"])


async def test_a_group_survives_a_restart_and_resolves_with_its_last_member(backend):
    store = backend.new()
    await store.open()
    first = await ingest(store, rf("a.example.com"), now=1000.0)
    await store.close()  # a restart (a SIGKILL loses nothing more: the transaction committed before the answer)
    store = backend.new()
    await store.open()
    try:
        joined = await ingest(store, rf("b.example.com"), now=1100.0)
        dup = await ingest(store, rf("b.example.com"), now=1101.0)  # the HA peer's copy
        assert dup.events == () and dup.duplicates == 1
        await ingest(store, rf("a.example.com", "resolved"), now=1200.0)
        closed = await ingest(store, rf("b.example.com", "resolved"), now=1300.0)
        again = await ingest(store, rf("a.example.com", starts_at=T1), now=1301.0)
    finally:
        await store.close()
    [opened] = first.events
    assert [(e.key, e.update) for e in joined.events] == [(opened.key, True)]
    assert [(e.key, e.action) for e in closed.events] == [(opened.key, Action.RESOLVE)]
    assert [e.key == opened.key for e in again.events] == [False]
    rows = [(i.ordering_key, i.payload["action"], i.payload["update"]) for i in await backend.pending("statuspage")]
    assert rows[:4] == [(opened.key, "trigger", False), (opened.key, "trigger", True),
                        (opened.key, "trigger", True), (opened.key, "resolve", False)]
    assert await backend.count("groups") == 2


async def test_concurrent_webhooks_of_one_slot_open_one_group(backend):
    store = backend.new()
    await store.open()
    try:
        results = await asyncio.gather(*(ingest(store, rf(f"h{n}.example.com"), now=1000.0 + n) for n in range(8)))
    finally:
        await store.close()
    keys = {e.key for r in results for e in r.events}
    assert len(keys) == 1
    last = (await backend.pending("pagerduty"))[-1].payload
    members = [m["certificate"] for m in last["custom_details"]["members"]]
    assert last["custom_details"]["certificates"] == 8 and sorted(members) == [f"h{n}.example.com" for n in range(8)]


# --- end to end: webhook -> store -> outbox -> the PagerDuty and Statuspage fakes -------------------------


async def test_a_group_is_one_pagerduty_and_one_statuspage_incident(serve_app, tmp_path, monkeypatch):
    grouping = "grouping:\n  type: intelligent\n  time_window: 1h\n  correlation: [renewal_failed]\n"

    def with_grouping(path, pd_url, sp_url):
        written = write_config(path, pd_url, sp_url)
        written.write_text(written.read_text() + grouping)
        return written

    monkeypatch.setattr(e2e, "write_config", with_grouping)  # the Statuspage e2e harness, plus grouping
    async with run_fake_pagerduty() as pd, run_fake_statuspage(
        token=TOKEN, components={GATEWAY: "Gateway API", WEB: "Web"}, rate_limit=10_000
    ) as sp:
        client, _, sinks = await start(serve_app, tmp_path, pd.url, sp.url)

        def member(n: int, status: str = "firing") -> bytes:
            return body(rf(f"c{n}.example.com", status, service="Gateway API" if n % 2 else "Web",
                           severity="critical"))

        for n in range(4):
            assert (await client.post(ALERTMANAGER_PATH, data=member(n))).status == 200
        both = {GATEWAY: "major_outage", WEB: "major_outage"}
        await until(lambda: len(pd.accepted) == 4 and sp.statuses() == both, timeout=10)
        [incident] = pd.incidents
        assert incident.summary.endswith("renewal failed — production, issuer Let's Encrypt R3")
        assert pd.accepted[-1].body["payload"]["summary"].startswith("4 certificates: renewal failed")
        assert incident.status == "triggered" and len(sp.incidents) == 1
        for n in range(4):
            assert (await client.post(ALERTMANAGER_PATH, data=member(n, "resolved"))).status == 200
        await until(lambda: incident.status == "resolved" and sp.own_incidents()[0].resolved, timeout=10)
        assert len(pd.incidents) == 1 and len(sp.incidents) == 1
        assert sp.statuses() == {GATEWAY: "operational", WEB: "operational"}
        for sink in sinks.values():
            await sink.aclose()


async def test_a_group_survives_a_sigkill_of_the_bridge_process(tmp_path):
    """`certpager bridge` as a subprocess: a group opened, the process SIGKILLed, restarted on the same file;
    the late joiners update the same PagerDuty incident and the last resolve closes it. A postmortem action
    runs in the real process too."""
    import aiohttp

    from tests.bridge.test_crash import bridge_process, free_port, post
    from tests.bridge.test_crash import write_config as crash_config

    async with run_fake_pagerduty() as pd:
        port = free_port()
        config = crash_config(tmp_path, pd.url, port)
        config.write_text(config.read_text() + (
            "grouping:\n  type: intelligent\n  time_window: 1h\n  correlation: [renewal_failed]\n"
            f"actions:\n  create_postmortem: {{type: postmortem, directory: {tmp_path / 'pm'}}}\n"
            "automation:\n  renewal_failed: {actions: [create_postmortem]}\n"
        ))
        log = tmp_path / "bridge.log"

        async def until(condition, what: str) -> None:
            deadline = asyncio.get_running_loop().time() + 15
            while not condition():
                assert asyncio.get_running_loop().time() < deadline, f"{what}; log: {log.read_text()[-2000:]}"
                await asyncio.sleep(0.05)

        async with aiohttp.ClientSession() as session:
            async with bridge_process(config, port, log) as proc:
                assert await post(session, port, body(rf("a.example.com")))
                await until(lambda: len(pd.incidents) == 1, "the group's page")
                # Killed once the bridge has recorded the delivery: a kill between PagerDuty's 202 and that
                # record resends the trigger after the restart (at least once; PagerDuty deduplicates it),
                # which is test_crash's subject, not this test's.
                async def recorded() -> bool:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as answer:
                        return 'certpager_bridge_outbox_depth{sink="pagerduty"} 0.0' in await answer.text()

                deadline = asyncio.get_running_loop().time() + 15
                while not await recorded():
                    assert asyncio.get_running_loop().time() < deadline, "the delivery was never recorded"
                    await asyncio.sleep(0.05)
                proc.kill()  # SIGKILL mid-group
            async with bridge_process(config, port, log):
                for cert in ("b.example.com", "c.example.com"):
                    assert await post(session, port, body(rf(cert)))
                await until(lambda: len(pd.actions()) == 3, "the joiners' updates")
                for cert in ("a.example.com", "b.example.com", "c.example.com"):
                    assert await post(session, port, body(rf(cert, "resolved")))
                await until(lambda: pd.incidents[0].status == "resolved", "the group's resolve")
                await until(lambda: any((tmp_path / "pm").glob("*.md")), "the postmortem")
    [incident] = pd.incidents
    # Opened, two joiners, two partial resolves (updates), then the last member's resolve: one incident.
    assert incident.dedup_key.startswith("certgroup-") and incident.log == ["trigger"] * 5 + ["resolve"]
    assert pd.accepted[2].body["payload"]["summary"].startswith("3 certificates: renewal failed")
    assert [p.name for p in (tmp_path / "pm").glob("*.md")] == [f"{incident.dedup_key}.md"]


async def test_two_replicas_deciding_one_slot_at_once_open_one_group(backend):
    """PostgreSQL: replicas lock the slot with the scopes, so alerts of one slot sent to two replicas at once
    still make one group (SQLite has one process by construction: its file lock refuses a second)."""
    if backend.name != "postgresql":
        pytest.skip("one SQLite store per file")
    one, two = backend.new(), backend.new()
    await one.open()
    await two.open()
    try:
        results = await asyncio.gather(*(
            ingest(one if n % 2 else two, rf(f"h{n}.example.com"), rf("dup.example.com"), now=1000.0 + n)
            for n in range(8)
        ))
    finally:
        await one.close()
        await two.close()
    assert len({e.key for r in results for e in r.events}) == 1
    assert sum(r.duplicates for r in results) == 7  # the HA copies of one member, across both replicas
    opened = [e for r in results for e in r.events if not e.update]
    assert len(opened) == 1
    last = (await backend.pending("pagerduty"))[-1].payload
    assert last["custom_details"]["certificates"] == 9


async def test_each_member_certificate_has_its_grouping_lines_in_the_audit_trail(any_store):
    first = await ingest(any_store, rf("a.example.com"), now=1000.0)
    await ingest(any_store, rf("b.example.com"), rf("c.example.com"), now=1100.0)
    await ingest(any_store, rf("a.example.com", "resolved"), now=1200.0)
    await ingest(any_store, rf("b.example.com", "resolved"), rf("c.example.com", "resolved"), now=1300.0)
    [opened] = first.events
    g = opened.key
    lines = [(e.at, e.certificate, e.action, history.sentence(e)) for e in await any_store.audit_trail()
             if e.action.startswith("group_")]
    assert lines == [
        (1000.0, "a.example.com", "group_opened", f"opened group {g} (1 certificate)"),
        (1100.0, "b.example.com", "group_joined", f"joined group {g} (3 certificates)"),
        (1100.0, "c.example.com", "group_joined", f"joined group {g} (3 certificates)"),
        (1200.0, "a.example.com", "group_left", f"left group {g} (resolved; 2 certificates remain)"),
        (1300.0, "b.example.com", "group_resolved", f"group {g} resolved (last member)"),
        (1300.0, "c.example.com", "group_resolved", f"group {g} resolved (last member)"),
    ]
    mine = history.render(await any_store.audit_trail(certificate="b.example.com"))
    assert [line.split("  ", 2)[2] for line in mine] == [
        "webhook received: firing from http://alertmanager.example:9093 (receipt 2)",
        f"joined group {g} (3 certificates)",
        "webhook received: resolved from http://alertmanager.example:9093 (receipt 4)",
        f"group {g} resolved (last member)",
    ]
    (line,) = [e for e in await any_store.audit_trail(certificate="b.example.com") if e.action == "group_joined"]
    assert (line.environment, line.event_class, line.issuer, line.side) == ("production", RF, LE, "bridge")
