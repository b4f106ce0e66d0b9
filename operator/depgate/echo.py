"""Does the policies watch still hear the API server? depgate's own status writes as the probe.

A watch can go silent without going quiet: the API server keeps sending it bookmarks (so no
inactivity bound fires) while its watch cache has stopped hearing etcd, and no event arrives again.
Every status write depgate makes is a change the policies watch must deliver back, with that
resourceVersion or a later one. `Echoes` remembers, per policy, the oldest write not delivered back
yet; `stale()` lists those older than the bound, and `check()` (the watchdog's tick) says when the
watch went deaf and when it hears again. Plain data and arithmetic; the handlers feed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Key = tuple[str, str]
Stale = tuple[Key, int, float]  # (policy, resourceVersion, seconds since the write)

TICK_SECONDS = 5.0  # the watchdog looks this often at most (a quarter of the bound when shorter)


class Check(NamedTuple):
    """One tick of the watchdog."""

    stale: list[Stale]  # every write not heard back within the bound, oldest policy first
    went_deaf: bool  # the first tick with a stale write: say it and count it
    hears_again: bool  # the first tick with none after that


def resource_version(obj: Mapping[str, Any] | None) -> int | None:
    """The object's resourceVersion as a number, or None (the API calls them opaque; etcd's are numbers)."""
    rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    try:
        return int(rv) if rv is not None else None
    except (TypeError, ValueError):
        return None


@dataclass
class Echoes:
    bound: float  # seconds: a write not heard back within this long is stale (--echo-seconds)
    # key -> the oldest write not heard back (resourceVersion, when), and the latest one
    pending: dict[Key, tuple[tuple[int, float], tuple[int, float]]] = field(default_factory=dict)
    deaf_since: float | None = None  # the tick that first saw a stale write, until one sees none

    @property
    def tick_seconds(self) -> float:
        return min(TICK_SECONDS, self.bound / 4)

    def wrote(self, key: Key, written: Mapping[str, Any] | None, now: float) -> None:
        """depgate wrote this policy and the API server answered with `written`."""
        rv = resource_version(written)
        if rv is None:
            return
        oldest = self.pending[key][0] if key in self.pending else (rv, now)
        self.pending[key] = (oldest, (rv, now))

    def heard(self, key: Key, delivered: Mapping[str, Any] | None) -> None:
        """The watch delivered this copy of the policy: it carries every write up to its resourceVersion."""
        if key not in self.pending:
            return
        rv = resource_version(delivered)
        (oldest_rv, _), latest = self.pending[key]
        if rv is None or rv < oldest_rv:
            return
        if rv >= latest[0]:
            del self.pending[key]
        else:  # the older writes are heard; the latest is still to come, and its clock started when it was made
            self.pending[key] = (latest, latest)

    def forget(self, key: Key) -> None:
        self.pending.pop(key, None)

    def stale(self, now: float) -> list[Stale]:
        """(policy, resourceVersion, seconds since the write) for every write not heard back within the bound."""
        return sorted((k, rv, now - t) for k, ((rv, t), _) in self.pending.items() if now - t > self.bound)

    def check(self, now: float) -> Check:
        """The watchdog's tick: is some write stale, and did that just start or just end?"""
        stale = self.stale(now)
        went_deaf = bool(stale) and self.deaf_since is None
        hears_again = not stale and self.deaf_since is not None
        if went_deaf:
            self.deaf_since = now
        elif hears_again:
            self.deaf_since = None
        return Check(stale, went_deaf, hears_again)

    def deaf_for(self, now: float) -> float | None:
        """Seconds since the oldest write the watch has not delivered back was made, while the
        watchdog says it is deaf (the liveness probe fails then); None while it hears."""
        return None if self.deaf_since is None else now - self.deaf_since + self.bound
