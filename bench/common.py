"""What every control-plane benchmark shares: a private plane, identities whose requests the API
server counts, the operator process, raw API calls and watches, percentiles, and the result files.

The plane is the one the tests use (`depgate.dev.plane.up` in a temporary state dir, its processes
dying with this one). The operator is started exactly as the integration tests start it
(`tests.conftest.start_operator`: `python -m depgate run` with a metrics port).

Counting writes twice. `depgate_api_writes_total` is what depgate says it sent; it does not see
what Kopf sends on its own (finalizers, annotations) nor Events. So each process under test runs
as its own ServiceAccount, and FlowSchemas (API Priority and Fairness, priority level `exempt`:
no queuing) sort its requests into status writes, other writes by resource, and reads; the API
server's `apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}` then counts every
request that process sent, by the server's own account.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.conftest (the operator launcher the tests use)

from kubernetes import config  # noqa: E402

from depgate.dev import build  # noqa: E402
from depgate.dev import plane as devplane  # noqa: E402
from depgate.dev.versions import KUBERNETES_VERSION  # noqa: E402

RESULTS = HERE / "results"
BENCH_NS = "depgate-bench-system"  # where the benchmark's ServiceAccounts live
OPERATOR_NS = "depgate-system"  # the operator's (its ServiceAccount, its webhook Secret, its Lease)
_W = ["create", "update", "patch", "delete", "deletecollection"]
# How the API server sorts one identity's requests (category, verbs, [(apiGroups, resources)]), first match wins.
LEASE = "lease"
CATEGORIES: list[tuple[str, list[str], list[tuple[list[str], list[str]]]]] = [
    # The leader election's Lease (a read and a write every 2 s whatever the load): counted apart, and in no
    # figure (Identity.counts leaves it out), or no side would ever go quiet and every count would grow with
    # the wait for quiet.
    (LEASE, ["get", "list", "watch", "create", "update", "patch", "delete"], [(["coordination.k8s.io"], ["leases"])]),
    ("status", ["patch", "update"], [(["depgate.io"], ["dependencypolicies/status"])]),
    ("policy", _W, [(["depgate.io"], ["dependencypolicies"])]),  # Kopf: finalizer, annotations
    ("deployment", _W, [(["apps"], ["deployments"])]),
    ("event", _W, [([""], ["events"]), (["events.k8s.io"], ["events"])]),
    ("rbac", _W, [(["rbac.authorization.k8s.io"], ["roles", "rolebindings"])]),
    ("other", _W, [(["*"], ["*"])]),
    ("reads", ["get", "list", "watch"], [(["*"], ["*"])]),
]


# ---------------------------------------------------------------------------------------------------
# progress lines


def precise_threads() -> None:
    """Hand the GIL between the bench's threads every 0.5 ms (default 5 ms): a watch thread busy
    parsing must not delay the thread that stamps a request's return (2 shared cores)."""
    sys.setswitchinterval(0.0005)


class Say:
    def __init__(self, name: str) -> None:
        self.name = name
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        print(f"[{self.name} {time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# raw API access through the official client (plain dicts in and out, as depgate's adapter does)


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: {status} {body[:500]}")
        self.status = status


class Raw:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(config_file=kubeconfig)

    def request(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                content_type: str = "application/json", timeout: Any = 30) -> Any:
        m, url, headers, _, _ = self.api.param_serialize(
            method, path, query_params=list(query),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(m, url, headers, body, _request_timeout=timeout)

    def call(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
             content_type: str = "application/json") -> Any:
        """The JSON answer; None on 404; ApiError on any other error."""
        resp = self.request(method, path, query=query, body=body, content_type=content_type)
        raw = resp.read()
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise ApiError(resp.status, method, path, raw.decode(errors="replace"))
        return json.loads(raw) if raw else None

    def timed_call(self, method: str, path: str, *, body: Any = None,
                   content_type: str = "application/json") -> tuple[float, Any]:
        """(when the answer's status line arrived, the JSON answer): the moment the write is done,
        taken before the body is read and parsed, so this thread's later work does not move it."""
        resp = self.request(method, path, body=body, content_type=content_type)
        returned = time.monotonic()
        raw = resp.read()
        if resp.status >= 400:
            raise ApiError(resp.status, method, path, raw.decode(errors="replace"))
        return returned, json.loads(raw) if raw else None

    def text(self, path: str) -> str:
        resp = self.request("GET", path)
        return str(resp.read().decode())

    def close(self) -> None:
        self.api.close()


def lines(resp: Any) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.response.stream(4096, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line


class Watch:
    """One watch (list-less: from `resourceVersion`, or the current state as ADDED events) in a
    thread; `on_event(received_at, type, obj)` runs for every event, in order. Reconnects resume
    from the last resourceVersion."""

    def __init__(self, raw: Raw, path: str, on_event: Callable[[float, str, dict[str, Any]], None], *,
                 query: Iterable[tuple[str, str]] = (), resource_version: str | None = None) -> None:
        self.raw, self.path, self.on_event = raw, path, on_event
        self.query = list(query)
        self.rv = resource_version
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.errors = 0
        self.thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError(f"the watch of {path} did not start")

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                q = [*self.query, ("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", "600")]
                if self.rv:
                    q.append(("resourceVersion", self.rv))
                resp = self.raw.request("GET", self.path, query=q, timeout=(10, 700))
                if resp.status >= 400:
                    resp.read()
                    self.errors += 1
                    self.rv = None
                    self.stop.wait(0.5)
                    continue
                self.ready.set()
                for line in lines(resp):
                    now = time.monotonic()
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        self.rv = None
                        break
                    self.rv = (obj.get("metadata") or {}).get("resourceVersion", self.rv)
                    if ev.get("type") != "BOOKMARK":
                        self.on_event(now, str(ev.get("type")), obj)
                    if self.stop.is_set():
                        break
            except Exception:  # keep watching through hiccups; a benchmark notes how many
                self.errors += 1
                self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()


# ---------------------------------------------------------------------------------------------------
# the plane


@dataclass
class Cluster:
    state: Any  # devplane.PlaneState
    kubectl_bin: str
    tmp: Path
    admin: Raw
    _identities: list[Identity] = field(default_factory=list)

    @property
    def kubeconfig(self) -> str:
        return str(self.state.kubeconfig)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args], input=input,
                              capture_output=True, text=True, check=False, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def apply(self, manifest: Mapping[str, Any] | list[Mapping[str, Any]]) -> None:
        docs = manifest if isinstance(manifest, list) else [manifest]
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))

    def namespace(self, name: str) -> str:
        """Create the namespace (there already: fine)."""
        try:
            self.admin.call("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                                "metadata": {"name": name}})
        except ApiError as e:
            if e.status != 409:
                raise
        return name

    def operator_identity(self) -> Identity:
        """The operator's identity as an install has it (ServiceAccount depgate in depgate-system): the
        webhook configurations leave that user's own writes out (their matchConditions), as in a cluster;
        under any other name every Deployment the operator applies would be reviewed by itself."""
        return self.identity("depgate", namespace=OPERATOR_NS)

    def identity(self, name: str, namespace: str = BENCH_NS) -> Identity:
        """A ServiceAccount (cluster-admin: the benchmarks measure speed, not RBAC) with a kubeconfig,
        and FlowSchemas that make the API server count its requests."""
        if self.admin.call("GET", f"/api/v1/namespaces/{namespace}") is None:
            self.namespace(namespace)
        sa = {"kind": "ServiceAccount", "namespace": namespace, "name": name}
        subject = [{"kind": "ServiceAccount", "serviceAccount": {"name": name, "namespace": namespace}}]
        base = 300 + 10 * len(self._identities)
        docs: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": f"bench-{name}"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [sa]},
        ]
        # The first FlowSchema (lowest precedence) that matches a request counts it.
        for i, (category, verbs, groups_resources) in enumerate(CATEGORIES):
            rules: list[dict[str, Any]] = [
                {"verbs": verbs, "apiGroups": groups, "resources": resources, "namespaces": ["*"],
                 "clusterScope": True} for groups, resources in groups_resources]
            rule: dict[str, Any] = {"subjects": subject, "resourceRules": rules}
            if category == "reads":
                rule["nonResourceRules"] = [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
            docs.append({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                         "metadata": {"name": f"bench-{name}-{category}"},
                         "spec": {"matchingPrecedence": base + i, "priorityLevelConfiguration": {"name": "exempt"},
                                  "rules": [rule]}})
        self.apply(docs)
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=24h").stdout.strip()
        kc = self.tmp / f"kubeconfig-{name}"
        ca = Path(self.state.state_dir) / "pki" / "ca.crt"
        kc.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": "plane", "cluster": {"server": self.state.server, "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "plane", "user": name}}],
        }))
        kc.chmod(0o600)
        ident = Identity(name, str(kc), self)
        self._identities.append(ident)
        # The API server picks FlowSchemas up from a watch: wait until this identity's reads count.
        probe = Raw(str(kc))
        deadline = time.monotonic() + 30
        while ident.counts()["reads"] == 0:
            probe.call("GET", f"/api/v1/namespaces/{namespace}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server does not count {name}'s requests under its FlowSchemas")
            time.sleep(0.2)
        probe.close()
        return ident

    def flow_counts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.admin.text("/metrics").splitlines():
            if line.startswith("apiserver_flowcontrol_dispatched_requests_total{"):
                labels, _, value = line.rpartition(" ")
                fs = labels.split('flow_schema="', 1)[1].split('"', 1)[0]
                out[fs] = out.get(fs, 0.0) + float(value)
        return out


@dataclass
class Identity:
    name: str
    kubeconfig: str
    cluster: Cluster

    def counts(self) -> dict[str, float]:
        """Requests this identity sent so far, by the API server's count, per CATEGORIES."""
        fc = self.cluster.flow_counts()
        return {c: fc.get(f"bench-{self.name}-{c}", 0.0) for c, _, _ in CATEGORIES if c != LEASE}


def writes(counts: Mapping[str, float]) -> float:
    """Every write request in a counts() dict (or a delta of two)."""
    return sum(v for k, v in counts.items() if k != "reads")


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def kubectl_path() -> str:
    p = build.bin_dir() / "kubectl"
    return str(p) if p.exists() else shutil.which("kubectl") or "kubectl"


@contextlib.contextmanager
def private_plane(say: Say, keep: bool = False) -> Iterator[Cluster]:
    """A plane of our own in a temporary state dir (processes die with this one), CRDs installed."""
    tmp = Path(tempfile.mkdtemp(prefix="depgate-bench-"))
    state_dir = tmp / "plane"
    say(f"starting a private control plane in {state_dir}")
    state = devplane.up(state_dir, die_with_parent=True)
    admin = Raw(state.kubeconfig)
    cluster = Cluster(state, kubectl_path(), tmp, admin)
    ok = False
    try:
        for f in sorted((REPO / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
            name = cluster.kubectl("get", "-f", str(f), "-o", "name").stdout.strip()
            devplane.wait_crd_served(cluster.kubectl_bin, state.kubeconfig, name)
        cluster.namespace(OPERATOR_NS)  # the operator's own: its webhook Secret, its Lease
        say("plane up, CRDs established")
        yield cluster
        ok = True
    finally:
        admin.close()
        devplane.down(state_dir, quiet=True)
        if ok and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"kept {tmp} (operator logs)")


# ---------------------------------------------------------------------------------------------------
# the operator, launched as the integration tests launch it


def start_operator(kubeconfig: str, tmp: Path, *extra: str) -> Any:
    from tests.conftest import start_operator as start

    return start(kubeconfig, tmp, *extra)


def stop_operator(op: Any) -> None:
    from tests.conftest import stop_operator as stop

    stop(op)


def operator_log_facts(op: Any, since: int = 0) -> dict[str, Any]:
    """Counts of worrying lines in the operator's log (from character `since`), and the first errors."""
    text = op.log_text()[since:]
    errors = [ln for ln in text.splitlines() if " ERROR " in ln or ln.startswith("Traceback")]
    warnings = [ln for ln in text.splitlines() if " WARNING " in ln]
    return {"tracebacks": text.count("Traceback"), "warnings": len(warnings), "errors": len(errors),
            "first_errors": errors[:3], "first_warning": warnings[:1], "log_chars": len(op.log_text())}


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (costing it nothing)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (resident now / its high-water mark) of a process, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def start_floor(kubeconfig: str, namespace: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Any]:
    """bench/floor.py on one namespace, once it has listed (it prints "ready"); (process, its log file)."""
    log = (tmp / "floor.log").open("wb")
    floor = subprocess.Popen(
        [sys.executable, str(HERE / "floor.py"), f"--kubeconfig={kubeconfig}", f"--namespace={namespace}"],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    assert floor.stdout is not None
    if floor.stdout.readline().strip() != b"ready":
        stop_floor(floor, log)
        raise SystemExit(f"the floor did not start; see {tmp / 'floor.log'}")
    return floor, log


def stop_floor(floor: subprocess.Popen[bytes], log: Any) -> None:
    floor.send_signal(signal.SIGINT)
    try:
        floor.wait(10)
    except subprocess.TimeoutExpired:
        floor.kill()
    log.close()


class Sampler:
    """The operator process seen from outside while a benchmark runs: CPU (from /proc, costing the
    operator nothing) every `cpu_every` s, and its reconcile counters (one scrape) every second."""

    def __init__(self, op: Any, cpu_every: float = 0.25) -> None:
        self.op, self.cpu_every = op, cpu_every
        self.cpu: list[tuple[float, float]] = []  # (monotonic, CPU seconds used so far)
        self.reconciles: list[tuple[float, float, float]] = []  # (monotonic, reconciles, seconds in reconciles)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.thread.start()


    def _run(self) -> None:
        last_scrape = 0.0
        while not self.stop.wait(self.cpu_every):
            now = time.monotonic()
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.cpu.append((now, cpu_seconds(self.op.proc.pid)))
            if now - last_scrape >= 1.0:
                last_scrape = now
                with contextlib.suppress(Exception):
                    m = self.op.metrics()
                    self.reconciles.append((now, sum(v for k, v in m.items()
                                                     if k.startswith("depgate_reconciles_total")),
                                            m.get("depgate_reconcile_duration_seconds_sum", 0.0)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)

    def cpu_percent(self, t0: float, t1: float) -> float:
        """The operator's CPU use between two moments, in % of one core (its GIL caps useful work ~100)."""
        pts = [p for p in self.cpu if t0 <= p[0] <= t1]
        if len(pts) < 2:
            return float("nan")
        return 100 * (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def around(self, t: float, before: float = 1.0, after: float = 0.25) -> dict[str, float]:
        """What the operator was doing in the window before moment t: CPU %, reconciles started, seconds spent."""
        rec = [r for r in self.reconciles if t - before - 1.0 <= r[0] <= t + after + 1.0]
        out = {"cpu_percent": round(self.cpu_percent(t - before, t + after), 1)}
        if len(rec) >= 2:
            span = rec[-1][0] - rec[0][0]
            out["reconciles_per_s"] = round((rec[-1][1] - rec[0][1]) / span, 1)
            out["reconcile_seconds_per_s"] = round((rec[-1][2] - rec[0][2]) / span, 2)
        return out

    def windows(self, t0: float, t1: float, width: float = 1.0) -> list[float]:
        """CPU % per `width`-second window between t0 and t1."""
        out, t = [], t0
        while t + width <= t1:
            out.append(round(self.cpu_percent(t, t + width), 1))
            t += width
        return out


def settle(read: Callable[[], Any], quiet: float, timeout: float, say: Say | None = None,
           what: str = "quiet") -> float:
    """Wait until read() returns the same value for `quiet` seconds; the seconds it took."""
    t0 = time.monotonic()
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() - t0 > timeout:
            if say:
                say(f"not {what} after {timeout:.0f}s; going on")
            break
        time.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return time.monotonic() - t0


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------
# numbers


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (as bench/waiter_bench.py): of 200 samples, p99 is the 198th."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 1), "p90_ms": round(pct(ms, 90), 1),
            "p99_ms": round(pct(ms, 99), 1), "max_ms": round(max(ms), 1), "mean_ms": round(sum(ms) / len(ms), 1),
            "min_ms": round(min(ms), 1)}


def fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


# ---------------------------------------------------------------------------------------------------
# results


@dataclass
class Row:
    """One line of bench/results/README.md."""

    benchmark: str
    compares: str
    depgate: str
    baseline: str
    ratio: str
    goal: str
    met: bool | None  # None: no goal

    def markdown(self) -> str:
        met = {True: "yes", False: "**no**", None: "-"}[self.met]
        return f"| {self.benchmark} | {self.compares} | {self.depgate} | {self.baseline} | {self.ratio} | " \
               f"{self.goal} | {met} |"


TABLE_HEAD = ("| benchmark | what it compares | depgate | baseline | ratio | goal | met? |\n"
              "|---|---|---|---|---|---|---|")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False,
                              timeout=10).stdout.strip()
    except OSError:
        return ""


def machine(loadavg_start: tuple[float, ...] | None = None) -> dict[str, Any]:
    def ver(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kubernetes": KUBERNETES_VERSION,
        "kopf": ver("kopf"),
        "kubernetes_client": ver("kubernetes"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": _git("rev-parse", "HEAD"),
        # Others edit the same checkout: what the measured operator had that the commit has not.
        "operator_tree_dirty": sorted(set(_git("diff", "--name-only", "HEAD", "--", "operator").split())
                                      | set(_git("ls-files", "--others", "--exclude-standard", "operator").split())),
        "loadavg_start": [round(x, 2) for x in loadavg_start] if loadavg_start else None,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, out: Path | None, payload: dict[str, Any], rows: list[Row],
                 loadavg_start: tuple[float, ...]) -> Path:
    path = out or RESULTS / f"{name}.json"
    doc = {"benchmark": name, **payload, "machine": machine(loadavg_start), "rows": [asdict(r) for r in rows],
           "markdown": "\n".join(r.markdown() for r in rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(TABLE_HEAD)
    for r in rows:
        print(r.markdown())
    print(f"wrote {path}", file=sys.stderr)
    return path


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def goal_row(benchmark: str, compares: str, ours_ms: float, base_ms: float, base_label: str, goal: float,
             what: str) -> Row:
    r = ratio(ours_ms, base_ms)
    return Row(benchmark, compares, f"{what} {fmt_ms(ours_ms)}", f"{what} {fmt_ms(base_ms)} ({base_label})",
               f"{r:.2f}x", f"<= {goal:g}x", r <= goal)
