"""Cost that grows with the policies, not with the cluster: what do writes nobody's policy names
cost the operator?

The operator runs as it is installed: watching every namespace. In namespace A (bench-noise) P
policies (default 20), each gating its own Deployment (replicas 0) on the key `ready` of its own
ConfigMap (one `configMap` precondition), converge: Applied, Satisfied. Then, in namespace B
(bench-noise-other), which no policy names, "noise": a Deployment there is scaled from 0 to --pods
replicas (kwok runs the pods) while --threads threads create --configmaps ConfigMaps of --kib KiB,
update each of them twice, and create --secrets Secrets. Unrelated writes = 3 x ConfigMaps +
Secrets + pods (default 3,000 x 3 + 1,000 + 300 = 10,300; the issue's larger size is
`--configmaps 6000 --secrets 2000`).

Side by side on one private plane:

  baseline  the same noise with the operator not running: how long it takes, and the API server's
            and etcd's CPU seconds (/proc) meanwhile;
  depgate   the noise with the operator running (after a clean-up of the baseline's objects).

Measured:
  - the operator's CPU seconds (utime + stime, /proc/PID/stat, read before the noise and once it
    went quiet after it), per unrelated write; the ConfigMap flips measured meanwhile cost CPU too,
    so their cost per flip (measured idle) is taken off ("flip-adjusted"), and both are recorded;
  - its RSS (VmRSS) idle before the noise, the most it reached under the noise (sampled every 0.5 s)
    and after it went quiet;
  - status latency (as bench/status_latency.py measures it): a policy's ConfigMap key flipped ->
    a watch on the policies sees that precondition's new state; --flips flips idle, then up to
    --flips while the noise runs (only those that start before its end count);
  - the API requests the operator sent during the noise (the API server's count, bench/common.py);
  - a restart among the unrelated objects: stop the operator, start it again with them still there,
    time until every policy is reconciled again (each appears in depgate_preconditions of the new
    process), CPU seconds in its first --window s and RSS at --window s; then the unrelated objects
    are deleted and the same restart is measured on the emptied cluster.

    .venv/bin/python bench/noise.py [--policies 20] [--configmaps 3000] [--secrets 1000] [--pods 300]
                                    [--flips 100] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    Cluster,
    Raw,
    Row,
    Say,
    Watch,
    cpu_seconds,
    delta,
    fmt_ms,
    operator_log_facts,
    precise_threads,
    private_plane,
    proc_status,
    start_operator,
    stop_operator,
    summary_ms,
    wait_until,
    write_result,
    writes,
)

NAME = "noise"
NS_A = "bench-noise"  # the policies'
NS_B = "bench-noise-other"  # the noise's: no policy names it
NOISE_LABEL = "bench-noise"
GROUP_PATH = "/apis/depgate.io/v1alpha1"
# --quick: the smoke sizes (flags given explicitly win)
QUICK = {"configmaps": 300, "secrets": 100, "pods": 50, "flips": 30}
FULL = {"configmaps": 3000, "secrets": 1000, "pods": 300, "flips": 100}


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "server", "image": "node:20"}]}}}}


def rss_mib(pid: int) -> float:
    return round(proc_status(pid)["VmRSS"] / 1024, 1)


def quiet(pid: int, timeout: float = 300) -> float:
    """Wait until the process uses under 5% of a core over 2 s; the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c0 = cpu_seconds(pid)
        time.sleep(2.0)
        if cpu_seconds(pid) - c0 < 0.1:
            break
    return time.monotonic() - t0


def plane_pids(cl: Cluster) -> dict[str, int]:
    return {p.name: p.pid for p in cl.state.procs if p.name in ("kube-apiserver", "etcd")}


class RssSampler:
    """VmRSS of a process every 0.5 s while it runs (from /proc, costing it nothing)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.samples.append(rss_mib(self.pid))

    def close(self) -> list[float]:
        self.stop.set()
        self.thread.join(2)
        return self.samples


class Noise:
    """The unrelated writes in namespace B, from a few threads of a client of their own."""

    def __init__(self, cl: Cluster, args: argparse.Namespace, say: Say) -> None:
        self.cl, self.args, self.say = cl, args, say
        self.raw = Raw(cl.kubeconfig)
        self.blob = "x" * (args.kib * 1024)
        self.cms = [f"noise-cm-{i:05d}" for i in range(args.configmaps)]
        self.secrets = [f"noise-secret-{i:05d}" for i in range(args.secrets)]

    @property
    def writes(self) -> int:
        return 3 * len(self.cms) + len(self.secrets) + int(self.args.pods)

    def _pool(self, fn: Callable[[str], Any], names: list[str]) -> None:
        with ThreadPoolExecutor(self.args.threads) as pool:
            list(pool.map(fn, names))

    def pods_ready(self) -> int:
        d: dict[str, Any] = self.raw.call("GET", f"/apis/apps/v1/namespaces/{NS_B}/deployments/noise") or {}
        return int((d.get("status") or {}).get("readyReplicas") or 0)

    def run(self) -> dict[str, Any]:
        """Scale the Deployment, write the ConfigMaps and Secrets; return once all is written and
        every pod is ready. The times (s from the start) of each phase's end."""
        cm_path, sec_path = f"/api/v1/namespaces/{NS_B}/configmaps", f"/api/v1/namespaces/{NS_B}/secrets"
        labels = {NOISE_LABEL: "1"}
        t0 = time.monotonic()
        self.raw.call("PATCH", f"/apis/apps/v1/namespaces/{NS_B}/deployments/noise",
                      body={"spec": {"replicas": self.args.pods}}, content_type="application/merge-patch+json")
        out: dict[str, Any] = {}

        def create_cm(n: str) -> None:
            self.raw.call("POST", cm_path, body={"apiVersion": "v1", "kind": "ConfigMap",
                                                 "metadata": {"name": n, "labels": labels},
                                                 "data": {"blob": self.blob, "rev": "0"}})

        def update_cm(rev: str) -> Callable[[str], None]:
            def update(n: str) -> None:
                self.raw.call("PATCH", f"{cm_path}/{n}", body={"data": {"blob": self.blob[::-1] if rev == "1"
                                                                         else self.blob, "rev": rev}},
                              content_type="application/merge-patch+json")
            return update

        def create_secret(n: str) -> None:
            self.raw.call("POST", sec_path, body={"apiVersion": "v1", "kind": "Secret",
                                                  "metadata": {"name": n, "labels": labels},
                                                  "stringData": {"token": self.blob}})

        self._pool(create_cm, self.cms)
        out["configmaps_created_s"] = time.monotonic() - t0
        self._pool(update_cm("1"), self.cms)
        self._pool(update_cm("2"), self.cms)
        out["configmaps_updated_s"] = time.monotonic() - t0
        self._pool(create_secret, self.secrets)
        out["writes_done_s"] = time.monotonic() - t0
        wait_until(lambda: self.pods_ready() >= self.args.pods, 600, f"{self.args.pods} noise pods ready",
                   interval=0.5)
        out["pods_ready_s"] = time.monotonic() - t0
        out["noise_s"] = max(out["writes_done_s"], out["pods_ready_s"])
        return {k: round(v, 2) for k, v in out.items()}

    def clean(self) -> None:
        """Delete the unrelated objects (the Deployment scaled back to 0) and wait until they are gone."""
        sel = [("labelSelector", f"{NOISE_LABEL}=1")]
        for kind in ("configmaps", "secrets"):
            self.raw.call("DELETE", f"/api/v1/namespaces/{NS_B}/{kind}", query=sel)
        self.raw.call("PATCH", f"/apis/apps/v1/namespaces/{NS_B}/deployments/noise", body={"spec": {"replicas": 0}},
                      content_type="application/merge-patch+json")

        def gone() -> bool:
            return all(not (self.raw.call("GET", f"/api/v1/namespaces/{NS_B}/{kind}", query=[*sel, ("limit", "1")])
                            or {}).get("items") for kind in ("configmaps", "secrets")) and \
                not self.raw.call("GET", f"/api/v1/namespaces/{NS_B}/pods", query=[("limit", "1")])["items"]

        wait_until(gone, 600, "the unrelated objects deleted", interval=1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=int, default=20, help="policies (each with its Deployment and ConfigMap)")
    ap.add_argument("--configmaps", type=int, default=None, help="noise ConfigMaps, each created and updated twice "
                    f"(default {FULL['configmaps']}, --quick {QUICK['configmaps']})")
    ap.add_argument("--secrets", type=int, default=None,
                    help=f"noise Secrets created (default {FULL['secrets']}, --quick {QUICK['secrets']})")
    ap.add_argument("--pods", type=int, default=None, help="replicas the noise Deployment is scaled to "
                    f"(default {FULL['pods']}, --quick {QUICK['pods']})")
    ap.add_argument("--kib", type=int, default=1, help="KiB of data in each noise ConfigMap and Secret (default 1)")
    ap.add_argument("--threads", type=int, default=4, help="threads sending the noise (default 4)")
    ap.add_argument("--flips", type=int, default=None, help="ConfigMap flips measured idle, and at most as many "
                    f"under the noise (default {FULL['flips']}, --quick {QUICK['flips']})")
    ap.add_argument("--gap", type=float, default=0.3, help="the longest random pause between flips (s)")
    ap.add_argument("--per-flip-timeout", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=15.0,
                    help="a restart's CPU is counted over its first WINDOW s, its RSS read then (default 15)")
    ap.add_argument("--timeout", type=float, default=300, help="the longest wait for any phase (s)")
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run: " + ", ".join(
        f"--{k} {v}" for k, v in QUICK.items()))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default bench/results/{NAME}.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (operator logs) afterwards")
    args = ap.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    precise_threads()
    say = Say(NAME)
    load0 = os.getloadavg()
    rng = random.Random(args.seed)
    n = args.policies
    pols = f"{GROUP_PATH}/namespaces/{NS_A}/dependencypolicies"
    out: dict[str, Any] = {}

    with private_plane(say, keep=args.keep) as cl:
        pids = plane_pids(cl)
        who = cl.operator_identity()
        cl.namespace("depgate-system")  # the operator's: its webhook Secret and Lease
        cl.namespace(NS_A)
        cl.namespace(NS_B)
        names = [f"p-{i:02d}" for i in range(n)]
        has = dict.fromkeys(names, True)
        for i in range(n):
            cl.admin.call("POST", f"/api/v1/namespaces/{NS_A}/configmaps", body={
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"dep-{i:02d}"},
                "data": {"ready": "yes"}})
            cl.admin.call("POST", f"/apis/apps/v1/namespaces/{NS_A}/deployments", body=deployment(f"app-{i:02d}", 0))
        cl.admin.call("POST", f"/apis/apps/v1/namespaces/{NS_B}/deployments", body=deployment("noise", 0))
        noise = Noise(cl, args, say)

        # --- the baseline: the noise with no operator running
        say(f"baseline: {noise.writes} unrelated writes in {NS_B}, no operator running")
        plane0 = {k: cpu_seconds(p) for k, p in pids.items()}
        base = noise.run()
        base["plane_cpu_seconds"] = {k: round(cpu_seconds(p) - plane0[k], 2) for k, p in pids.items()}
        say(f"baseline: noise took {base['noise_s']:.1f}s (writes {base['writes_done_s']:.1f}s, pods ready "
            f"{base['pods_ready_s']:.1f}s); API server CPU {base['plane_cpu_seconds'].get('kube-apiserver')} s")
        out["baseline"] = base
        say("baseline: deleting the unrelated objects")
        noise.clean()

        # The watch on the policies: every event's precondition states, with the time it arrived.
        seen: dict[str, list[tuple[float, dict[str, str]]]] = {p: [] for p in names}
        cond = threading.Condition()

        def on_policy(t: float, typ: str, obj: dict[str, Any]) -> None:
            states = {str(e.get("name")): str(e.get("state"))
                      for e in (obj.get("status") or {}).get("preconditions") or []}
            applied = any(c.get("type") == "Applied" and c.get("status") == "True"
                          for c in (obj.get("status") or {}).get("conditions") or [])
            if applied:
                states["__applied"] = "True"
            with cond:
                seen.setdefault(obj["metadata"]["name"], []).append((t, states))
                cond.notify_all()

        observer = Raw(cl.kubeconfig)
        watch = Watch(observer, pols, on_policy)

        def converged() -> bool:
            with cond:
                return all(seen[p] and seen[p][-1][1].get("cm") == "Satisfied" and "__applied" in seen[p][-1][1]
                           for p in names)

        def flip(p: str) -> float | None:
            """Flip the key of one policy's ConfigMap; seconds until the policy's status shows it."""
            want = not has[p]
            with cond:
                start = len(seen[p])
            returned, _ = cl.admin.timed_call("PATCH", f"/api/v1/namespaces/{NS_A}/configmaps/dep-{p[2:]}",
                                              body={"data": {"ready": "yes" if want else None}},
                                              content_type="application/merge-patch+json")
            has[p] = want

            def find() -> float | None:
                for t, states in seen[p][start:]:
                    if "cm" in states and (states["cm"] == "Satisfied") == want:
                        return t
                return None

            with cond:
                t = cond.wait_for(find, args.per_flip_timeout)
            return None if t is None else t - returned

        def flips(count: int, until: threading.Event | None = None) -> tuple[list[float], int]:
            lat: list[float] = []
            missed = 0
            for _ in range(count):
                if until is not None and until.is_set():
                    break
                got = flip(rng.choice(names))
                if got is None:
                    missed += 1
                else:
                    lat.append(got)
                time.sleep(rng.uniform(0, args.gap))
            return lat, missed

        def restart(op: Any, what: str) -> tuple[Any, dict[str, Any]]:
            """Stop the operator, start it again; until every policy is reconciled in the new process,
            its CPU over the first --window s and RSS then."""
            stop_operator(op)
            t_start = time.monotonic()
            op2 = start_operator(who.kubeconfig, cl.tmp)
            try:
                return op2, measure(op2, t_start, what)
            except BaseException:
                stop_operator(op2)
                raise

        def measure(op2: Any, t_start: float, what: str) -> dict[str, Any]:
            pid = op2.proc.pid
            up_s = time.monotonic() - t_start
            caught_up: float | None = None
            cpu_w = rss_w = None
            while caught_up is None or cpu_w is None:
                now = time.monotonic()
                if caught_up is None:
                    with contextlib.suppress(Exception):
                        done = {k.split('policy="', 1)[1].split('"', 1)[0] for k in op2.metrics()
                                if k.startswith("depgate_preconditions{") and f'namespace="{NS_A}"' in k}
                        if len(done & set(names)) >= n:
                            caught_up = time.monotonic() - t_start
                if cpu_w is None and now - t_start >= args.window:
                    cpu_w, rss_w = cpu_seconds(pid), rss_mib(pid)
                if now - t_start > args.timeout:
                    raise TimeoutError(f"{what}: not every policy reconciled {args.timeout:.0f}s after the start")
                time.sleep(0.05)
            res = {"all_reconciled_s": round(caught_up, 2), "metrics_up_s": round(up_s, 2),
                   "cpu_seconds_first_window": round(cpu_w, 2), "rss_mib_at_window": rss_w,
                   "reconciles": op2.counter("depgate_reconciles_total")}
            say(f"restart {what}: all {n} policies reconciled {caught_up:.1f}s after the start, CPU "
                f"{cpu_w:.1f}s in the first {args.window:g}s, RSS {rss_w} MiB then")
            return res

        # --- depgate: the same noise with the operator running
        say("depgate: starting the operator (all namespaces)")
        op = start_operator(who.kubeconfig, cl.tmp)
        try:
            pid = op.proc.pid
            # Created now, through the operator's admission webhook (it records each policy's author).
            from tests.conftest import Plane, wait_webhook_serves

            wait_webhook_serves(Plane(cl.kubeconfig, cl.kubectl_bin, cl.state.server, True))
            for i, p in enumerate(names):
                cl.admin.call("POST", pols, body={
                    "apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": p},
                    "spec": {"workloadRef": {"name": f"app-{i:02d}"},
                             "preconditions": [{"name": "cm", "configMap": {"name": f"dep-{i:02d}",
                                                                            "keys": ["ready"]}}]}})
            wait_until(converged, args.timeout, f"{n} policies Applied, their ConfigMap Satisfied", interval=0.2)
            quiet(pid)
            idle_rss = rss_mib(pid)
            c0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(5)
            idle_cpu_per_s = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
            say(f"depgate: converged, idle at {idle_rss} MiB, {100 * idle_cpu_per_s:.1f}% CPU; {args.flips} idle flips")
            c0, t0 = cpu_seconds(pid), time.monotonic()
            idle_lat, idle_missed = flips(args.flips)
            quiet(pid)
            flip_cpu = cpu_seconds(pid) - c0 - idle_cpu_per_s * (time.monotonic() - t0)
            cpu_per_flip = max(0.0, flip_cpu) / max(1, args.flips)
            s = summary_ms(idle_lat)
            say(f"depgate: idle flips p50 {fmt_ms(s.get('p50_ms', 0))}, p99 {fmt_ms(s.get('p99_ms', 0))}; "
                f"{1000 * cpu_per_flip:.1f} ms CPU per flip")

            say(f"depgate: {noise.writes} unrelated writes in {NS_B}, flips meanwhile")
            done = threading.Event()
            noisy: dict[str, Any] = {}

            def flipper() -> None:
                noisy["lat"], noisy["missed"] = flips(args.flips, until=done)

            api0 = who.counts()
            reconciles0 = op.counter("depgate_reconciles_total")
            rss = RssSampler(pid)
            plane0 = {k: cpu_seconds(p) for k, p in pids.items()}
            cpu0 = cpu_seconds(pid)
            t0 = time.monotonic()
            th = threading.Thread(target=flipper, name="flipper", daemon=True)
            th.start()
            ours = noise.run()
            done.set()
            cpu_end = cpu_seconds(pid)
            ours["plane_cpu_seconds"] = {k: round(cpu_seconds(p) - plane0[k], 2) for k, p in pids.items()}
            th.join(args.per_flip_timeout + 5)
            quiet_s = quiet(pid)
            cpu_quiet = cpu_seconds(pid)
            t_quiet = time.monotonic()
            rss_samples = rss.close()
            after_rss = rss_mib(pid)
            api = delta(who.counts(), api0)
            noise_lat, noise_missed = noisy.get("lat", []), noisy.get("missed", 0)
            n_flips = len(noise_lat) + noise_missed
            cpu_total = cpu_quiet - cpu0
            cpu_adj = max(0.0, cpu_total - n_flips * cpu_per_flip - idle_cpu_per_s * (t_quiet - t0))
            ours.update({
                "operator_cpu_seconds_during_noise": round(cpu_end - cpu0, 2),
                "operator_cpu_seconds_until_quiet": round(cpu_total, 2),
                "operator_quiet_after_noise_s": round(quiet_s, 1),
                "operator_cpu_seconds_flip_adjusted": round(cpu_adj, 2),
                "flips_under_noise": n_flips,
                "operator_reconciles": op.counter("depgate_reconciles_total") - reconciles0,
                "operator_api_requests": api,
            })
            say(f"depgate: noise took {ours['noise_s']:.1f}s (baseline {base['noise_s']:.1f}s); operator CPU "
                f"{cpu_total:.1f}s ({cpu_adj:.1f}s flip-adjusted), RSS {idle_rss} -> peak "
                f"{max(rss_samples, default=after_rss)} -> {after_rss} MiB")
            out["depgate"] = ours
            log_noise = operator_log_facts(op)

            # --- restarts: among the unrelated objects, then with them deleted; every key back first
            for p in names:
                if not has[p]:
                    flip(p)
            wait_until(converged, args.timeout, "every ConfigMap key back, Satisfied", interval=0.2)
            quiet(pid)
            say("restart with the unrelated objects still there")
            op, r_noisy = restart(op, "among the unrelated objects")
            wait_until(converged, args.timeout, "converged after the restart", interval=0.2)
            quiet(op.proc.pid)
            say("deleting the unrelated objects")
            noise.clean()
            quiet(op.proc.pid)
            op, r_empty = restart(op, "without the unrelated objects")
            log_end = operator_log_facts(op)
        finally:
            stop_operator(op)
            watch.close()
            noise.raw.close()
            observer.close()

    w = noise.writes
    s_idle = summary_ms(idle_lat + [float("inf")] * idle_missed)
    s_noise = summary_ms(noise_lat + [float("inf")] * noise_missed)
    per_write_ms = 1000 * cpu_adj / w
    per_write_raw_ms = 1000 * cpu_total / w
    peak_rss = max(rss_samples, default=after_rss)
    d, b = out["depgate"], out["baseline"]
    api_b, api_d = b["plane_cpu_seconds"].get("kube-apiserver", 0.0), d["plane_cpu_seconds"].get("kube-apiserver", 0.0)
    size = (f"{w} unrelated writes in a namespace no policy names ({args.configmaps} ConfigMaps of {args.kib} KiB x3, "
            f"{args.secrets} Secrets, {args.pods} pods; {n} policies elsewhere)")

    def restart_row(what: str, key: str, fmt: Callable[[float], str]) -> Row:
        a, e = r_noisy[key], r_empty[key]
        r = a / e if e > 0 else float("inf")
        return Row(NAME, what, fmt(a), f"{fmt(e)} (unrelated objects deleted)", f"{r:.2f}x", "<= 1.2x", r <= 1.2)

    rows = [
        Row(NAME, f"operator CPU per unrelated write: {size}; from the noise's start until the operator went "
                  f"quiet, less the flips' cost and idle use (raw in brackets)",
            f"{per_write_ms:.3f} ms ({per_write_raw_ms:.3f} ms; {cpu_adj:.2f} s of {cpu_total:.2f} s)",
            "0 (operator not running)", "-", "<= 0.05 ms", per_write_ms <= 0.05),
        Row(NAME, "the same noise's wall time (writes sent, every pod ready) and API server CPU seconds, with the "
                  "operator running vs not",
            f"{d['noise_s']:.1f} s; API server {api_d:.1f} s", f"{b['noise_s']:.1f} s; API server {api_b:.1f} s "
                                                             "(operator not running)",
            f"{d['noise_s'] / b['noise_s']:.2f}x; {api_d / max(api_b, 1e-9):.2f}x", "-", None),
        Row(NAME, "operator RSS under the noise (peak of 0.5 s samples) and after it went quiet, vs idle before",
            f"{peak_rss:.0f} MiB; {after_rss:.0f} MiB", f"{idle_rss:.0f} MiB (idle)",
            f"+{peak_rss - idle_rss:.0f} MiB; +{after_rss - idle_rss:.0f} MiB", "within 5 MiB of idle",
            max(peak_rss, after_rss) - idle_rss <= 5),
        Row(NAME, f"ConfigMap key flipped -> policy status shows it, under the noise ({len(noise_lat)} flips) vs "
                  f"idle ({len(idle_lat)} flips), p50",
            f"p50 {fmt_ms(s_noise.get('p50_ms', 0))}", f"p50 {fmt_ms(s_idle.get('p50_ms', 0))} (idle)",
            f"{s_noise.get('p50_ms', 0) / max(s_idle.get('p50_ms', 0), 1e-9):.2f}x", "-", None),
        Row(NAME, "the same, p99 (max in brackets)",
            f"p99 {fmt_ms(s_noise.get('p99_ms', 0))} (max {fmt_ms(s_noise.get('max_ms', 0))})",
            f"p99 {fmt_ms(s_idle.get('p99_ms', 0))} (max {fmt_ms(s_idle.get('max_ms', 0))}) (idle)",
            f"{s_noise.get('p99_ms', 0) / max(s_idle.get('p99_ms', 0), 1e-9):.2f}x", "p99 < 200 ms under noise",
            s_noise.get("p99_ms", float("inf")) < 200),
        Row(NAME, "API requests the operator sent during the noise and until quiet (API server's count; the "
                  "flips' in it)",
            f"{sum(api.values()):g} ({writes(api):g} writes, {api['reads']:g} reads)", "-", "-", "-", None),
        restart_row(f"restart among the unrelated objects: start -> all {n} policies reconciled in the new process",
                    "all_reconciled_s", lambda v: f"{v:.1f} s"),
        restart_row(f"the same restart: CPU seconds in its first {args.window:g} s", "cpu_seconds_first_window",
                    lambda v: f"{v:.1f} s"),
        restart_row(f"the same restart: RSS at {args.window:g} s", "rss_mib_at_window", lambda v: f"{v:.0f} MiB"),
    ]
    payload = {
        "what": "the cost to the operator of writes in a namespace no policy names",
        "params": {"policies": n, "configmaps": args.configmaps, "secrets": args.secrets, "pods": args.pods,
                   "kib": args.kib, "threads": args.threads, "flips": args.flips, "gap_s": args.gap,
                   "window_s": args.window, "quick": args.quick, "unrelated_writes": w},
        **out,
        "operator": {"rss_idle_mib": idle_rss, "rss_peak_under_noise_mib": peak_rss, "rss_after_noise_mib": after_rss,
                     "idle_cpu_percent": round(100 * idle_cpu_per_s, 2),
                     "cpu_ms_per_flip_idle": round(1000 * cpu_per_flip, 2),
                     "cpu_ms_per_unrelated_write": round(per_write_ms, 4),
                     "cpu_ms_per_unrelated_write_raw": round(per_write_raw_ms, 4),
                     "rss_samples_mib": rss_samples},
        "status_latency": {"idle": s_idle, "under_noise": s_noise, "idle_missed": idle_missed,
                           "under_noise_missed": noise_missed,
                           "idle_samples_ms": [round(v * 1000, 1) for v in idle_lat],
                           "under_noise_samples_ms": [round(v * 1000, 1) for v in noise_lat]},
        "restart": {"among_unrelated": r_noisy, "unrelated_deleted": r_empty},
        "watch_errors": watch.errors,
        "operator_log": {"through_noise": log_noise, "last_restart": log_end},
    }
    write_result(NAME, args.out, payload, rows, load0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
