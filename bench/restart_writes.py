"""What does a restarted operator write when nothing changed? It should write nothing.

N policies (default 100), each gating its own Deployment (replicas 0) with one tcp and one
configMap precondition (so Role, RoleBinding and a Satisfied verdict are part of the state),
converge and go quiet. The operator is stopped and started again; once its
depgate_reconciles_total shows every policy reconciled at least once and everything went
quiet (no reconcile and no request from the operator for --settle s), we report:

  - the writes the new process says it sent (depgate_api_writes_total, depgate_status_writes_total);
  - the write requests the API server counted from the operator's ServiceAccount, through the
    stop and the start (Kopf's own patches and Events included);
  - the objects whose resourceVersion moved (every Deployment, policy, Role, RoleBinding and
    ConfigMap of the namespace, before the stop vs after the restart), with the fields that changed.

    .venv/bin/python bench/restart_writes.py [--policies 100] [--settle 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    Cluster,
    Row,
    Say,
    delta,
    operator_log_facts,
    private_plane,
    settle,
    start_operator,
    stop_operator,
    wait_until,
    write_result,
    writes,
)

NAME = "restart_writes"
KINDS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "DependencyPolicy": "/apis/depgate.io/v1alpha1/namespaces/{ns}/dependencypolicies",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
}


def snapshot(cl: Cluster, ns: str) -> dict[str, dict[str, Any]]:
    out = {}
    for kind, path in KINDS.items():
        for item in cl.admin.call("GET", path.format(ns=ns))["items"]:
            out[f"{kind}/{item['metadata']['name']}"] = item
    return out


def diff(a: Any, b: Any, path: str = "", out: list[str] | None = None) -> list[str]:
    """Paths where two objects differ (resourceVersion and managedFields left out)."""
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in ("resourceVersion", "managedFields"):
                continue
            diff(a.get(k), b.get(k), f"{path}.{k}", out)
    elif a != b:
        out.append(path or ".")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=int, default=100, help="policies (and Deployments) (default 100)")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="quiet seconds (no reconcile, no request) that count as settled (default 5)")
    ap.add_argument("--timeout", type=float, default=300, help="the longest wait for any phase (s)")
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default bench/results/{NAME}.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (operator logs) afterwards")
    args = ap.parse_args(argv)
    say = Say(NAME)
    load0 = os.getloadavg()
    n = args.policies

    with private_plane(say, keep=args.keep) as cl:
        ns = cl.namespace("bench-restart")
        who = cl.operator_identity()
        pols = f"/apis/depgate.io/v1alpha1/namespaces/{ns}/dependencypolicies"
        cl.admin.call("POST", f"/api/v1/namespaces/{ns}/configmaps", body={
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"ready": "yes"}})
        say(f"creating {n} Deployments and starting the operator")
        for i in range(n):
            name = f"app-{i:04d}"
            cl.admin.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body={
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "server", "image": "node:20"}]}}}})
        op = start_operator(who.kubeconfig, cl.tmp, "-n", ns)
        try:
            say(f"creating {n} policies")
            for i in range(n):
                cl.admin.call("POST", pols, body={
                    "apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
                    "metadata": {"name": f"p-{i:04d}"},
                    "spec": {"workloadRef": {"name": f"app-{i:04d}"}, "preconditions": [
                        {"name": "db-port", "tcp": {"host": "db", "port": 5432}},
                        {"name": "settings", "configMap": {"name": "settings", "keys": ["ready"]}}]}})

            def converged() -> bool:
                """Applied, and the configMap verdict Satisfied (tcp is judged in pods: there are none)."""
                items = cl.admin.call("GET", pols)["items"]
                return len(items) == n and all(
                    (p.get("status") or {}).get("observedGeneration") == p["metadata"].get("generation")
                    and any(c.get("type") == "Applied" and c.get("status") == "True"
                            for c in (p.get("status") or {}).get("conditions") or [])
                    and any(e.get("name") == "settings" and e.get("state") == "Satisfied"
                            for e in (p.get("status") or {}).get("preconditions") or [])
                    for p in items)

            wait_until(converged, args.timeout, f"{n} policies Applied, settings Satisfied", interval=0.5)
            say("converged; waiting until quiet")
            settle(lambda: (op.counter("depgate_reconciles_total"), who.counts()), args.settle, args.timeout,
                   say, "quiet")
            first_run = {"writes": op.counter("depgate_api_writes_total"),
                         "reconciles": op.counter("depgate_reconciles_total")}
            log1 = operator_log_facts(op)
            before = snapshot(cl, ns)
            api0 = who.counts()
            say(f"stopping the operator ({len(before)} objects in the namespace)")
            t = time.monotonic()
            stop_operator(op)
            stop_seconds = time.monotonic() - t
            api_stopped = who.counts()
            log_stop = operator_log_facts(op, since=log1["log_chars"])
        except BaseException:
            stop_operator(op)
            raise

        say(f"stopped in {stop_seconds:.1f}s; starting it again")
        t_start = time.monotonic()
        op2 = start_operator(who.kubeconfig, cl.tmp, "-n", ns)
        try:
            up_seconds = time.monotonic() - t_start
            wait_until(lambda: op2.counter("depgate_reconciles_total") >= n, args.timeout,
                       f"{n} reconciles in the new process", interval=0.1)
            caught_up = time.monotonic() - t_start
            say(f"all {n} policies reconciled {caught_up:.1f}s after the start; waiting until quiet")
            settle(lambda: (op2.counter("depgate_reconciles_total"), who.counts()), args.settle, args.timeout,
                   say, "quiet")
            m = {"depgate_api_writes_total": op2.counter("depgate_api_writes_total"),
                 "depgate_status_writes_total": op2.counter("depgate_status_writes_total"),
                 "depgate_reconciles_total": op2.counter("depgate_reconciles_total")}
            api_end = who.counts()
            after = snapshot(cl, ns)
            log2 = operator_log_facts(op2)
        finally:
            stop_operator(op2)

    api_stop = delta(api_stopped, api0)
    api_start = delta(api_end, api_stopped)
    changed = {key: diff(before[key], after.get(key))[:8] for key in before
               if after.get(key) is None
               or after[key]["metadata"]["resourceVersion"] != before[key]["metadata"]["resourceVersion"]}
    added = sorted(set(after) - set(before))
    by_kind: dict[str, int] = {}
    for key in changed:
        by_kind[key.split("/")[0]] = by_kind.get(key.split("/")[0], 0) + 1
    total_api_writes = writes(api_stop) + writes(api_start)
    rows = [
        Row(NAME, f"writes a restarted operator sends with nothing to change ({n} converged policies), "
                  "by its own count (depgate_api_writes_total, status in brackets)",
            f"{m['depgate_api_writes_total']:g} ({m['depgate_status_writes_total']:g})", "0", "-", "0",
            m["depgate_api_writes_total"] == 0),
        Row(NAME, "the same, by the API server's count of the operator's write requests through stop and start ("
                  + (", ".join(f"{c} {v:g}" for c, v in delta(api_end, api0).items() if c != "reads" and v)
                     or "none") + ")",
            f"{total_api_writes:g}", "0", "-", "0", total_api_writes == 0),
        Row(NAME, f"objects whose resourceVersion moved, of {len(before)} (Deployments, policies, Roles, "
                  "RoleBindings, ConfigMaps)",
            f"{len(changed)}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})" if changed else ""),
            "0", "-", "0", not changed and not added),
        Row(NAME, f"restart to every policy reconciled once ({n} policies); reads sent meanwhile, per policy",
            f"{caught_up:.1f} s; {api_start['reads'] / n:.1f} reads", "-", "-", "-", None),
    ]
    payload = {
        "what": "writes sent by a restarted operator when nothing changed",
        "params": {"policies": n, "settle_s": args.settle, "preconditions": ["tcp", "configMap"]},
        "first_run": first_run,
        "restart": {"stop_seconds": round(stop_seconds, 2), "metrics_up_seconds": round(up_seconds, 2),
                    "all_reconciled_seconds": round(caught_up, 2), **m},
        "api_requests_during_stop": api_stop,
        "api_requests_during_start": api_start,
        "objects": len(before),
        "changed": changed,
        "added": added,
        "operator_log": {"first": log1, "first_shutdown": log_stop, "restarted": log2},
    }
    write_result(NAME, args.out, payload, rows, load0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
