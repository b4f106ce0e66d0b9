"""How soon after a dependency changes does the policy's status say so?

One policy with K `configMap` preconditions (ConfigMaps dep-00.. dep-K-1, key `ready`) on one
Deployment (replicas 0). Then --changes changes, one at a time: each picks a ConfigMap at random
and flips it between having and lacking the key (a JSON merge patch). Latency: from the
ConfigMap write returning to a watch on the policy seeing that precondition's new state
(Satisfied when the key is there, anything else when not). A random pause of up to --gap s
separates changes, so they do not fall in step with anything in the operator. With the default
(0.2 s) changes come in quick succession, a few per second: the busy case, where an operator that
coalesces bursts pays its pause; `--gap 3` spaces them out like independent events.

The baselines are analytic: a checker that polls every P seconds sees a change that lands at a
uniformly random phase after P/2 on average (p50 = P/2) and at worst after P (p99 = 0.99 P):
a fixed 2 s poller (kubernetes-entrypoint, k8s-wait-for) and Flux's 30 s dependsOn requeue.

Status writes per change: depgate_status_writes_total / changes, and the API server's count.

    .venv/bin/python bench/status_latency.py [--changes 200] [--preconditions 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    Raw,
    Row,
    Say,
    Watch,
    delta,
    fmt_ms,
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

NAME = "status_latency"
POLLERS = {"fixed 2 s poller (kubernetes-entrypoint)": 2.0, "Flux dependsOn 30 s requeue": 30.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=200, help="measured changes (default 200)")
    ap.add_argument("--preconditions", type=int, default=5, help="configMap preconditions, K (default 5)")
    ap.add_argument("--gap", type=float, default=0.2, help="the longest random pause between changes (s)")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured changes first (default 5)")
    ap.add_argument("--per-change-timeout", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default bench/results/{NAME}.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (operator log) afterwards")
    args = ap.parse_args(argv)
    precise_threads()
    say = Say(NAME)
    load0 = os.getloadavg()
    rng = random.Random(args.seed)
    k = args.preconditions

    with private_plane(say, keep=args.keep) as cl:
        ns = cl.namespace("bench-status")
        who = cl.operator_identity()
        cms = [f"dep-{i:02d}" for i in range(k)]
        has = dict.fromkeys(cms, True)
        for c in cms:
            cl.admin.call("POST", f"/api/v1/namespaces/{ns}/configmaps",
                          body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": c},
                                "data": {"ready": "yes"}})
        cl.admin.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body={
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "app"}},
                     "template": {"metadata": {"labels": {"app": "app"}},
                                  "spec": {"containers": [{"name": "server", "image": "node:20"}]}}}})

        # The watch on the policy: every event's states, with the time it arrived.
        seen: list[tuple[float, dict[str, str]]] = []
        cond = threading.Condition()

        def on_policy(t: float, typ: str, obj: dict[str, Any]) -> None:
            states = {str(e.get("name")): str(e.get("state"))
                      for e in (obj.get("status") or {}).get("preconditions") or []}
            with cond:
                seen.append((t, states))
                cond.notify_all()

        observer = Raw(cl.kubeconfig)
        pol_path = f"/apis/depgate.io/v1alpha1/namespaces/{ns}/dependencypolicies"
        watch = Watch(observer, pol_path, on_policy, query=[("fieldSelector", "metadata.name=app")])
        op = start_operator(who.kubeconfig, cl.tmp, "-n", ns)
        cl.admin.call("POST", pol_path, body={
            "apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": "app"},
            "spec": {"workloadRef": {"name": "app"},
                     "preconditions": [{"name": f"c{i:02d}", "configMap": {"name": c, "keys": ["ready"]}}
                                       for i, c in enumerate(cms)]}})

        def all_satisfied() -> bool:
            with cond:
                return bool(seen) and all(seen[-1][1].get(f"c{i:02d}") == "Satisfied" for i in range(k))

        wait_until(all_satisfied, 60, "every precondition Satisfied")

        def flip(c: str) -> tuple[float, int, bool]:
            """Flip one ConfigMap; (write returned at, index of the first event that may show it, now has)."""
            want = not has[c]
            with cond:
                start = len(seen)
            returned, _ = cl.admin.timed_call("PATCH", f"/api/v1/namespaces/{ns}/configmaps/{c}",
                                              body={"data": {"ready": "yes" if want else None}},
                                              content_type="application/merge-patch+json")
            has[c] = want
            return returned, start, want

        def shown(pname: str, start: int, want: bool, timeout: float) -> float | None:
            def find() -> float | None:
                for t, states in seen[start:]:
                    if (states.get(pname) == "Satisfied") == want and pname in states:
                        return t
                return None

            with cond:
                found = cond.wait_for(find, timeout)
            return found

        def change() -> float | None:
            i = rng.randrange(k)
            returned, start, want = flip(cms[i])
            t = shown(f"c{i:02d}", start, want, args.per_change_timeout)
            time.sleep(rng.uniform(0, args.gap))
            return None if t is None else t - returned

        try:
            for _ in range(args.warmup):
                change()
            settle(lambda: op.counter("depgate_reconciles_total"), 1.5, 30)
            before = {"status_writes": op.counter("depgate_status_writes_total"),
                      "writes": op.counter("depgate_api_writes_total"),
                      "reconciles": op.counter("depgate_reconciles_total"), "api": who.counts(),
                      "events": len(seen)}
            say(f"all {k} preconditions Satisfied; {args.changes} changes")
            lat: list[float] = []
            missed = 0
            for n in range(args.changes):
                got = change()
                if got is None:
                    missed += 1
                else:
                    lat.append(got)
                if (n + 1) % max(1, args.changes // 10) == 0:
                    s = summary_ms(lat)
                    say(f"change {n + 1}/{args.changes}: p50 {fmt_ms(s.get('p50_ms', 0))}, "
                        f"max {fmt_ms(s.get('max_ms', 0))}, missed {missed}")
            settle(lambda: (op.counter("depgate_reconciles_total"), who.counts()), 2, 60, say, "quiet")
            after = {"status_writes": op.counter("depgate_status_writes_total"),
                     "writes": op.counter("depgate_api_writes_total"),
                     "reconciles": op.counter("depgate_reconciles_total"), "api": who.counts(),
                     "events": len(seen)}
            log_facts = operator_log_facts(op)
            watch_errors = watch.errors
        finally:
            stop_operator(op)
            watch.close()

    n = args.changes
    api = delta(after["api"], before["api"])
    per = {
        "depgate_status_writes_total": (after["status_writes"] - before["status_writes"]) / n,
        "depgate_api_writes_total": (after["writes"] - before["writes"]) / n,
        "reconciles": (after["reconciles"] - before["reconciles"]) / n,
        "api_server_status_writes": api["status"] / n,
        "api_server_writes": writes(api) / n,
        "policy_watch_events": (after["events"] - before["events"]) / n,
        **{f"api_server_{c}": v / n for c, v in api.items()},
    }
    per = {key: round(v, 2) for key, v in per.items()}
    # Misses count as never shown: they make p99 infinite rather than vanish from the sample.
    samples = lat + [float("inf")] * missed
    s = summary_ms(samples)
    base = {name: {"p50_ms": period / 2 * 1000, "p99_ms": 0.99 * period * 1000} for name, period in POLLERS.items()}
    two, flux = base["fixed 2 s poller (kubernetes-entrypoint)"], base["Flux dependsOn 30 s requeue"]
    rows = [
        Row(NAME, f"ConfigMap key flipped -> policy status shows it ({k} configMap preconditions), vs pollers "
                  "(analytic: uniform phase, p50 = period/2)",
            f"p50 {fmt_ms(s['p50_ms'])}",
            f"p50 {fmt_ms(two['p50_ms'])} (2 s poller); {fmt_ms(flux['p50_ms'])} (Flux 30 s)",
            f"{s['p50_ms'] / two['p50_ms']:.2f}x; {s['p50_ms'] / flux['p50_ms']:.3f}x", "-", None),
        Row(NAME, "the same, p99 (pollers: 0.99 x period)", f"p99 {fmt_ms(s['p99_ms'])}",
            f"p99 {fmt_ms(two['p99_ms'])} (2 s poller); {fmt_ms(flux['p99_ms'])} (Flux 30 s)",
            f"{s['p99_ms'] / two['p99_ms']:.2f}x; {s['p99_ms'] / flux['p99_ms']:.3f}x", "p99 < 1 s",
            s["p99_ms"] < 1000),
        Row(NAME, "status writes per change (API server; depgate_status_writes_total in brackets; all writes: "
                  + ", ".join(f"{c} {v / n:g}" for c, v in api.items() if c != "reads" and v) + ")",
            f"{per['api_server_status_writes']:g} ({per['depgate_status_writes_total']:g})", "-", "-", "-", None),
    ]
    payload = {
        "what": "seconds from a ConfigMap write returning to the policy's status showing the new state",
        "params": {"changes": n, "preconditions": k, "gap_s": args.gap, "warmup": args.warmup},
        "latency": s,
        "missed": missed,
        "baselines_analytic": base,
        "per_change": per,
        "api_requests": api,
        "watch_errors": watch_errors,
        "operator_log": log_facts,
        "samples_ms": [round(v * 1000, 1) for v in lat],
    }
    write_result(NAME, args.out, payload, rows, load0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
