"""How soon after a DependencyPolicy is created does its Deployment carry the init containers?

N policies per side, each gating its own pre-created Deployment (replicas 0 by default: pods
are not what this measures). Two sides run at once, on separate namespaces of one private plane:

  depgate   `python -m depgate run -n bench-depgate` (Kopf, status, events, RBAC, everything)
  floor     bench/floor.py on bench-floor: a minimal loop with the same `kubernetes` client
            that watches policies and sends one server-side apply of the same rendered body
            (depgate.render.apply_body of depgate.spec.parse_policy), nothing else

Policies are created in rounds at --rate rounds/s, one per side per round, the order alternating,
so load and noise hit both. Latency: from the policy's create request returning to the moment
ONE watch on the Deployments of both namespaces sees init containers named depgate-* on its
target. A second watch, on depgate's policies, splits depgate's time into create -> finalizer
(Kopf's first write) and -> status (depgate's last write).

Writes per policy are counted twice: depgate's own counters (depgate_api_writes_total,
depgate_status_writes_total), and the API server's count of every request each side's
ServiceAccount sent (see bench/common.py).

    .venv/bin/python bench/reconcile_latency.py [--policies 200] [--rate 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    HERE,
    Raw,
    Row,
    Say,
    Watch,
    delta,
    fmt_ms,
    goal_row,
    operator_log_facts,
    precise_threads,
    private_plane,
    settle,
    start_operator,
    stop_operator,
    summary_ms,
    wait_until,
    write_result,
    writes,
)

NAME = "reconcile_latency"
LABEL = "depgate-bench"
GROUP_PATH = "/apis/depgate.io/v1alpha1"


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, LABEL: NAME}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "server", "image": "node:20",
                                         "env": [{"name": "DB_URL", "value": "postgres://db:5432/app"}]}]},
            },
        },
    }


def policy(name: str, target: str) -> dict[str, Any]:
    """Two network preconditions: rendered into the pod, judged there (no RBAC objects, no verdicts)."""
    return {
        "apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
        "metadata": {"name": name},
        "spec": {
            "workloadRef": {"name": target},
            "preconditions": [
                {"name": "db-port", "tcp": {"host": "db", "port": 5432}},
                {"name": "api-health", "http": {"url": "http://api:8080/healthz"}},
            ],
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=int, default=200, help="policies (and Deployments) per side (default 200)")
    ap.add_argument("--rate", type=float, default=5.0,
                    help="rounds per second; each round creates one policy per side (default 5)")
    ap.add_argument("--replicas", type=int, default=0, help="replicas of each Deployment (default 0: no pods)")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first (default 3)")
    ap.add_argument("--timeout", type=float, default=300, help="the longest wait for all init containers (s)")
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default bench/results/{NAME}.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (operator log) afterwards")
    args = ap.parse_args(argv)
    precise_threads()
    say = Say(NAME)
    load0 = os.getloadavg()
    n = args.policies

    with private_plane(say, keep=args.keep) as cl:
        sides = {"depgate": cl.namespace("bench-depgate"), "floor": cl.namespace("bench-floor")}
        who = {"depgate": cl.identity("operator"), "floor": cl.identity("floor")}
        warm = [f"warm-{i:02d}" for i in range(args.warmup)]
        names = [f"app-{i:04d}" for i in range(n)]
        say(f"creating {2 * (n + len(warm))} Deployments (replicas {args.replicas})")
        for ns in sides.values():
            for d in warm + names:
                cl.admin.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=deployment(d, args.replicas))

        def observed_all() -> bool:
            items = cl.admin.call("GET", "/apis/apps/v1/deployments", query=[("labelSelector", f"{LABEL}={NAME}")])
            return all((i.get("status") or {}).get("observedGeneration") for i in items["items"])

        say("waiting for kube-controller-manager to observe them (its client is limited to 20 requests/s)")
        wait_until(observed_all, 600, "kube-controller-manager to observe every Deployment", interval=1.0)

        # ONE watch on the Deployments of both namespaces: when do depgate-* init containers appear?
        gated: dict[tuple[str, str], float] = {}
        lock = threading.Lock()

        def on_deployment(t: float, typ: str, obj: dict[str, Any]) -> None:
            md = obj.get("metadata") or {}
            inits = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("initContainers") or []
            if typ != "DELETED" and any(str(c.get("name", "")).startswith("depgate-") for c in inits):
                with lock:
                    gated.setdefault((md.get("namespace"), md.get("name")), t)

        listing = cl.admin.call("GET", "/apis/apps/v1/deployments", query=[("labelSelector", f"{LABEL}={NAME}")])
        observer = Raw(cl.kubeconfig)
        dep_watch = Watch(observer, "/apis/apps/v1/deployments", on_deployment,
                          query=[("labelSelector", f"{LABEL}={NAME}")],
                          resource_version=listing["metadata"]["resourceVersion"])
        # Diagnosis only: when Kopf's finalizer and depgate's status land on depgate's policies.
        finalized: dict[str, float] = {}
        statused: dict[str, float] = {}

        def on_policy(t: float, typ: str, obj: dict[str, Any]) -> None:
            md = obj.get("metadata") or {}
            if "depgate.io/cleanup" in (md.get("finalizers") or []):
                finalized.setdefault(md["name"], t)
            if (obj.get("status") or {}).get("conditions"):
                statused.setdefault(md["name"], t)

        pol_watch = Watch(observer, f"{GROUP_PATH}/namespaces/{sides['depgate']}/dependencypolicies", on_policy)

        say("starting the operator and the floor")
        op = start_operator(who["depgate"].kubeconfig, cl.tmp, "-n", sides["depgate"])
        floor_log = (cl.tmp / "floor.log").open("wb")
        floor = subprocess.Popen(
            [sys.executable, str(HERE / "floor.py"), f"--kubeconfig={who['floor'].kubeconfig}",
             f"--namespace={sides['floor']}"],
            stdout=subprocess.PIPE, stderr=floor_log, stdin=subprocess.DEVNULL)
        assert floor.stdout is not None
        if floor.stdout.readline().strip() != b"ready":
            raise SystemExit(f"the floor did not start; see {cl.tmp / 'floor.log'}")
        created: dict[tuple[str, str], float] = {}
        round_trip: list[float] = []

        def create(side: str, pname: str, target: str) -> None:
            ns = sides[side]
            sent = time.monotonic()
            created[(ns, target)], _ = cl.admin.timed_call(
                "POST", f"{GROUP_PATH}/namespaces/{ns}/dependencypolicies", body=policy(pname, target))
            round_trip.append(created[(ns, target)] - sent)

        try:
            for i, d in enumerate(warm):
                for side in ("depgate", "floor"):
                    create(side, f"warm-{i:02d}", d)
            wait_until(lambda: all((ns, d) in gated for ns in sides.values() for d in warm), 120,
                       "the warm-up policies' init containers")
            settle(lambda: op.counter("depgate_reconciles_total"), 2, 30)
            say(f"warmed up; {n} rounds at {args.rate:g}/s")
            before = {"reconciles": op.counter("depgate_reconciles_total"),
                      "writes": op.counter("depgate_api_writes_total"),
                      "status_writes": op.counter("depgate_status_writes_total"),
                      "reconcile_seconds": op.counter("depgate_reconcile_duration_seconds_sum"),
                      **{f"api_{side}": who[side].counts() for side in sides}}

            t0 = time.monotonic()
            for i, d in enumerate(names):
                pause = t0 + i / args.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                for side in ("depgate", "floor") if i % 2 == 0 else ("floor", "depgate"):
                    create(side, f"p-{i:04d}", d)
                if (i + 1) % max(1, n // 10) == 0 or i + 1 == n:
                    with lock:
                        done = {s: sum((ns, x) in gated for x in names) for s, ns in sides.items()}
                    say(f"round {i + 1}/{n}: gated so far depgate {done['depgate']}, floor {done['floor']}")

            def all_gated() -> bool:
                with lock:
                    return all((ns, d) in gated for ns in sides.values() for d in names)

            wait_until(all_gated, args.timeout, "every Deployment's init containers", interval=0.2)
            say("all Deployments gated; waiting for the operator to go quiet")
            quiet_for = settle(lambda: (op.counter("depgate_reconciles_total"), who["depgate"].counts()), 3, 120,
                               say, "quiet")
            after = {"reconciles": op.counter("depgate_reconciles_total"),
                     "writes": op.counter("depgate_api_writes_total"),
                     "status_writes": op.counter("depgate_status_writes_total"),
                     "reconcile_seconds": op.counter("depgate_reconcile_duration_seconds_sum"),
                     **{f"api_{side}": who[side].counts() for side in sides}}
            log_facts = operator_log_facts(op)
            watch_errors = dep_watch.errors + pol_watch.errors

            def inits(ns: str) -> dict[str, Any]:
                items = cl.admin.call("GET", f"/apis/apps/v1/namespaces/{ns}/deployments")["items"]
                return {i["metadata"]["name"]: i["spec"]["template"]["spec"].get("initContainers") for i in items}

            ours, theirs = inits(sides["depgate"]), inits(sides["floor"])
            differ = sorted(d for d in names if ours.get(d) != theirs.get(d))
            if differ:
                say(f"{len(differ)} Deployments differ between depgate and the floor, e.g. {differ[0]}")
        finally:
            stop_operator(op)
            floor.send_signal(signal.SIGINT)
            try:
                floor.wait(10)
            except subprocess.TimeoutExpired:
                floor.kill()
            floor_log.close()
            dep_watch.close()
            pol_watch.close()

    lat = {s: [gated[(ns, d)] - created[(ns, d)] for d in names] for s, ns in sides.items()}
    split = {
        "create_to_finalizer": [finalized[f"p-{i:04d}"] - created[(sides["depgate"], d)]
                                for i, d in enumerate(names) if f"p-{i:04d}" in finalized],
        "create_to_init_containers": lat["depgate"],
        "create_to_status": [statused[f"p-{i:04d}"] - created[(sides["depgate"], d)]
                             for i, d in enumerate(names) if f"p-{i:04d}" in statused],
    }
    api = {s: delta(after[f"api_{s}"], before[f"api_{s}"]) for s in sides}
    reconciles = after["reconciles"] - before["reconciles"]
    per = {
        "depgate_api_writes_total": (after["writes"] - before["writes"]) / n,
        "depgate_status_writes_total": (after["status_writes"] - before["status_writes"]) / n,
        "reconciles": reconciles / n,
        "api_server_writes_depgate": writes(api["depgate"]) / n,
        "api_server_status_writes_depgate": api["depgate"]["status"] / n,
        "api_server_reads_depgate": api["depgate"]["reads"] / n,
        "api_server_writes_floor": writes(api["floor"]) / n,
        "api_server_reads_floor": api["floor"]["reads"] / n,
        **{f"api_server_depgate_{k}": v / n for k, v in api["depgate"].items()},
    }
    per = {k: round(v, 2) for k, v in per.items()}
    mean_reconcile_ms = 1000 * (after["reconcile_seconds"] - before["reconcile_seconds"]) / max(1.0, reconciles)
    s = {side: summary_ms(v) for side, v in lat.items()}
    rows = [
        goal_row(NAME, "policy created -> init containers on its Deployment, depgate vs a minimal "
                 "watch+apply loop (same client, same body)", s["depgate"]["p50_ms"], s["floor"]["p50_ms"],
                 "floor", 1.5, "p50"),
        goal_row(NAME, "the same, p99", s["depgate"]["p99_ms"], s["floor"]["p99_ms"], "floor", 2.0, "p99"),
        Row(NAME, "write requests per policy (API server's count; depgate_api_writes_total in brackets; "
            "by resource: " + ", ".join(f"{k} {v / n:g}" for k, v in api["depgate"].items() if k != "reads" and v)
            + ")",
            f"{per['api_server_writes_depgate']:g} ({per['depgate_api_writes_total']:g})",
            f"{per['api_server_writes_floor']:g} (floor)",
            f"{per['api_server_writes_depgate'] / max(per['api_server_writes_floor'], 1e-9):.1f}x", "-", None),
        Row(NAME, "status writes per policy (API server; depgate_status_writes_total in brackets)",
            f"{per['api_server_status_writes_depgate']:g} ({per['depgate_status_writes_total']:g})", "0 (floor)",
            "-", "-", None),
    ]
    payload = {
        "what": "seconds from a policy's create returning to its Deployment carrying depgate-* init containers",
        "params": {"policies": n, "rate_rounds_per_s": args.rate, "replicas": args.replicas,
                   "warmup": args.warmup, "preconditions": ["tcp", "http"]},
        "latency": s,
        "depgate_split": {k: summary_ms(v) for k, v in split.items()},
        "per_policy": per,
        "mean_reconcile_ms": round(mean_reconcile_ms, 1),
        "api_requests": api,
        "settle_seconds": round(quiet_for, 1),
        "init_containers_differ_from_floor": differ,
        "create_round_trip": summary_ms(round_trip),
        "negative_samples": {side: sum(v < 0 for v in vals) for side, vals in lat.items()},
        "watch_errors": watch_errors,
        "operator_log": log_facts,
        "samples_ms": {side: [round(v * 1000, 1) for v in vals] for side, vals in lat.items()},
    }
    write_result(NAME, args.out, payload, rows, load0)
    sp = payload["depgate_split"]
    print(f"depgate: create -> finalizer p50 {fmt_ms(sp['create_to_finalizer'].get('p50_ms', 0))}, "
          f"-> init containers p50 {fmt_ms(sp['create_to_init_containers']['p50_ms'])}, "
          f"-> status p50 {fmt_ms(sp['create_to_status'].get('p50_ms', 0))}; "
          f"{per['reconciles']:g} reconciles per policy, mean reconcile {mean_reconcile_ms:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
