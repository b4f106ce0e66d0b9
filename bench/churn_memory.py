"""Does the operator's memory grow under churn? RSS over a long loop of policy and dependency changes.

A private plane, one namespace, `--policies` Deployments (1 replica each: kwok runs the pods, so
pod events and rollouts are part of the churn), a ConfigMap per policy, and policies with a
configMap precondition (judged by the operator) and a tcp one (rendered into the pod). Then, for
`--minutes`, `--rate` random changes per second, each one of:

  - flip a ConfigMap's key (its policy goes Blocked/Satisfied: a status write)        50%
  - add or drop a policy's http precondition (new generation: the Deployment rolls)   20%
  - delete a policy and create it again (finalizer, release, re-apply)                15%
  - delete a ConfigMap and create it again (NotFound, then found)                     15%

The operator's VmRSS (/proc) is sampled every 5 s. The first `--warmup` minutes are not judged
(imports, caches, Kopf's first listing, allocator arenas reaching their working size); growth is
the mean RSS over the last 2 minutes against the mean over the 2 minutes after the warm-up, and
the least-squares slope over everything after the warm-up is reported as MiB per hour. At the end
the loop stops and every policy must converge (status of its current generation, its ConfigMap's
state reflected): memory that stays flat because work was dropped would not count.

    .venv/bin/python bench/churn_memory.py [--minutes 30] [--policies 40] [--rate 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    Row,
    Say,
    operator_log_facts,
    private_plane,
    proc_status,
    start_operator,
    stop_operator,
    wait_until,
    write_result,
)
from reconcile_latency import GROUP_PATH, deployment

NAME = "churn_memory"


def policy(i: int, with_http: bool) -> dict[str, Any]:
    pre: list[dict[str, Any]] = [
        {"name": "settings", "configMap": {"name": f"cm-{i:03d}", "keys": ["ready"]}},
        {"name": "db-port", "tcp": {"host": "db", "port": 5432}},
    ]
    if with_http:
        pre.append({"name": "api-health", "http": {"url": "http://api:8080/healthz"}})
    return {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": f"p-{i:03d}"},
            "spec": {"workloadRef": {"name": f"app-{i:03d}"}, "preconditions": pre}}


def config_map(i: int, ready: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i:03d}"},
            "data": {"ready": "yes"} if ready else {"other": "x"}}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def slope_per_hour(pts: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per hour."""
    if len(pts) < 2:
        return float("nan")
    mx, my = mean([p[0] for p in pts]), mean([p[1] for p in pts])
    den = sum((x - mx) ** 2 for x, _ in pts)
    return 3600 * sum((x - mx) * (y - my) for x, y in pts) / den if den else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the churn loop (default 30)")
    ap.add_argument("--warmup", type=float, default=3.0, help="minutes at the start not judged (default 3)")
    ap.add_argument("--policies", type=int, default=40, help="policies, Deployments and ConfigMaps (default 40)")
    ap.add_argument("--rate", type=float, default=5.0, help="changes per second (default 5)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default bench/results/{NAME}.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (operator log) afterwards")
    args = ap.parse_args(argv)
    if args.minutes < args.warmup + 4:
        ap.error("--minutes must leave at least 4 minutes after --warmup (2 for the baseline, 2 for the end)")
    say = Say(NAME)
    load0 = os.getloadavg()
    rng = random.Random(args.seed)
    n = args.policies

    with private_plane(say, keep=args.keep) as cl:
        ns = cl.namespace("bench-churn")
        who = cl.operator_identity()
        base = f"/api/v1/namespaces/{ns}/configmaps"
        pols = f"{GROUP_PATH}/namespaces/{ns}/dependencypolicies"
        ready = {i: True for i in range(n)}
        http = {i: False for i in range(n)}
        say(f"creating {n} Deployments (1 replica, pods run by kwok), ConfigMaps and policies")
        for i in range(n):
            cl.admin.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=deployment(f"app-{i:03d}", 1))
            cl.admin.call("POST", base, body=config_map(i, True))
            cl.admin.call("POST", pols, body=policy(i, False))
        op = start_operator(who.kubeconfig, cl.tmp, "-n", ns)
        pid = op.proc.pid
        samples: list[tuple[float, float]] = []  # (seconds since the loop started, RSS MiB)
        counts = {"flip": 0, "spec": 0, "recreate_policy": 0, "recreate_configmap": 0, "conflicts": 0}
        try:
            say(f"churning for {args.minutes:g} minutes at {args.rate:g} changes/s; RSS every 5 s")
            t0 = time.monotonic()
            end = t0 + 60 * args.minutes
            next_sample, k = t0, 0
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((round(now - t0, 1), round(proc_status(pid)["VmRSS"] / 1024, 2)))
                    next_sample += 5.0
                    if len(samples) % 24 == 1:  # every 2 minutes
                        say(f"{(now - t0) / 60:5.1f} min: RSS {samples[-1][1]:.1f} MiB, {k} changes "
                            f"({counts}), {op.counter('depgate_reconciles_total'):.0f} reconciles")
                pause = t0 + k / args.rate - time.monotonic()
                if pause > 0:
                    time.sleep(min(pause, max(0.0, next_sample - time.monotonic())))
                    continue
                k += 1
                i, roll = rng.randrange(n), rng.random()
                try:
                    if roll < 0.5:
                        ready[i] = not ready[i]
                        cl.admin.call("PUT", f"{base}/cm-{i:03d}", body=config_map(i, ready[i]))
                        counts["flip"] += 1
                    elif roll < 0.7:
                        http[i] = not http[i]
                        cl.admin.call("PATCH", f"{pols}/p-{i:03d}", body={"spec": policy(i, http[i])["spec"]},
                                      content_type="application/merge-patch+json")
                        counts["spec"] += 1
                    elif roll < 0.85:
                        cl.admin.call("DELETE", f"{pols}/p-{i:03d}")
                        wait_until(lambda i=i: cl.admin.call("GET", f"{pols}/p-{i:03d}") is None, 60,
                                   f"p-{i:03d} to go (finalizer released)", interval=0.05)
                        cl.admin.call("POST", pols, body=policy(i, http[i]))
                        counts["recreate_policy"] += 1
                    else:
                        cl.admin.call("DELETE", f"{base}/cm-{i:03d}")
                        cl.admin.call("POST", base, body=config_map(i, ready[i]))
                        counts["recreate_configmap"] += 1
                except Exception as e:  # a conflict with the operator's own writes: count, go on
                    if "409" not in str(e):
                        raise
                    counts["conflicts"] += 1
            t_end = time.monotonic()
            samples.append((round(t_end - t0, 1), round(proc_status(pid)["VmRSS"] / 1024, 2)))
            say(f"loop done: {k} changes; waiting for every policy to converge")

            def stragglers() -> list[str]:
                items = cl.admin.call("GET", pols)["items"]
                out = [f"{n - len(items)} policies missing"] if len(items) != n else []
                for p in items:
                    st = p.get("status") or {}
                    i = int(p["metadata"]["name"].split("-")[1])
                    entry = {e.get("name"): e for e in st.get("preconditions") or []}.get("settings") or {}
                    want = "Satisfied" if ready[i] else "Blocking"
                    if st.get("observedGeneration") != p["metadata"]["generation"] or entry.get("state") != want:
                        out.append(f"{p['metadata']['name']}: generation {p['metadata']['generation']}, observed "
                                   f"{st.get('observedGeneration')}, settings {entry.get('state')} (want {want})")
                return out

            t_conv0 = time.monotonic()
            try:
                wait_until(lambda: not stragglers(), 120, "every policy to converge after the churn", interval=0.5)
            except TimeoutError:
                raise SystemExit("not converged 120 s after the churn: " + "; ".join(stragglers())) from None
            converge_s = time.monotonic() - t_conv0
            reconciles = op.counter("depgate_reconciles_total")
            log = operator_log_facts(op)
        finally:
            stop_operator(op)

    warm_s = 60 * args.warmup
    after = [(t, m) for t, m in samples if t >= warm_s]
    first = [m for t, m in after if t < warm_s + 120]
    last = [m for t, m in after if t >= samples[-1][0] - 120]
    growth = (mean(last) - mean(first)) / mean(first) * 100
    slope = slope_per_hour(after)
    rows = [
        Row(NAME, f"operator RSS under {args.minutes:g} min of churn ({k} changes: ConfigMap flips, spec edits, "
            f"policy and ConfigMap re-creates over {n} policies with pods), mean of the last 2 min vs the 2 min after "
            f"a {args.warmup:g} min warm-up", f"{mean(first):.1f} -> {mean(last):.1f} MiB ({growth:+.1f}%)",
            "-", "-", "< 5%", growth < 5.0),
        Row(NAME, "the same, least-squares slope after the warm-up; peak and start", f"{slope:+.1f} MiB/h",
            f"start {samples[0][1]:.0f} MiB, peak {max(m for _, m in samples):.0f} MiB", "-", "-", None),
    ]
    payload = {
        "what": "operator RSS over a loop of policy and dependency changes",
        "params": {"minutes": args.minutes, "warmup_minutes": args.warmup, "policies": n, "rate_per_s": args.rate,
                   "seed": args.seed},
        "changes": {"total": k, **counts},
        "rss_mib": {"baseline_mean": round(mean(first), 2), "end_mean": round(mean(last), 2),
                    "growth_percent": round(growth, 2), "slope_mib_per_hour": round(slope, 2),
                    "start": samples[0][1], "peak": max(m for _, m in samples)},
        "converged_after_loop_s": round(converge_s, 1),
        "reconciles": reconciles,
        "operator_log": log,
        "samples_s_mib": samples,
    }
    write_result(NAME, args.out, payload, rows, load0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
