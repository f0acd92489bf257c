"""The PagerDuty REST API calls ack sync makes, each answering a value or the outbox's outcome.

``Authorization: Token token=<api token>``, ``Accept: application/vnd.pagerduty+json;version=2`` and, on
writes, ``From: <integrations.pagerduty.from_email>`` (required with an account token). Answers:

    2xx                      the value
    429                      RetryLater  after ``ratelimit-reset`` (or Retry-After), else 30 s
    5xx, timeout, network    RetryLater  the worker's backoff
    other 4xx (401, 404...)  DeadLetter  status, PagerDuty's ``error.message`` and ``error.errors``

The token is read per call (a rotated token applies at once) and never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from bridge.sinks.base import DeadLetter, RetryLater
from bridge.sinks.pagerduty import RETRY_AFTER_DEFAULT, parse_retry_after

ACCEPT = "application/vnd.pagerduty+json;version=2"
Failure = RetryLater | DeadLetter


class PagerDutyRest:
    """A thin client of the REST endpoints ack sync uses."""

    def __init__(
        self, client: httpx.AsyncClient, *, url: str, token: Callable[[], str | None], from_email: str | None = None
    ) -> None:
        self._client = client
        self._url = url.rstrip("/")
        self._token = token
        self._from = from_email

    @property
    def configured(self) -> bool:
        return bool(self._token())

    async def call(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | Failure:
        """One request; the decoded JSON object on 2xx, else the outcome to give the outbox."""
        token = self._token()
        if not token:
            return DeadLetter(error="no PagerDuty REST API token (integrations.pagerduty.api_token_file)")
        headers = {"Authorization": f"Token token={token}", "Accept": ACCEPT}
        if method != "GET" and self._from:
            headers["From"] = self._from
        try:
            response = await self._client.request(
                method, self._url + path, params=params, json=body, headers=headers
            )
        except httpx.TimeoutException as exc:
            return RetryLater(after=None, error=f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return RetryLater(after=None, error=f"network error: {type(exc).__name__}: {exc}")
        return classify(response, f"{method} {path}")

    async def incident_keys(self, incident_id: str) -> list[str] | Failure:
        """The ``alert_key`` (Events API dedup_key) of every alert of the incident (alert grouping may merge)."""
        answer = await self.call("GET", f"/incidents/{incident_id}/alerts", params={"limit": 100})
        if not isinstance(answer, dict):
            return answer
        alerts = answer.get("alerts") or []
        return sorted({str(a["alert_key"]) for a in alerts if isinstance(a, dict) and a.get("alert_key")})

    async def ack_timeout(self, service_id: str) -> float | None:
        """The service's acknowledgement timeout in seconds (None: off, unknown or unreadable)."""
        answer = await self.call("GET", f"/services/{service_id}")
        if not isinstance(answer, dict):
            return None
        value = (answer.get("service") or {}).get("acknowledgement_timeout")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    async def open_incident(self, dedup_key: str) -> dict[str, Any] | Failure | None:
        """The open incident whose incident_key is ``dedup_key``."""
        answer = await self.call("GET", "/incidents", params={
            "incident_key": dedup_key, "statuses[]": ["triggered", "acknowledged"],
        })
        if not isinstance(answer, dict):
            return answer
        incidents = [i for i in answer.get("incidents") or [] if isinstance(i, dict)]
        return incidents[0] if incidents else None

    async def priorities(self) -> list[dict[str, Any]] | Failure:
        """The account's priorities, most severe first (as PagerDuty lists them)."""
        answer = await self.call("GET", "/priorities")
        if not isinstance(answer, dict):
            return answer
        return [p for p in answer.get("priorities") or [] if isinstance(p, dict)]

    async def update_incident(self, incident_id: str, fields: Mapping[str, Any]) -> dict[str, Any] | Failure:
        return await self.call("PUT", f"/incidents/{incident_id}", body={
            "incident": {"type": "incident_reference", **fields},
        })

    async def snooze(self, incident_id: str, duration: int) -> dict[str, Any] | Failure:
        return await self.call("POST", f"/incidents/{incident_id}/snooze", body={"duration": duration})


def _error_text(response: httpx.Response) -> str:
    # PagerDuty's REST error body: {"error": {"message": "...", "code": 2001, "errors": ["..."]}}.
    try:
        data = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return " ".join(response.text.split())[:300]
    errors = error.get("errors")
    detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) and errors else ""
    message = str(error.get("message", ""))
    return f"{message}: {detail}" if detail else message


def classify(response: httpx.Response, what: str) -> dict[str, Any] | Failure:
    """Map one REST answer (see module docstring)."""
    status = response.status_code
    if 200 <= status < 300:
        try:
            data = response.json()
        except ValueError:
            data = {}
        return data if isinstance(data, dict) else {}
    if status == 429:
        reset = response.headers.get("ratelimit-reset") or response.headers.get("Retry-After")
        after = parse_retry_after(reset)
        return RetryLater(after=RETRY_AFTER_DEFAULT if after is None else after,
                          error=f"{what}: 429 rate limited", status=status)
    if status >= 500:
        return RetryLater(after=None, error=f"{what}: {status} {_error_text(response)}".rstrip(), status=status)
    return DeadLetter(error=f"{what}: {status} {_error_text(response)}".rstrip(), status=status)
