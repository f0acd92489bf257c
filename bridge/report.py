"""``certpager report``: MTTA, MTTR and the on-call burden, from the audit trail in the bridge's store.

    certpager report [--since 30d] [--until T] [--format table|json|csv] [--config.file F]

Pages are the triggers queued in ``[since, until)``; their acknowledgements and resolves are looked up up
to now (an incident paged on the last day and resolved the next still counts). Episodes, off hours and
on-call weeks are :mod:`bridge.lifecycle`'s, the same the lifecycle metrics use. Percentiles are
nearest-rank: every figure is a duration some incident really had.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from bridge import audit
from bridge.audit import AuditEntry
from bridge.config import load
from bridge.history import DEFAULT_CONFIG, open_trail, parse_when
from bridge.lifecycle import Episode, episodes
from bridge.store.base import StoreError
from bridge.workhours import WEEKDAYS, WorkingHours
from certpager.errors import CertpagerError

NOISIEST = 10
DELIVERY_OUTCOMES = (audit.DELIVERED, audit.RETRY, audit.HELD, audit.DEAD_LETTER)


@dataclass(frozen=True, slots=True)
class Durations:
    """Count, mean and nearest-rank p50/p90 of some durations, in seconds (None when there are none)."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Durations:
        ordered = sorted(values)
        if not ordered:
            return cls(0, None, None, None)
        return cls(len(ordered), sum(ordered) / len(ordered), _rank(ordered, 50), _rank(ordered, 90))


def _rank(ordered: Sequence[float], percent: int) -> float:
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]


@dataclass(slots=True)
class Report:
    since: float
    until: float
    timezone: str
    working_hours: str
    pages: int = 0
    off_hours: int = 0
    still_open: int = 0
    mtta: Durations = Durations(0, None, None, None)
    mttr: Durations = Durations(0, None, None, None)
    acknowledged_from: dict[str, int] = field(default_factory=dict)
    resolved_from: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, int] = field(default_factory=dict)
    by_issuer: dict[str, int] = field(default_factory=dict)
    by_environment: dict[str, int] = field(default_factory=dict)
    noisiest: list[tuple[str, str, int]] = field(default_factory=list)  # (certificate, environment, pages)
    weeks: list[tuple[str, int, int]] = field(default_factory=list)  # (week's Monday, pages, off-hours pages)
    deliveries: dict[str, int] = field(default_factory=dict)
    actions_run: int = 0
    actions_failed: int = 0


def build(entries: Sequence[AuditEntry], *, since: float, until: float, hours: WorkingHours,
          working_hours: str = "") -> Report:
    """The report over ``entries`` (oldest first, from ``since`` to now)."""
    report = Report(since, until, str(hours.zone), working_hours or _hours_text(hours))
    paged = [e for e in episodes(entries) if since <= e.triggered_at < until]
    report.pages = len(paged)
    report.off_hours = sum(hours.off_hours(e.triggered_at) for e in paged)
    report.still_open = sum(e.resolved_at is None for e in paged)
    report.mtta = Durations.of(t for e in paged if (t := e.time_to_acknowledge) is not None)
    report.mttr = Durations.of(t for e in paged if (t := e.time_to_resolve) is not None)
    report.acknowledged_from = _counted(e.acknowledged_by.split(":")[0] for e in paged if e.acknowledged_by)
    report.resolved_from = _counted(e.resolved_by.split(":")[0] for e in paged if e.resolved_by)
    report.by_class = _counted(e.event_class for e in paged)
    report.by_issuer = _counted(e.issuer or "(unknown)" for e in paged)
    report.by_environment = _counted(e.environment or "(none)" for e in paged)
    noisy = Counter((e.certificate, e.environment) for e in paged)
    report.noisiest = [(c, env, n) for (c, env), n in sorted(noisy.items(), key=lambda kv: (-kv[1], kv[0]))][:NOISIEST]
    report.weeks = _weeks(paged, hours)
    window = [e for e in entries if since <= e.at < until]
    report.deliveries = {o: sum(e.action == o for e in window) for o in DELIVERY_OUTCOMES}
    actions = [e for e in window if e.side == audit.ACTIONS_SIDE]  # runbook actions, through the outbox
    report.actions_run = sum(e.action == audit.DELIVERED for e in actions)
    report.actions_failed = sum(e.action == audit.DEAD_LETTER for e in actions)
    return report


def _counted(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))


def _weeks(paged: Sequence[Episode], hours: WorkingHours) -> list[tuple[str, int, int]]:
    pages: Counter[str] = Counter()
    off: Counter[str] = Counter()
    for e in paged:
        week = hours.week(e.triggered_at)
        pages[week] += 1
        off[week] += hours.off_hours(e.triggered_at)
    return [(week, pages[week], off[week]) for week in sorted(pages)]


def _hours_text(hours: WorkingHours) -> str:
    days = ",".join(WEEKDAYS[d] for d in sorted(hours.days))
    return f"{hours.start.strftime('%H:%M')}-{hours.end.strftime('%H:%M')} {days}"


# --- formats ---------------------------------------------------------------------------------------------


def clock(seconds: float | None) -> str:
    """``1:02:03`` (hours unbounded), ``-`` for none; rounded to the second."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def as_json(report: Report) -> str:
    data: dict[str, Any] = asdict(report)
    data["noisiest"] = [{"certificate": c, "environment": env, "pages": n} for c, env, n in report.noisiest]
    data["weeks"] = [{"week": w, "pages": n, "off_hours": off} for w, n, off in report.weeks]
    return json.dumps(data, indent=2)


def csv_rows(report: Report) -> list[tuple[str, str, str]]:
    """``(section, name, value)`` rows: one table a spreadsheet reads as it is (durations in seconds)."""
    rows: list[tuple[str, str, str]] = [
        ("window", "since", _iso(report.since, report)), ("window", "until", _iso(report.until, report)),
        ("window", "timezone", report.timezone), ("window", "working_hours", report.working_hours),
        ("pages", "total", str(report.pages)), ("pages", "off_hours", str(report.off_hours)),
        ("pages", "still_open", str(report.still_open)),
    ]
    for name, stats in (("mtta", report.mtta), ("mttr", report.mttr)):
        rows.append((name, "count", str(stats.count)))
        rows.extend((name, f"{part}_seconds", _number(getattr(stats, part))) for part in ("mean", "p50", "p90"))
    for section, counts in (
        ("acknowledged_from", report.acknowledged_from), ("resolved_from", report.resolved_from),
        ("by_class", report.by_class), ("by_issuer", report.by_issuer), ("by_environment", report.by_environment),
        ("deliveries", report.deliveries),
    ):
        rows.extend((section, name, str(n)) for name, n in counts.items())
    rows.extend(("noisiest", f"{c} ({env})" if env else c, str(n)) for c, env, n in report.noisiest)
    for week, n, off in report.weeks:
        rows.extend([("week_pages", week, str(n)), ("week_off_hours_pages", week, str(off))])
    rows.extend([("actions", "run", str(report.actions_run)), ("actions", "failed", str(report.actions_failed))])
    return rows


def as_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("section", "name", "value"))
    writer.writerows(csv_rows(report))
    return out.getvalue()


def as_table(report: Report) -> str:
    lines = [
        f"certpager report: {_iso(report.since, report)} to {_iso(report.until, report)}",
        f"time zone {report.timezone}, working hours {report.working_hours}",
        "",
        f"pages                {report.pages}   off hours {report.off_hours}   still open {report.still_open}",
        _durations("MTTA", report.mtta),
        _durations("MTTR", report.mttr),
        f"acknowledged from    {_inline(report.acknowledged_from)}",
        f"resolved from        {_inline(report.resolved_from)}",
    ]
    for title, counts in (("by class", report.by_class), ("by issuer", report.by_issuer),
                          ("by environment", report.by_environment)):
        lines += ["", title, *_column(counts)]
    noisy = {(f"{c} ({env})" if env else c): n for c, env, n in report.noisiest}
    lines += ["", "noisiest certificates", *_column(noisy)]
    lines += ["", f"pages per on-call week (weeks from Monday, {report.timezone})"]
    lines += [f"  {week}   {n} pages, {off} off hours" for week, n, off in report.weeks] or ["  -"]
    lines += ["", f"deliveries           {_inline({k.replace('_', ' '): v for k, v in report.deliveries.items()})}"]
    lines += [f"actions              run {report.actions_run}, failed {report.actions_failed}"]
    return "\n".join(lines)


def _durations(name: str, stats: Durations) -> str:
    return (f"{name:<20} mean {clock(stats.mean)}   p50 {clock(stats.p50)}   p90 {clock(stats.p90)}"
            f"   ({stats.count} incidents)")


def _inline(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _column(counts: dict[str, int]) -> list[str]:
    width = max((len(k) for k in counts), default=0)
    return [f"  {k:<{width}}  {v}" for k, v in counts.items()] or ["  -"]


def _iso(at: float, report: Report) -> str:
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(at, ZoneInfo(report.timezone)).isoformat(timespec="seconds")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}".rstrip("0").rstrip(".")


FORMATS: dict[str, Callable[[Report], str]] = {"table": as_table, "json": as_json, "csv": as_csv}


# --- command ---------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config.file", dest="config_file", default=DEFAULT_CONFIG,
                        help=f"the bridge's config file: its store and analytics sections (default {DEFAULT_CONFIG})")
    parser.add_argument("--since", default="30d", help="from: a duration before now (30d) or ISO 8601 (default 30d)")
    parser.add_argument("--until", help="to (excluded): a duration before now or ISO 8601 (default now)")
    parser.add_argument("--format", default="table", choices=sorted(FORMATS), help="output format (default table)")


def run(args: argparse.Namespace, *, now: Callable[[], float] = time.time) -> int:
    moment = now()
    try:
        since = parse_when(args.since, moment)
        until = parse_when(args.until, moment) if args.until else moment
    except ValueError as exc:
        print(f"certpager report: {exc}", file=sys.stderr)
        return 2
    if until <= since:
        print("certpager report: --until must be after --since", file=sys.stderr)
        return 2
    try:
        loaded = load(args.config_file)
        entries = asyncio.run(_read(loaded, since))
    except (CertpagerError, StoreError) as exc:
        print(f"certpager report: {exc}", file=sys.stderr)
        return 2
    analytics = loaded.config.analytics
    hours_text = f"{analytics.working_hours} {','.join(analytics.working_days)}"
    report = build(entries, since=since, until=until, hours=analytics.working(), working_hours=hours_text)
    print(FORMATS[args.format](report), end="" if args.format == "csv" else "\n")
    return 0


async def _read(loaded: Any, since: float) -> list[AuditEntry]:
    async with open_trail(loaded) as trail:
        return await trail.audit_trail(since=since)
