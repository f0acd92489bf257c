"""The bridge's own metrics (DESIGN.md section 4), on an injected registry.

Counters and histograms are updated where things happen (:class:`BridgeMetrics`); the outbox gauges
come from :class:`OutboxCollector`, which reads the store on every scrape and keeps no state, so they
are right even after a restart and never drift from the table they describe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bridge.store.base import Store
from certpager import __version__

log = logging.getLogger(__name__)
NAMESPACE = "certpager_bridge"
# Every value the bridge gives the ``result`` labels; started at 0 (:meth:`BridgeMetrics.start_at_zero`).
WEBHOOK_RESULTS = (
    "accepted", "partial", "unauthorized", "too_large", "bad_request", "unprocessable", "store_error",
)
PAGERDUTY_WEBHOOK_RESULTS = (
    "accepted", "duplicate", "ignored", "unauthorized", "bad_signature", "bad_request", "too_large", "store_error",
)
POLL_RESULTS = ("ok", "follower", "unreachable", "error")
DELIVERY_RESULTS = ("delivered", "retry", "throttled", "dead_letter")
# Lifecycle: 1m, 5m, 10m, 30m, 1h, 2h, 4h, 8h, 1d, 3d, 7d.
LIFECYCLE_BUCKETS = (60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 259200, 604800)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Children:
    """The labelled children of one metric, looked up once: ``labels()`` costs ~3 us, this ~0.2 us."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        """The child for these label values, in the metric's label order."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class BoundedLabel:
    """One label's values, bounded: the known ones, then the first ``spare`` others seen, then ``other``.

    Alerts choose values such as class and environment; a label set per value ever seen would let
    /metrics grow without end (5,000 classes took it from 8 KB to 5 MB). Values over ``max_length``
    characters are ``other`` at once.
    """

    OTHER = "other"

    def __init__(self, known: Iterable[str] = (), *, spare: int = 32, max_length: int = 128) -> None:
        self.known = frozenset(known)
        self._spare = spare
        self._max_length = max_length
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.known or value in self._seen:
            return value
        if len(value) > self._max_length or len(self._seen) >= self._spare:
            return self.OTHER
        self._seen.add(value)
        return value


class BridgeMetrics:
    """Every counter, histogram and gauge the bridge updates itself."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.webhooks = Counter(
            f"{NAMESPACE}_webhooks_total", "Inbound webhooks by source and result.", ["source", "result"],
            registry=registry,
        )
        self.rejected_alerts = Counter(
            f"{NAMESPACE}_rejected_alerts_total",
            "Alerts refused inside an otherwise readable webhook, by source and reason.", ["source", "reason"],
            registry=registry,
        )
        self.transitions = Counter(
            f"{NAMESPACE}_alert_transitions_total",
            "Alert transitions received, by verdict (new, duplicate, stale).", ["verdict"], registry=registry,
        )
        self.truncated = Counter(
            f"{NAMESPACE}_truncated_alerts_total",
            "Alerts Alertmanager left out of webhooks (truncatedAlerts, max_alerts).", registry=registry,
        )
        self.deliveries = Counter(
            f"{NAMESPACE}_deliveries_total", "Delivery attempts by sink and result.", ["sink", "result"],
            registry=registry,
        )
        self.late_resolved = Counter(
            f"{NAMESPACE}_late_resolved_total",
            "Triggers resolved before they could be delivered, by sink and how they were recorded "
            "(change_event, page, drop; late_resolved).", ["sink", "recorded_as"], registry=registry,
        )
        self.delivery_latency = Histogram(
            f"{NAMESPACE}_delivery_latency_seconds", "Seconds from webhook commit to the sink accepting the event.",
            ["sink"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.incidents = Counter(
            f"{NAMESPACE}_incidents_total", "Incident triggers queued, by class, environment and severity.",
            ["class", "environment", "severity"], registry=registry,
        )
        self.polls = Counter(
            f"{NAMESPACE}_alertmanager_polls_total",
            "Ack-sync polls of Alertmanager by result (ok, follower, unreachable, error).", ["result"],
            registry=registry,
        )
        self.pages = Counter(
            f"{NAMESPACE}_pages_total", "Pages (incident triggers queued, updates excluded), by environment and "
            "whether they came outside the configured working hours.", ["environment", "off_hours"],
            registry=registry,
        )
        self.time_to_acknowledge = Histogram(
            f"{NAMESPACE}_time_to_acknowledge_seconds",
            "Seconds from a page to its first acknowledgement (either side), by class and environment.",
            ["class", "environment"], buckets=LIFECYCLE_BUCKETS, registry=registry,
        )
        self.time_to_resolve = Histogram(
            f"{NAMESPACE}_time_to_resolve_seconds",
            "Seconds from a page to its first resolve (either side), by class and environment.",
            ["class", "environment"], buckets=LIFECYCLE_BUCKETS, registry=registry,
        )
        self.reload_ok = Gauge(
            f"{NAMESPACE}_config_last_reload_successful", "1 if the last config reload succeeded.", registry=registry,
        )
        self.reload_time = Gauge(
            f"{NAMESPACE}_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config reload.", registry=registry,
        )
        build = Gauge(
            f"{NAMESPACE}_build_info", "certpager bridge build information.", ["version"], registry=registry,
        )
        build.labels(version=__version__).set(1)
        # The hot paths (every webhook, every delivery) take their children from these.
        self.webhook = Children(self.webhooks)
        self.transition = Children(self.transitions)
        self.rejected_alert = Children(self.rejected_alerts)
        self.incident = Children(self.incidents)
        self.delivery = Children(self.deliveries)
        self.late = Children(self.late_resolved)
        self.page = Children(self.pages)
        self.acknowledged = Children(self.time_to_acknowledge)
        self.resolved = Children(self.time_to_resolve)
        self.latency = Children(self.delivery_latency)
        self.poll = Children(self.polls)
        self.reload_ok.set(1)
        self.reload_time.set(time.time())

    def start_at_zero(self, sinks: Iterable[str]) -> None:
        """Create the series the SLO rules divide (rules/certpager-bridge.rules.yml) at 0.

        A counter child that appears at 1 has no increase for ``rate()`` to see, so the first 5xx or the
        first dead letter after a start would be invisible to the burn-rate alerts.
        """
        for result in WEBHOOK_RESULTS:
            self.webhook("alertmanager", result)
        for result in PAGERDUTY_WEBHOOK_RESULTS:
            self.webhook("pagerduty", result)
        for result in POLL_RESULTS:
            self.poll(result)
        for sink in sinks:
            self.latency(sink)
            for result in DELIVERY_RESULTS:
                self.delivery(sink, result)

    def start_pages_at_zero(self, environments: Iterable[str]) -> None:
        """Create ``pages_total`` of each configured environment, in and off hours, at 0 (at start and on a
        reload that names new ones), so ``increase()`` sees the first page of each (the label stays bounded:
        only what the config names)."""
        for environment in environments:
            for off_hours in ("true", "false"):
                self.page(environment, off_hours)


class StatuspageMetrics:
    """The Statuspage sink's own counters (its deliveries are counted by the outbox like every sink's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        requests = Counter(
            f"{NAMESPACE}_statuspage_requests_total",
            "Requests sent to the Statuspage API, by method and HTTP status (error: timeout or network).",
            ["method", "code"], registry=registry,
        )
        skipped = Counter(
            f"{NAMESPACE}_statuspage_skipped_total",
            "Events not shown on the status page, by reason (below_severity, no_component, maintenance).",
            ["reason"], registry=registry,
        )
        unknown = Counter(
            f"{NAMESPACE}_statuspage_unknown_services_total",
            "Service names in alerts that integrations.statuspage.component_map does not list.", ["service"],
            registry=registry,
        )
        self.request = Children(requests)
        self.skip = Children(skipped)
        self.unknown = Children(unknown)


class OutboxCollector(Collector):
    """Outbox depth, oldest age and dead letters per sink, read from the store at scrape time."""

    def __init__(self, store: Store, *, sinks: Iterable[str], clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._sinks = tuple(sinks)
        self._clock = clock

    def add(self, sink: str) -> None:
        """Report ``sink`` from now on, at 0 while it has nothing (a sink a reload enabled)."""
        self._sinks = (*self._sinks, sink)

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(f"{NAMESPACE}_outbox_depth", "Events queued, not yet delivered.", labels=["sink"])
        age = GaugeMetricFamily(
            f"{NAMESPACE}_outbox_oldest_age_seconds", "Age of the oldest queued event (0 when empty).",
            labels=["sink"],
        )
        dead = GaugeMetricFamily(
            f"{NAMESPACE}_dead_letters", "Events that will not be delivered (kept for the retention period).",
            labels=["sink"],
        )
        try:
            stats = self._store.outbox_stats()
        except Exception as exc:  # a scrape must not fail: fewer series, and say why in the log
            log.warning("cannot read outbox stats", extra={"kv": {"err": str(exc)}})
            return []
        now = self._clock()
        for sink in sorted(set(self._sinks) | set(stats.depth) | set(stats.dead_letters)):
            depth.add_metric([sink], stats.depth.get(sink, 0))
            oldest = stats.oldest_created_at.get(sink)
            age.add_metric([sink], 0.0 if oldest is None else max(now - oldest, 0.0))
            dead.add_metric([sink], stats.dead_letters.get(sink, 0))
        return [depth, age, dead]
