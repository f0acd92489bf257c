"""The Alertmanager poller: Alertmanager -> PagerDuty half of ack sync.

Every ``ack_sync.poll_interval`` it reads ``GET /api/v2/alerts`` (active, silenced, inhibited and
unprocessed) and ``GET /api/v2/silences`` from every configured Alertmanager it can reach and merges them
(an HA pair gossips silences, and each peer holds the alerts Prometheus sent it), then runs
:func:`bridge.acksync.on_poll` over the open incidents in one store transaction. With no Alertmanager
reachable a poll changes nothing: an outage is never taken for alerts that vanished. A failed poll is
logged and counted, and the next one runs on time: the loop itself never ends before :meth:`stop` (it
runs under the bridge's :class:`certpager.tasks.TaskSupervisor` all the same).
With several replicas on one PostgreSQL store only the one elected for ``alertmanager-poller``
(:meth:`bridge.store.base.Store.lead`) polls; another takes over at its next round when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from bridge import acksync
from bridge.audit import AuditEntry
from bridge.store.base import Store

log = logging.getLogger(__name__)
ROLE = "alertmanager-poller"
ALERTS_QUERY = {"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"}


class AlertmanagerPoller:
    """Runs :meth:`poll` every ``interval`` seconds until :meth:`stop`."""

    def __init__(
        self, store: Store, client: httpx.AsyncClient, *, alertmanagers: Callable[[], Sequence[str]],
        interval: float, vanished_after: Callable[[], float], queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time, counter: Callable[[str], Any] | None = None,
        recorded: Callable[[Sequence[AuditEntry]], None] = lambda lines: None,
    ) -> None:
        self._store = store
        self._client = client
        self._alertmanagers = alertmanagers
        self._interval = interval
        self._vanished_after = vanished_after
        self._queued = queued
        self._recorded = recorded  # the audit lines written (lifecycle metrics)
        self._clock = clock
        self._counter = counter
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                result = await self.poll()
            except Exception:  # a bug or a store failure: say so, count it, poll again next time
                log.exception("alertmanager poll failed")
                result = "error"
            if self._counter is not None:
                self._counter(result).inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    def stop(self) -> None:
        self._stop.set()

    async def poll(self) -> str:
        """One poll; ``ok``, ``follower`` (another replica polls), or ``unreachable`` (no Alertmanager answered)."""
        if not await self._store.lead(ROLE):
            return "follower"
        snapshot = await self.snapshot()
        if snapshot is None:
            return "unreachable"
        now = self._clock()
        after = self._vanished_after()
        changes = await self._store.sync(
            None, lambda state: acksync.on_poll(state, snapshot, now=now, vanished_after=after), now=now
        )
        if isinstance(changes, acksync.Changes) and changes.outbox:
            self._queued()
        if isinstance(changes, acksync.Changes) and changes.audit:
            self._recorded(changes.audit)
        return "ok"

    async def snapshot(self) -> acksync.Snapshot | None:
        """Alerts and silences merged over every reachable Alertmanager; None when none answered."""
        alerts: dict[str, acksync.AlertView] = {}
        silences: dict[str, acksync.SilenceView] = {}
        reached = 0
        for url in self._alertmanagers():
            try:
                raw_alerts = await self._get(f"{url}/api/v2/alerts", ALERTS_QUERY)
                raw_silences = await self._get(f"{url}/api/v2/silences", None)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("alertmanager unreachable", extra={"kv": {"alertmanager": url, "err": str(exc)}})
                continue
            reached += 1
            for alert in _alerts(raw_alerts):
                seen = alerts.get(alert.fingerprint)
                # A peer that already applied a silence knows more than one that has not yet.
                if seen is None or (seen.state != "suppressed" and alert.state == "suppressed"):
                    alerts[alert.fingerprint] = alert
            silences.update((s.id, s) for s in _silences(raw_silences))
        return acksync.Snapshot(alerts, silences) if reached else None

    async def _get(self, url: str, params: dict[str, str] | None) -> Any:
        response = await self._client.get(url, params=params)
        response.raise_for_status()
        return response.json()


def _alerts(raw: Any) -> list[acksync.AlertView]:
    out = []
    for alert in raw if isinstance(raw, list) else []:
        status = alert.get("status") or {} if isinstance(alert, dict) else {}
        if not isinstance(alert, dict) or not isinstance(alert.get("fingerprint"), str):
            continue
        out.append(acksync.AlertView(
            fingerprint=alert["fingerprint"], state=str(status.get("state", "")),
            silenced_by=tuple(status.get("silencedBy") or ()), inhibited_by=tuple(status.get("inhibitedBy") or ()),
        ))
    return out


def _silences(raw: Any) -> list[acksync.SilenceView]:
    out = []
    for silence in raw if isinstance(raw, list) else []:
        if not isinstance(silence, dict) or not isinstance(silence.get("id"), str):
            continue
        state = (silence.get("status") or {}).get("state", "")
        out.append(acksync.SilenceView(
            id=silence["id"], created_by=str(silence.get("createdBy", "")), comment=str(silence.get("comment", "")),
            state=str(state),
        ))
    return out
