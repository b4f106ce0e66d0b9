"""Prometheus metrics (prometheus_client), served by `depgate run --metrics-port`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from depgate.controller import Outcome

reconciles = Counter("depgate_reconciles_total", "Reconciles of DependencyPolicies, by result.", ["result"])
reconcile_seconds = Histogram(
    "depgate_reconcile_duration_seconds", "Time one reconcile of one policy took.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
writes = Counter("depgate_api_writes_total", "Write requests depgate sent (applies, patches, status writes).")
status_writes = Counter("depgate_status_writes_total", "Status writes on DependencyPolicies.")
preconditions = Gauge("depgate_preconditions", "Preconditions by state, per policy.",
                      ["namespace", "policy", "state"])
blocked_seconds = Counter("depgate_precondition_blocked_seconds_total",
                          "Seconds each precondition has spent blocking (counted at each reconcile).",
                          ["namespace", "policy", "precondition"])


def observe(outcome: Outcome, seconds: float) -> None:
    reconciles.labels(result=outcome.result).inc()
    reconcile_seconds.observe(seconds)
    writes.inc(outcome.writes)
    if outcome.status_written:
        status_writes.inc()
