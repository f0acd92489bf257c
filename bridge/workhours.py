"""Working hours in a time zone: whether a page came off hours, and which on-call week it belongs to.

zoneinfo applies the zone's own daylight saving rules, so 09:00 is 09:00 local on both sides of a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """When pages are not off hours: ``start <= local time < end`` on ``days``, in ``zone``."""

    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    start: time = time(9, 0)
    end: time = time(17, 0)
    days: frozenset[int] = frozenset(range(5))  # Monday = 0

    def local(self, at: float) -> datetime:
        return datetime.fromtimestamp(at, self.zone)

    def off_hours(self, at: float) -> bool:
        moment = self.local(at)
        return moment.weekday() not in self.days or not self.start <= moment.time() < self.end

    def week(self, at: float) -> str:
        """The on-call week of ``at``: the local date of its Monday (``2026-03-23``)."""
        moment = self.local(at)
        return (moment.date() - timedelta(days=moment.weekday())).isoformat()
