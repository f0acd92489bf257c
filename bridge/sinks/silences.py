"""The Alertmanager silence sink: ack sync's silence writes, from their own outbox queue.

Items (ordered per incident key, so an expire never overtakes its create):

    {"op": "create", "key", "matchers", "startsAt", "endsAt", "createdBy", "comment"}
    {"op": "expire", "key"}

**HA pair: each silence is written to exactly one Alertmanager** (silences are gossiped to the peers).
The configured Alertmanagers are tried in order; one that refuses the connection is skipped for the
next, but an ambiguous failure (a timeout, a 5xx after the request was sent) is retried later rather
than sent to a peer. A create first looks for its own marker ``(certpager <hash of the queued item>)``
at the end of the comment among the silences of the Alertmanager it is about to write to, so a create
whose answer was lost (a crash, a timeout) is adopted rather than written twice. Every silence created
is recorded in the store (its id is how the poller tells the bridge's silences from a person's); an
expire DELETEs each live one, on the Alertmanager it was written to, else on a peer.

    200                          Delivered
    400 (bad matchers, times)    DeadLetter  Alertmanager's message
    5xx, timeout                 RetryLater  the worker's backoff
    connection refused           the next Alertmanager; all refused: RetryLater
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import httpx

from bridge.sinks.base import DeadLetter, Delivered, DeliveryOutcome, OutboxItem, RetryLater
from bridge.store.base import Store

log = logging.getLogger(__name__)


class _Refused(Exception):
    """The Alertmanager could not be reached at all: nothing was sent, a peer may take the write."""


def marker(item: OutboxItem) -> str:
    """The item's mark in its silence's comment: unique per queued write, also across store files."""
    digest = hashlib.sha256(f"{item.ordering_key}\x00{item.id}\x00{item.created_at!r}".encode()).hexdigest()
    return f"(certpager {digest[:12]})"


class SilenceSink:
    """Creates and expires the bridge's silences on an Alertmanager (HA pair: on exactly one)."""

    name = "alertmanager"

    def __init__(
        self, client: httpx.AsyncClient, *, alertmanagers: Callable[[], Sequence[str]], store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._alertmanagers = alertmanagers
        self._store = store
        self._clock = clock

    async def deliver(self, item: OutboxItem) -> DeliveryOutcome:
        op, key = item.payload.get("op"), item.payload.get("key")
        if not isinstance(key, str) or not key:
            return DeadLetter(error=f"silence item {item.id} has no key")
        urls = list(self._alertmanagers())
        if not urls:
            return DeadLetter(error="no Alertmanager configured (ack_sync.alertmanagers)")
        try:
            if op == "create":
                return await self._create(item, key, urls)
            if op == "expire":
                return await self._expire(key, urls)
        except httpx.TimeoutException as exc:
            return RetryLater(after=None, error=f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return RetryLater(after=None, error=f"network error: {type(exc).__name__}: {exc}")
        return DeadLetter(error=f"unknown silence op {op!r}")

    async def _create(self, item: OutboxItem, key: str, urls: list[str]) -> DeliveryOutcome:
        payload = item.payload
        ends = datetime.fromisoformat(str(payload["endsAt"])).timestamp()
        if ends <= self._clock():
            return Delivered(info="the silence would already have ended: not created")
        mark = marker(item)
        body = {
            "matchers": payload["matchers"], "startsAt": payload["startsAt"], "endsAt": payload["endsAt"],
            "createdBy": payload["createdBy"], "comment": f"{payload['comment']} {mark}",
        }
        refused: list[str] = []
        for url in urls:
            try:
                found = await self._find(url, mark)
                if found is not None:
                    await self._store.record_silence(key, found, url, now=self._clock())
                    return Delivered(info=f"adopted silence {found}")
                outcome = await self._post(url, body)
            except _Refused as exc:
                refused.append(f"{url}: {exc}")
                continue
            if isinstance(outcome, str):
                await self._store.record_silence(key, outcome, url, now=self._clock())
                log.info("silence created", extra={"kv": {"key": key, "silence": outcome, "alertmanager": url}})
                return Delivered(status=200, info=outcome)
            return outcome
        return RetryLater(after=None, error="no Alertmanager reachable: " + "; ".join(refused))

    async def _find(self, url: str, mark: str) -> str | None:
        silences = await self._request("GET", f"{url}/api/v2/silences")
        if not isinstance(silences, list):
            return None
        for silence in silences:
            if (isinstance(silence, dict) and str(silence.get("comment", "")).endswith(mark)
                    and (silence.get("status") or {}).get("state") != "expired"):
                return str(silence["id"])
        return None

    async def _post(self, url: str, body: dict[str, Any]) -> str | DeliveryOutcome:
        response = await self._send("POST", f"{url}/api/v2/silences", json=body)
        if response.status_code == 200:
            return str(response.json()["silenceID"])
        text = " ".join(response.text.split())[:300]
        if response.status_code >= 500:
            return RetryLater(after=None, error=f"{url}: {response.status_code} {text}", status=response.status_code)
        return DeadLetter(error=f"{url}: {response.status_code} {text}", status=response.status_code)

    async def _expire(self, key: str, urls: list[str]) -> DeliveryOutcome:
        for silence_id, written_to in await self._store.live_silences(key):
            order = [written_to, *(u for u in urls if u != written_to)]
            outcome = await self._delete(silence_id, order)
            if outcome is not None:
                return outcome
            await self._store.silence_expired(key, silence_id, now=self._clock())
        return Delivered(status=200)

    async def _delete(self, silence_id: str, urls: list[str]) -> DeliveryOutcome | None:
        refused: list[str] = []
        for url in urls:
            try:
                response = await self._send("DELETE", f"{url}/api/v2/silence/{silence_id}")
            except _Refused as exc:
                refused.append(f"{url}: {exc}")
                continue
            text = " ".join(response.text.split())[:300]
            # 404 / 500 "silence not found": unknown there (expired and garbage-collected): the goal, reached.
            if response.status_code in (200, 404) or "already expired" in text or "not found" in text:
                return None
            if response.status_code >= 500:
                return RetryLater(after=None, error=f"{url}: {response.status_code} {text}")
            return DeadLetter(error=f"{url}: {response.status_code} {text}", status=response.status_code)
        return RetryLater(after=None, error="no Alertmanager reachable: " + "; ".join(refused))

    async def _request(self, method: str, url: str) -> Any:
        response = await self._send(method, url)
        if response.status_code != 200:
            raise httpx.HTTPStatusError(f"{response.status_code}", request=response.request, response=response)
        return response.json()

    async def _send(self, method: str, url: str, json: Any = None) -> httpx.Response:
        try:
            return await self._client.request(method, url, json=json)
        except httpx.ConnectError as exc:  # nothing was sent: a peer may take it
            raise _Refused(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
