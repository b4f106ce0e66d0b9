"""Leader election on a coordination.k8s.io Lease (issue 18), the decisions.

Two or more replicas run; one leads and writes, the others stand by: they serve the admission webhooks
and keep their memory current from the watches, so that one takes over with a full index. The rules are
client-go's leaderelection (the one every controller-runtime operator, Flux and cert-manager use), with
its defaults: a lease of 15 s, a renew deadline of 10 s, a retry period of 2 s.

- A candidate takes the Lease when it is free (no holder, as a leader that stopped cleanly leaves it),
  or when its record has not changed for a whole lease duration *as this process measured it* (from
  when it first saw that record, on its own monotonic clock: no two clocks are compared).
- The leader renews every retry period. It may write only while `may_write`: less than the renew
  deadline since the renewal it last *sent* that succeeded. Since the others count the lease duration
  from when they *received* that record, the leader stops writing at least lease - renew deadline
  (5 s) before anyone can take over: fencing, even when its connection is black-holed rather than closed
  (it cannot renew, its deadline passes, it stops). `write_budget` bounds each write request so that one
  started just before the deadline cannot still be in flight when the lease can expire.
- Every update of the Lease carries its resourceVersion: of two candidates, one wins, the other's update
  is refused (409) and it reads the Lease again.

Plain data: no client, no clock (times are passed in), no I/O (handlers.py does it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"
DEFAULT_NAME = "depgate-leader"
SHARD_LABEL = "sharding.depgate.io/key"  # on a policy: the shard (`depgate run --shard KEY`) that handles it


@dataclass(frozen=True)
class Timing:
    lease: float = 15.0  # leaseDurationSeconds: how long a record stays valid after it was last seen
    renew_deadline: float = 10.0  # the leader stops writing this long after its last successful renewal
    retry: float = 2.0  # how often a candidate tries and a leader renews
    # retry < renew_deadline < lease: depgate.settings refuses flags that break it


def lease_name(base: str, shard: str) -> str:
    """One lease per shard: depgate-leader, depgate-leader-<shard>."""
    return f"{base}-{shard}" if shard else base


def shard_of(policy: Mapping[str, Any]) -> str:
    """The shard a policy belongs to: its SHARD_LABEL, "" (the default shard) without one."""
    labels = (policy.get("metadata") or {}).get("labels") or {}
    value = labels.get(SHARD_LABEL) if isinstance(labels, Mapping) else None
    return value if isinstance(value, str) else ""


def micro_time(wall: float) -> str:
    """A MicroTime as the API server writes it (RFC 3339, microseconds, UTC)."""
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Record:
    """What a Lease says (its spec), and the resourceVersion it was read at."""

    holder: str
    duration: float
    transitions: int
    acquired: str
    renewed: str
    resource_version: str

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        md = lease.get("metadata") or {}

        def number(key: str) -> int:
            v = spec.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

        return cls(holder=str(spec.get("holderIdentity") or ""), duration=float(number("leaseDurationSeconds")),
                   transitions=number("leaseTransitions"), acquired=str(spec.get("acquireTime") or ""),
                   renewed=str(spec.get("renewTime") or ""), resource_version=str(md.get("resourceVersion") or ""))

    def same(self, other: Record | None) -> bool:
        """The same record, as far as expiry goes (another renewal changes renewTime and resourceVersion)."""
        return other is not None and (self.holder, self.renewed, self.resource_version) == (
            other.holder, other.renewed, other.resource_version)


@dataclass(frozen=True)
class Create:
    body: dict[str, Any]


@dataclass(frozen=True)
class Update:
    body: dict[str, Any]  # carries metadata.resourceVersion: a conditional write
    takeover: bool  # another holder's expired lease, or a free one: a new leader


@dataclass(frozen=True)
class Wait:
    holder: str  # who holds it ("" when nobody does and our write is pending)
    expires_in: float  # this long from now, as this process measures it


Step = Create | Update | Wait


class Elector:
    """One process's view of one Lease. `step` says what to send after reading the Lease; `renewed` and
    `lost` say what came of it (a refused write changes nothing: the next step reads the Lease again);
    `may_write` and `write_budget` are the fence."""

    def __init__(self, identity: str, name: str, namespace: str, timing: Timing | None = None) -> None:
        self.identity, self.name, self.namespace = identity, name, namespace
        self.timing = timing or Timing()
        self.leading = False
        self.renewed_at: float | None = None  # monotonic: when the last successful renewal was sent
        self.observed: Record | None = None  # the last record of another holder
        self.observed_at = 0.0  # monotonic: when that record was first seen
        self.transitions = 0  # the Lease's leaseTransitions, as last read or written

    # --- the fence

    def may_write(self, now: float) -> bool:
        return self.leading and self.renewed_at is not None and now < self.renewed_at + self.timing.renew_deadline

    def write_budget(self, now: float) -> float:
        """How long a write request started now may take: until the lease could expire for the others
        (the renewal's send time + the lease duration), less a second; 0 when it may not write."""
        if not self.may_write(now) or self.renewed_at is None:
            return 0.0
        return max(0.0, self.renewed_at + self.timing.lease - 1.0 - now)

    def deadline_passed(self, now: float) -> bool:
        """A leader whose renewals have failed for the renew deadline: it is no longer the leader."""
        return self.leading and not self.may_write(now)

    # --- the election

    def body(self, now_wall: float, *, acquired: str | None, transitions: int, rv: str | None,
             holder: str | None = None, duration: float | None = None) -> dict[str, Any]:
        stamp = micro_time(now_wall)
        md: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                              "labels": {"app.kubernetes.io/name": "depgate"}}
        if rv is not None:
            md["resourceVersion"] = rv
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": md,
                "spec": {"holderIdentity": self.identity if holder is None else holder,
                         "leaseDurationSeconds": round(self.timing.lease if duration is None else duration),
                         "acquireTime": acquired or stamp, "renewTime": stamp, "leaseTransitions": transitions}}

    def step(self, lease: Mapping[str, Any] | None, now: float, now_wall: float) -> Step:
        """What to send, having just read `lease` (None: there is none)."""
        if lease is None:
            return Create(self.body(now_wall, acquired=None, transitions=0, rv=None))
        record = Record.of(lease)
        self.transitions = record.transitions
        if record.holder == self.identity:  # ours: renew it (a new leader for us if we did not lead)
            return Update(self.body(now_wall, acquired=record.acquired, transitions=record.transitions,
                                    rv=record.resource_version), takeover=not self.leading)
        if self.leading:  # somebody else holds it: we lost it (lost() is the caller's to call)
            self.leading = False
        if not record.holder:  # released (a leader that stopped cleanly): take it at once
            return Update(self.body(now_wall, acquired=None, transitions=record.transitions + 1,
                                    rv=record.resource_version), takeover=True)
        if not record.same(self.observed):
            self.observed, self.observed_at = record, now
        duration = record.duration or self.timing.lease
        expires_in = self.observed_at + duration - now
        if expires_in > 0:
            return Wait(record.holder, expires_in)
        return Update(self.body(now_wall, acquired=None, transitions=record.transitions + 1,
                                rv=record.resource_version), takeover=True)

    def renewed(self, sent_at: float, answer: Mapping[str, Any]) -> bool:
        """Our Create or Update (sent at `sent_at`, monotonic) succeeded. True when we just became the leader."""
        became = not self.leading
        self.leading, self.renewed_at = True, sent_at
        self.observed = None
        self.transitions = Record.of(answer).transitions
        return became

    def lost(self) -> None:
        """No longer the leader (the renew deadline passed, or another holder is on the Lease)."""
        self.leading, self.renewed_at = False, None

    def release_body(self, lease: Mapping[str, Any], now_wall: float) -> dict[str, Any] | None:
        """On a clean stop: the Lease handed back (no holder, a 1 s duration), so that a standby takes over
        at once instead of waiting out the lease; None when it is not ours."""
        record = Record.of(lease)
        if record.holder != self.identity:
            return None
        return self.body(now_wall, acquired=record.acquired, transitions=record.transitions,
                         rv=record.resource_version, holder="", duration=1)
