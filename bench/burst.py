"""1,000 DependencyPolicies applied at once, each gating its own Deployment: how long until all are
in place, what does the operator's memory peak at, and how many API requests does each policy cost?

Both sides run on one private plane, one after the other (a burst saturates both cores: side by
side they would measure each other), on namespaces of their own:

  floor     bench/floor.py (a minimal watch + one server-side apply per policy, no Kopf, no status)
  depgate   `python -m depgate run -n bench-burst-depgate` (Kopf, finalizer, status, events, everything)

For each side: N Deployments (replicas 0) exist and kube-controller-manager has observed them; the
side is started and goes idle; then N policies are created by 8 threads as fast as the API server
takes them. Wall time runs from the first create to the last Deployment carrying depgate-* init
containers (both sides) and, for depgate, to the last policy whose status says Applied=True (the
floor writes no status). Requests per policy are the API server's count of every request the side's
ServiceAccount sent from the start of the burst until it went quiet (see bench/common.py). Peak RSS
is the operator's VmHWM (/proc): the high-water mark of its resident memory since it started.

    .venv/bin/python bench/burst.py [--policies 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    Cluster,
    Identity,
    Raw,
    Row,
    Say,
    Watch,
    cpu_seconds,
    delta,
    operator_log_facts,
    private_plane,
    proc_status,
    settle,
    start_floor,
    start_operator,
    stop_floor,
    stop_operator,
    wait_until,
    write_result,
    writes,
)
from reconcile_latency import GROUP_PATH, deployment, policy

NAME = "burst"
THREADS = 8


def idle(pid: int, say: Say, what: str, timeout: float = 300) -> None:
    """Wait until the process uses under 5% of a core over 2 s (done with its start-up listing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(2.0)
        if cpu_seconds(pid) - c0 < 0.1:
            return
    say(f"{what} still busy after {timeout:.0f}s; going on")


class Side:
    """One side's burst: its namespace, Deployments, the watch that sees them gated."""

    def __init__(self, cl: Cluster, name: str, n: int, say: Say) -> None:
        self.cl, self.name, self.n, self.say = cl, name, n, say
        self.ns = cl.namespace(f"bench-burst-{name}")
        self.names = [f"app-{i:04d}" for i in range(n)]
        self.gated: dict[str, float] = {}
        self.applied: dict[str, float] = {}
        self.lock = threading.Lock()

    def create_deployments(self) -> None:
        self.say(f"{self.name}: creating {self.n} Deployments (replicas 0)")
        path = f"/apis/apps/v1/namespaces/{self.ns}/deployments"
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda d: self.cl.admin.call("POST", path, body=deployment(d, 0)), self.names))

        def observed() -> bool:
            items = self.cl.admin.call("GET", path)["items"]
            return sum(bool((i.get("status") or {}).get("observedGeneration")) for i in items) >= self.n

        self.say(f"{self.name}: waiting for kube-controller-manager to observe them (20 requests/s)")
        wait_until(observed, 900, "kube-controller-manager to observe every Deployment", interval=1.0)

    def watch(self, observer: Raw) -> list[Watch]:
        def on_deployment(t: float, typ: str, obj: dict[str, Any]) -> None:
            inits = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("initContainers") or []
            if typ != "DELETED" and any(str(c.get("name", "")).startswith("depgate-") for c in inits):
                with self.lock:
                    self.gated.setdefault(obj["metadata"]["name"], t)

        def on_policy(t: float, typ: str, obj: dict[str, Any]) -> None:
            conds = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Applied" and c.get("status") == "True" for c in conds):
                with self.lock:
                    self.applied.setdefault(obj["metadata"]["name"], t)

        listing = self.cl.admin.call("GET", f"/apis/apps/v1/namespaces/{self.ns}/deployments")
        return [Watch(observer, f"/apis/apps/v1/namespaces/{self.ns}/deployments", on_deployment,
                      resource_version=listing["metadata"]["resourceVersion"]),
                Watch(observer, f"{GROUP_PATH}/namespaces/{self.ns}/dependencypolicies", on_policy)]

    def burst(self, who: Identity, want_applied: bool, pid: int) -> dict[str, Any]:
        path = f"{GROUP_PATH}/namespaces/{self.ns}/dependencypolicies"
        before = who.counts()
        cpu0 = cpu_seconds(pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda d: self.cl.admin.call("POST", path, body=policy(f"p-{d}", d)), self.names))
        t_created = time.monotonic()
        self.say(f"{self.name}: {self.n} policies created in {t_created - t0:.1f}s")

        def done() -> bool:
            with self.lock:
                g, a = len(self.gated), len(self.applied)
            return g >= self.n and (a >= self.n or not want_applied)

        last = 0.0
        while not done():
            if time.monotonic() - t0 > 1800:
                raise TimeoutError(f"{self.name}: not every policy in place after 1800 s")
            if time.monotonic() - last >= 5:
                last = time.monotonic()
                with self.lock:
                    self.say(f"{self.name}: {time.monotonic() - t0:5.1f}s: gated {len(self.gated)}/{self.n}"
                             + (f", Applied {len(self.applied)}/{self.n}" if want_applied else ""))
            time.sleep(0.1)
        with self.lock:
            t_gated = max(self.gated.values())
            t_applied = max(self.applied.values()) if want_applied else None
        self.say(f"{self.name}: all in place {max(t_gated, t_applied or 0) - t0:.1f}s after the first create; "
                 "waiting for it to go quiet")
        quiet = settle(who.counts, 3, 300, self.say, "quiet")
        api = delta(who.counts(), before)
        return {
            "policies": self.n,
            "create_all_s": round(t_created - t0, 2),
            "wall_to_all_gated_s": round(t_gated - t0, 2),
            "wall_to_all_applied_s": round(t_applied - t0, 2) if t_applied is not None else None,
            "settle_s": round(quiet, 1),
            "cpu_seconds": round(cpu_seconds(pid) - cpu0, 2),
            "api_requests": api,
            "per_policy": {"requests": round(sum(api.values()) / self.n, 2),
                           "writes": round(writes(api) / self.n, 2),
                           "reads": round(api["reads"] / self.n, 2),
                           **{k: round(v / self.n, 3) for k, v in api.items() if v}},
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=int, default=1000, help="policies (and Deployments) per side (default 1000)")
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default bench/results/{NAME}.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (operator log) afterwards")
    args = ap.parse_args(argv)
    say = Say(NAME)
    load0 = os.getloadavg()
    n = args.policies
    out: dict[str, Any] = {}

    with private_plane(say, keep=args.keep) as cl:
        observer = Raw(cl.kubeconfig)
        # --- the floor
        side = Side(cl, "floor", n, say)
        who = cl.identity("floor")
        side.create_deployments()
        watches = side.watch(observer)
        floor, floor_log = start_floor(who.kubeconfig, side.ns, cl.tmp)
        try:
            idle(floor.pid, say, "the floor")
            out["floor"] = side.burst(who, False, floor.pid)
            out["floor"]["peak_rss_mib"] = round(proc_status(floor.pid)["VmHWM"] / 1024, 1)
        finally:
            stop_floor(floor, floor_log)
            for w in watches:
                w.close()

        # --- depgate
        side = Side(cl, "depgate", n, say)
        who = cl.operator_identity()
        side.create_deployments()
        watches = side.watch(observer)
        say("depgate: starting the operator")
        op = start_operator(who.kubeconfig, cl.tmp, "-n", side.ns)
        try:
            pid = op.proc.pid
            idle(pid, say, "the operator")
            rss_idle = proc_status(pid)
            out["depgate"] = side.burst(who, True, pid)
            mem = proc_status(pid)
            out["depgate"].update({
                "rss_idle_before_mib": round(rss_idle["VmRSS"] / 1024, 1),
                "rss_after_mib": round(mem["VmRSS"] / 1024, 1),
                "peak_rss_mib": round(mem["VmHWM"] / 1024, 1),
                "reconciles": op.counter("depgate_reconciles_total"),
                "depgate_api_writes_total": op.counter("depgate_api_writes_total"),
                "operator_log": operator_log_facts(op),
            })
        finally:
            stop_operator(op)
            for w in watches:
                w.close()
        observer.close()

    d, f = out["depgate"], out["floor"]
    rows = [
        Row(NAME, f"{n} policies created at once ({THREADS} threads), each gating its own Deployment: first create "
            "-> every Deployment carries its init containers (sides one after the other, same plane)",
            f"{d['wall_to_all_gated_s']:.1f} s", f"{f['wall_to_all_gated_s']:.1f} s (floor)",
            f"{d['wall_to_all_gated_s'] / f['wall_to_all_gated_s']:.2f}x", "-", None),
        Row(NAME, "the same, until every policy's status says Applied=True (the floor writes no status)",
            f"{d['wall_to_all_applied_s']:.1f} s", f"{f['wall_to_all_gated_s']:.1f} s (floor, gated)",
            f"{d['wall_to_all_applied_s'] / f['wall_to_all_gated_s']:.2f}x", "-", None),
        Row(NAME, "peak RSS of the process through the burst (VmHWM)", f"{d['peak_rss_mib']:.0f} MiB",
            f"{f['peak_rss_mib']:.0f} MiB (floor)", f"{d['peak_rss_mib'] / f['peak_rss_mib']:.1f}x", "-", None),
        Row(NAME, "API requests per policy (API server's count: writes + reads; depgate's writes by resource: "
            + ", ".join(f"{k} {v:g}" for k, v in d["per_policy"].items()
                        if k not in ("requests", "writes", "reads")) + ")",
            f"{d['per_policy']['requests']:g} ({d['per_policy']['writes']:g} + {d['per_policy']['reads']:g})",
            f"{f['per_policy']['requests']:g} ({f['per_policy']['writes']:g} + {f['per_policy']['reads']:g}) (floor)",
            f"{d['per_policy']['requests'] / max(f['per_policy']['requests'], 1e-9):.1f}x", "-", None),
        Row(NAME, "CPU seconds the process used from the first create until it went quiet",
            f"{d['cpu_seconds']:.1f} s", f"{f['cpu_seconds']:.1f} s (floor)",
            f"{d['cpu_seconds'] / max(f['cpu_seconds'], 1e-9):.1f}x", "-", None),
    ]
    payload = {"what": "a burst of policies created at once", "params": {"policies": n, "threads": THREADS},
               **out}
    write_result(NAME, args.out, payload, rows, load0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
