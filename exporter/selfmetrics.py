"""The exporter's own metrics (``certpager_exporter_*``), in a prometheus_client registry.

Counters and the histogram are updated as probes finish; the gauges that describe current state
(targets, probes in flight, target file validity) are read from injected callables at scrape time by
a stateless collector, client_python style, so they can never drift from the state they describe.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from certpager import __version__
from exporter.probes.base import ProbeResult
from exporter.targets import ResolvedTarget

PROBE_REFUSALS = ("unauthorized", "not_allowed", "concurrency")
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _StateCollector:
    """Gauges computed from live state on every scrape."""

    def __init__(self, state: Callable[[], tuple[int, int, int, Mapping[str, bool]]]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        targets, in_flight, admitted, files = self._state()
        yield GaugeMetricFamily("certpager_exporter_targets", "Targets currently scheduled.", value=targets)
        yield GaugeMetricFamily("certpager_exporter_probes_in_flight", "Probes running now.", value=in_flight)
        yield GaugeMetricFamily(
            "certpager_exporter_probe_admission_limit",
            "Background probes allowed in flight now: global.concurrency, or fewer while the event loop lags.",
            value=admitted,
        )
        valid = GaugeMetricFamily(
            "certpager_exporter_target_file_valid",
            "1 if the target file parsed at its last read, 0 if its last good content is in use.",
            labels=["file"],
        )
        for path, ok in sorted(files.items()):
            valid.add_metric([path], 1 if ok else 0)
        yield valid


class SelfMetrics:
    """Holds the registry and the instruments the scheduler, watcher and reload update."""

    def __init__(self, state: Callable[[], tuple[int, int, int, Mapping[str, bool]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.probes = Counter("certpager_exporter_probes", "Background and on-demand probes by module and result.",
                              ["module", "result"], registry=r)
        self.probe_duration = Histogram("certpager_exporter_probe_duration_seconds", "Duration of whole probes.",
                                        ["module"], buckets=PROBE_BUCKETS, registry=r)
        self.reload_ok = Gauge("certpager_exporter_config_last_reload_successful",
                               "1 if the last config (re)load succeeded.", registry=r)
        self.reload_time = Gauge("certpager_exporter_config_last_reload_success_timestamp_seconds",
                                 "Time of the last successful config (re)load, unix seconds.", registry=r)
        self.target_file_errors = Counter("certpager_exporter_target_file_errors",
                                          "Target file reads that failed to parse or could not be read.", registry=r)
        self.probe_refused = Counter(
            "certpager_exporter_probe_requests_refused",
            "/probe requests refused: unauthorized (web.auth), not_allowed (probe.allowed_targets), "
            "concurrency (probe.max_concurrent).", ["reason"], registry=r)
        for reason in PROBE_REFUSALS:
            self.probe_refused.labels(reason)
        build = Gauge("certpager_exporter_build_info", "1, with the version of certpager and Python.",
                      ["version", "python_version"], registry=r)
        build.labels(__version__, platform.python_version()).set(1)
        r.register(_StateCollector(state))

    def observe_probe(self, target: ResolvedTarget, results: Sequence[ProbeResult], elapsed: float) -> None:
        """Count one probe of ``target`` and record its duration."""
        ok = any(r.success for r in results)
        self.probes.labels(target.module_name, "success" if ok else "failure").inc()
        self.probe_duration.labels(target.module_name).observe(elapsed)

    def reloaded(self, ok: bool, now: float) -> None:
        """Record the outcome of a config (re)load."""
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(now)

    def render(self) -> bytes:
        return generate_latest(self.registry)
