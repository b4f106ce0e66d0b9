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

Before the measured rounds, a drift probe (strip one warm-up Deployment's init containers, time
the restore, once a second) waits until the operator handles Deployment events promptly: the
time that takes after the operator's start is reported apart, as a start-up cost.

    .venv/bin/python bench/reconcile_latency.py [--policies 200] [--rate 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    Raw,
    Row,
    Sampler,
    Say,
    Watch,
    delta,
    fmt_ms,
    goal_row,
    operator_log_facts,
    precise_threads,
    private_plane,
    settle,
    start_floor,
    start_operator,
    stop_floor,
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
        who = {"depgate": cl.operator_identity(), "floor": cl.identity("floor")}
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
        dep_events: list[tuple[float, str]] = []  # every Deployment event (diagnosis: what wakes the operator)
        lock = threading.Lock()

        # The last event that showed our init containers: (received at, resourceVersion).
        restored: dict[tuple[str, str], tuple[float, int]] = {}

        def on_deployment(t: float, typ: str, obj: dict[str, Any]) -> None:
            md = obj.get("metadata") or {}
            dep_events.append((t, str(md.get("namespace"))))
            inits = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("initContainers") or []
            if typ != "DELETED" and any(str(c.get("name", "")).startswith("depgate-") for c in inits):
                with lock:
                    gated.setdefault((md.get("namespace"), md.get("name")), t)
                    restored[(md.get("namespace"), md.get("name"))] = (t, int(md.get("resourceVersion") or 0))

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
        t_op = time.monotonic()
        op = start_operator(who["depgate"].kubeconfig, cl.tmp, "-n", sides["depgate"])
        floor, floor_log = start_floor(who["floor"].kubeconfig, sides["floor"], cl.tmp)
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
            # Steady state first: strip a gated Deployment's init containers once a second until the
            # operator puts them back promptly. Right after a start, Kopf may still be working through
            # its first listing of the namespace's Deployments, and their events wait behind it.
            probe_key = (sides["depgate"], warm[0])
            probes: list[tuple[float, float]] = []  # (seconds since the operator's start, restore ms)
            while True:
                t_strip, stripped = cl.admin.timed_call(
                    "PATCH", f"/apis/apps/v1/namespaces/{sides['depgate']}/deployments/{warm[0]}",
                    body=[{"op": "remove", "path": "/spec/template/spec/initContainers"}],
                    content_type="application/json-patch+json")
                # resourceVersions of one etcd are increasing integers: only a later write is a restore
                rv = int(stripped["metadata"]["resourceVersion"])
                wait_until(lambda rv=rv: restored.get(probe_key, (0, 0))[1] > rv, 300, "the drift probe's restore",
                           interval=0.01)
                probes.append((round(t_strip - t_op, 1), round((restored[probe_key][0] - t_strip) * 1000, 1)))
                if len(probes) >= 2 and all(ms < 500 for _, ms in probes[-2:]):
                    break
                if time.monotonic() - t_op > args.timeout:
                    say("the drift probe is still slow; measuring anyway")
                    break
                time.sleep(1.0)
            prompt_after = probes[-2][0] if len(probes) >= 2 else float("nan")
            say(f"drift restored promptly from {prompt_after:.1f}s after the operator's start "
                f"(first probe: {probes[0][1]:.0f} ms); {n} rounds at {args.rate:g}/s")
            settle(lambda: op.counter("depgate_reconciles_total"), 2, 30)
            before = {"reconciles": op.counter("depgate_reconciles_total"),
                      "writes": op.counter("depgate_api_writes_total"),
                      "status_writes": op.counter("depgate_status_writes_total"),
                      "reconcile_seconds": op.counter("depgate_reconcile_duration_seconds_sum"),
                      **{f"api_{side}": who[side].counts() for side in sides}}

            sampler = Sampler(op)
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
            t_gated = time.monotonic()
            say("all Deployments gated; waiting for the operator to go quiet")
            quiet_for = settle(lambda: (op.counter("depgate_reconciles_total"), who["depgate"].counts()), 3, 120,
                               say, "quiet")
            after = {"reconciles": op.counter("depgate_reconciles_total"),
                     "writes": op.counter("depgate_api_writes_total"),
                     "status_writes": op.counter("depgate_status_writes_total"),
                     "reconcile_seconds": op.counter("depgate_reconcile_duration_seconds_sum"),
                     **{f"api_{side}": who[side].counts() for side in sides}}
            sampler.close()
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
            stop_floor(floor, floor_log)
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
    def events_per_s(t: float, before: float = 1.0) -> float:
        """Deployment events in depgate's namespace (its applies, kube-controller-manager's status updates)."""
        return round(sum(1 for te, ns in dep_events if ns == sides["depgate"] and t - before <= te <= t) / before, 1)

    # The slowest depgate samples, with what the operator process was doing just before each one.
    cpu = sampler.windows(t0, t_gated)
    slowest = sorted(range(n), key=lambda i: -lat["depgate"][i])[:5]
    stalls = [{"round": i, "depgate_ms": round(lat["depgate"][i] * 1000, 1),
               "floor_ms": round(lat["floor"][i] * 1000, 1),
               "at_s": round(created[(sides["depgate"], names[i])] - t0, 2),
               "deployment_events_per_s": events_per_s(gated[(sides["depgate"], names[i])]),
               **sampler.around(gated[(sides["depgate"], names[i])])} for i in sorted(slowest)]
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
        "startup": {"deployments_in_operator_namespace": n + args.warmup,
                    "drift_prompt_after_start_s": prompt_after,
                    "drift_probes_s_ms": probes},
        "operator_cpu": {"percent_of_one_core_mean": round(sum(cpu) / max(1, len(cpu)), 1),
                         "percent_max_1s": max(cpu, default=float("nan")), "per_second": cpu},
        "slowest_depgate": stalls,
        "deployment_events_per_s_depgate": [
            sum(1 for te, ns in dep_events if ns == sides["depgate"] and t0 + k <= te < t0 + k + 1)
            for k in range(int(t_gated - t0))],
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
