"""Prometheus metrics (prometheus_client), served by `depgate run --metrics-port`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from depgate.constants import BLOCKING_STATES, STATES

if TYPE_CHECKING:
    from depgate.controller import Outcome

reconciles = Counter("depgate_reconciles_total", "Reconciles of DependencyPolicies, by result.", ["result"])
reconcile_seconds = Histogram(
    "depgate_reconcile_duration_seconds", "Time one reconcile of one policy took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
writes = Counter("depgate_api_writes_total", "Write requests depgate sent (applies, patches, status writes).")
watch_restarts = Counter(
    "depgate_watch_restarts_total",
    "Watches the operator closed and started again: silent (nothing, not even a bookmark, within the "
    "inactivity bound) or expired (410 Gone: the resourceVersion left the API server's window).",
    ["reason"])
custom_watches = Gauge(
    "depgate_custom_watches",
    "Shared watches of custom resources running (one per apiVersion, kind and namespace that a "
    "`resource` precondition names; at most --max-custom-watches).")
reconciles_skipped = Counter(
    "depgate_reconciles_skipped_total",
    "Wakes of a policy's worker that needed no reconcile: only events of workloads exactly as its last reconcile "
    "read or wrote them (its own write coming back).")
watch_streams = Gauge(
    "depgate_watch_streams",
    "Watches of built-in kinds running: one per kind and namespace that the policies there can be concerned "
    "by, and one of the pods at depgate's scheduling gate. Writes anywhere else never reach the operator.")
watch_stale_total = Counter(
    "depgate_watch_stale_episodes_total",
    "Times the policies watch stopped delivering depgate's own status writes back within the bound.")
watch_stale = Gauge(
    "depgate_watch_stale",
    "1 while the policies watch has not delivered depgate's own status writes back within the bound "
    "(the watch is open and may get bookmarks, but hears no change).")
webhook_ready = Gauge("depgate_webhook_ready", "1 once this process serves the admission webhook and the "
                      "webhook configurations point at it.")
admission_seconds = Histogram("depgate_admission_seconds", "Time to answer one admission review of a policy "
                              "(the author's SubjectAccessReviews included).",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
workload_admission_seconds = Histogram(
    "depgate_workload_admission_seconds", "Time to answer one admission review of a workload (Deployment, "
    "StatefulSet, DaemonSet, CronJob, Job), from memory, by kind and outcome (rendered, up-to-date, untargeted, "
    "render-error, immutable, protected, not-gated, error).", ["kind", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))
admission_refusals = Counter("depgate_admission_refusals_total", "Policy writes refused at admission "
                             "(the author lacks a right the policy needs, or the policy is too big).")
status_writes = Counter("depgate_status_writes_total", "Status writes on DependencyPolicies.")
pod_gate_admission_seconds = Histogram(
    "depgate_pod_gate_admission_seconds", "Time to answer one admission review of a pod in a namespace that "
    "opted in to depgate's scheduling gate (depgate.gates), from memory, by outcome (gated, not-gated, error).",
    ["outcome"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))
gated_pods = Gauge("depgate_gated_pods", "Pods at depgate's scheduling gate, by state: held (a policy gates "
                   "their workload and they lack its init containers) or waiting (their grace window).", ["state"])
pod_gate_lifts = Counter("depgate_pod_gate_lifts_total", "Scheduling gates depgate lifted, by cause (rendered: "
                         "the pod carries depgate's init containers; unowned: no workload a policy can name; grace: "
                         "no policy after the grace window), and held pods it deleted (replaced).", ["cause"])
for _cause in ("rendered", "unowned", "grace", "replaced"):  # every series from the start, at 0
    pod_gate_lifts.labels(cause=_cause)
for _state in ("held", "waiting"):
    gated_pods.labels(state=_state).set(0)
leader = Gauge("depgate_leader", "1 while this process holds the Lease and writes (--leader-election); a "
               "standby serves the webhooks and says 0.", ["shard"])
leader_transitions = Counter("depgate_leader_transitions_total", "Times this process became the leader.", ["shard"])
lease_errors = Counter("depgate_lease_errors_total", "Lease reads or writes that failed (the Lease's "
                       "namespace missing, no right, the API server unreachable): a process that never leads "
                       "and counts these is not a standby but cannot elect.", ["shard"])
lease_transitions = Gauge("depgate_lease_transitions", "The Lease's leaseTransitions as this process last read "
                          "or wrote it: how often the leadership moved between replicas.", ["shard"])
preconditions = Gauge("depgate_preconditions", "Preconditions of a policy, by state.",
                      ["namespace", "policy", "state"])
blocked_seconds = Counter("depgate_precondition_blocked_seconds_total",
                          "Seconds a precondition has been seen blocking (Blocking or Failed).",
                          ["namespace", "policy", "precondition"])

# Every result and reason has a series from the start (at 0), so rate() and the alert rules see an error's
# first occurrence and a dashboard shows 0 rather than no data (charts/depgate/files/prometheus-rules.yaml).
RECONCILE_RESULTS = ("ok", "invalid", "unauthorized", "conflict", "error", "release-refused")
WATCH_RESTART_REASONS = ("silent", "expired")
for _result in RECONCILE_RESULTS:
    reconciles.labels(result=_result)
for _reason in WATCH_RESTART_REASONS:
    watch_restarts.labels(reason=_reason)

# (namespace, policy) -> (when last observed, names blocking then); and every precondition with a series
_last: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
_series: dict[tuple[str, str], set[str]] = {}


def observe(key: tuple[str, str], outcome: Outcome, seconds: float, now: float | None = None) -> None:
    reconciles.labels(result=outcome.result).inc()
    reconcile_seconds.observe(seconds)
    writes.inc(outcome.writes)
    if outcome.status_written:
        status_writes.inc()
    if outcome.status is not None:
        observe_status(key, outcome.status, time.monotonic() if now is None else now)


def observe_status(key: tuple[str, str], status: Mapping[str, Any], now: float) -> None:
    ns, name = key
    entries = [e for e in status.get("preconditions") or [] if isinstance(e, Mapping)]
    for state in STATES:
        preconditions.labels(ns, name, state).set(sum(1 for e in entries if e.get("state") == state))
    blocking = frozenset(str(e.get("name")) for e in entries if e.get("state") in BLOCKING_STATES)
    then, was_blocking = _last.get(key, (now, frozenset()))
    for pre in was_blocking:  # it blocked from the last observation until this one
        blocked_seconds.labels(ns, name, pre).inc(max(0.0, now - then))
    for pre in blocking:
        blocked_seconds.labels(ns, name, pre).inc(0)  # make the series visible from the first sight
        _series.setdefault(key, set()).add(pre)
    _last[key] = (now, blocking)


def forget(key: tuple[str, str]) -> None:
    """A deleted policy's series go away with it."""
    ns, name = key
    _last.pop(key, None)
    for state in STATES:
        with contextlib.suppress(KeyError):
            preconditions.remove(ns, name, state)
    for pre in _series.pop(key, set()):
        with contextlib.suppress(KeyError):
            blocked_seconds.remove(ns, name, pre)
