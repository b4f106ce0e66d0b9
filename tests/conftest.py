"""Test harness.

Pure unit tests (tests/unit, tests/waiter) need nothing here. Tests that use the `plane` fixture
(directly or through `api`, `namespace`, `crds`, ...) run against a real kube-apiserver with etcd,
kube-controller-manager, kube-scheduler and kwok, started once per session by `depgate dev` code
and stopped at the end (on failure and Ctrl-C too; the processes also die with this process).

USE_EXISTING_CLUSTER=true runs the same tests against $KUBECONFIG instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Plane:
    kubeconfig: str
    kubectl: str
    server: str
    pods: bool  # kube-controller-manager + scheduler + kwok are running

    def run_kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=False, timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.plane)


@pytest.fixture(scope="session")
def plane() -> Iterator[Plane]:
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        kc = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        kubectl = shutil.which("kubectl")
        assert kubectl, "USE_EXISTING_CLUSTER=true needs kubectl on PATH"
        from kubernetes import config

        server = config.new_client_from_config(config_file=kc).configuration.host
        yield Plane(kc, kubectl, server, pods=True)
        return

    with own_plane("depgate-test-plane-") as p:
        yield p


@contextlib.contextmanager
def own_plane(prefix: str) -> Iterator[Plane]:
    """A control plane of `depgate dev` in a fresh state directory, torn down after."""
    from depgate.dev import build
    from depgate.dev import plane as devplane

    state_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        st = devplane.up(state_dir, die_with_parent=True)
    except (build.BuildError, devplane.PlaneError) as e:
        shutil.rmtree(state_dir, ignore_errors=True)
        pytest.fail(f"could not start the control plane: {e}", pytrace=False)
    bins, _ = devplane.find_binaries()
    kubectl = str(bins / "kubectl") if (bins / "kubectl").exists() else shutil.which("kubectl") or "kubectl"
    try:
        yield Plane(st.kubeconfig, kubectl, st.server, pods=st.pods)
    finally:
        devplane.down(state_dir, quiet=True)


@pytest.fixture(scope="session")
def api_client(plane: Plane):
    from kubernetes import config

    client = config.new_client_from_config(config_file=plane.kubeconfig)
    yield client
    client.close()


@pytest.fixture(scope="session")
def crds(plane: Plane) -> list[str]:
    """Install everything in crds/ (server-side apply) and wait until Established."""
    names = []
    for f in sorted((REPO / "crds").glob("*.yaml")):
        plane.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
        names.append(plane.run_kubectl("get", "-f", str(f), "-o", "name").stdout.strip())
    from depgate.dev.plane import wait_crd_served

    for n in names:
        wait_crd_served(plane.kubectl, plane.kubeconfig, n)
    return names


@pytest.fixture
def namespace(plane: Plane, request: pytest.FixtureRequest) -> Iterator[str]:
    base = request.node.name.lower().replace("_", "-")
    base = "".join(c for c in base if c.isalnum() or c == "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    plane.run_kubectl("create", "namespace", name)
    if plane.pods:
        # Pods need the namespace's default ServiceAccount, made by kube-controller-manager.
        waited = plane.run_kubectl("wait", "--for=create", "serviceaccount/default",
                                   "-n", name, "--timeout=60s", check=False)
        if waited.returncode != 0:
            raise AssertionError(f"kube-controller-manager made no default ServiceAccount in {name} within 60 s "
                                 f"({waited.stderr.strip()}); what the plane says:\n{watch_diagnostics(plane, name)}")
    yield name
    plane.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


def watch_diagnostics(plane: Plane, namespace: str) -> str:
    """What tells a silent watch apart from a slow controller: the namespace's resourceVersion next to
    the API server's watch cache for namespaces and serviceaccounts (a cache behind it never heard of
    the write: the server side; a cache past it: the client side), the watchers each cache serves, and
    the last lines of kube-controller-manager's log (the plane's own, when it is a local plane)."""
    ns = plane.run_kubectl("get", "namespace", namespace, "-o", "jsonpath={.metadata.resourceVersion}",
                           check=False).stdout
    raw = plane.run_kubectl("get", "--raw", "/metrics", check=False).stdout.splitlines()
    keep = ("apiserver_watch_cache_resource_version", "apiserver_watch_cache_events_received_total",
            "apiserver_registered_watchers", "apiserver_watch_events_total", "apiserver_watch_cache_initializations")
    lines = [f"namespace {namespace} resourceVersion {ns}"]
    lines += [m for m in raw if m.startswith(keep) and ('resource="namespaces"' in m or
                                                         'resource="serviceaccounts"' in m)]
    from depgate.dev import plane as devplane

    state = devplane.load_state(Path(plane.kubeconfig).parent)
    if state is not None:  # a local plane: is every component still running?
        lines.append("components: " + ", ".join(
            f"{name} {'running' if up else 'GONE'} (pid {pid})" for name, pid, up in devplane.components(state)))
    log = Path(plane.kubeconfig).parent / "logs" / "kube-controller-manager.log"
    if log.exists():
        lines += ["kube-controller-manager.log (last 40 lines):",
                  *log.read_text(errors="replace").splitlines()[-40:]]
    return "\n".join(lines)


@pytest.fixture
def needs_pods(plane: Plane) -> None:
    if not plane.pods:
        pytest.skip("this plane runs no kube-controller-manager/kwok (KUBEBUILDER_ASSETS without them)")


# ---------------------------------------------------------------------------------------------------
# The operator under test: `depgate run` as its own process, as users run it.


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll until predicate() returns something truthy; return it, or fail naming what we waited for."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    kubeconfig: str

    def metrics(self) -> dict[str, float]:
        import urllib.request

        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    key, _, value = line.rpartition(" ")
                    out[key] = float(value)
        return out

    def counter(self, name: str) -> float:
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_operator(kubeconfig: str, tmp: Path, *extra: str, admin: Plane | None = None) -> Operator:
    """A `depgate run` as the identity of `kubeconfig`, ready once its metrics answer and (unless
    --authority=off) its admission webhook serves: with `admin` (the plane, as its admin), once a
    server-side dry run of a policy comes back with the author it recorded."""
    import sys
    import urllib.error

    port = free_port()
    log = tmp / f"operator-{port}.log"
    fh = log.open("wb")
    enforce = "--authority=off" not in extra
    webhook = [] if any(a.startswith("--webhook-port") for a in extra) else [f"--webhook-port={free_port()}"]
    # Each operator a test starts leads at once, on a Lease of its own (a restarted one too: the suite's SIGKILLs
    # must not wait out a lease); the tests of leader election give their replicas one --lease-name.
    election = [] if any(a.startswith(("--lease-name", "--no-leader-election")) for a in extra) \
        else [f"--lease-name=depgate-test-{port}"]
    if enforce and admin is not None and webhook:
        register_webhooks(admin, int(webhook[0].split("=")[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "depgate", "run", f"--kubeconfig={kubeconfig}", f"--metrics-port={port}",
         "--waiter-image=depgate/depgate:test", *webhook, *election, *extra],
        stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    op = Operator(proc, port, log, kubeconfig)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"operator exited with {proc.returncode}:\n{op.log_text()[-4000:]}")
        try:
            op.metrics()
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_for(up, 60, what="the operator's metrics endpoint")
    if enforce:
        wait_for(lambda: up() and op.counter("depgate_webhook_ready") == 1, 60,
                 what="the operator's admission webhook (depgate_webhook_ready)")
        if admin is not None:
            wait_webhook_serves(admin)
    return op


def register_webhooks(admin: Plane, port: int) -> None:
    """The install's two webhook configurations, as an admin creates them (the operator may not),
    pointing at https://127.0.0.1:<port> as `make run` has them. Left as they are when they exist (an
    install's, or an earlier operator's): the operator points their clientConfig at itself."""
    import json

    from depgate import webhook

    def client(path: str) -> dict:
        return {"url": f"https://127.0.0.1:{port}/{path}"}

    for body in webhook.configurations(client, webhook.service_account_user(OPERATOR_NS)):
        out = admin.run_kubectl("create", "-f", "-", input=json.dumps(body), check=False)
        if out.returncode != 0 and "AlreadyExists" not in out.stderr:
            raise AssertionError(f"could not create the {body['kind']}: {out.stderr}")


PROBE_POLICY = {
    "apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
    "metadata": {"name": "webhook-probe", "namespace": "default"},
    "spec": {"workloadRef": {"name": "webhook-probe"},
             "preconditions": [{"name": "probe", "tcp": {"host": "localhost", "port": 1}}]},
}


def wait_webhook_serves(admin: Plane) -> None:
    """The API server calls the webhook now: a dry-run create comes back with the recorded author."""
    import json

    def served() -> bool:
        out = admin.run_kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                input=json.dumps(PROBE_POLICY), check=False)
        if out.returncode != 0:
            return False
        return "depgate.io/author" in (json.loads(out.stdout)["metadata"].get("annotations") or {})

    wait_for(served, 60, interval=0.2, what="the API server calling depgate's admission webhook")


def stop_operator(op: Operator) -> None:
    import signal

    if op.proc.poll() is None:
        op.proc.send_signal(signal.SIGINT)
        try:
            op.proc.wait(20)
        except subprocess.TimeoutExpired:
            op.proc.kill()
            op.proc.wait(10)


OPERATOR_NS = "depgate-system"
# What the session's operator needs from manifests/ before it starts is depgate.dev.plane.RBAC_KINDS. Not
# the webhook configurations: start_operator creates them (as the plane's admin, pointing at the operator
# it starts), so that they exist only while an operator serves them (their failurePolicy is Fail).


def wait_aggregated(plane: Plane) -> None:
    """kube-controller-manager copies the labelled roles' rules into the aggregated ClusterRole."""
    import json

    core = json.loads(plane.run_kubectl("get", "clusterrole", "depgate-operator-core", "-o", "json").stdout)["rules"]

    def done() -> bool:
        agg = json.loads(plane.run_kubectl("get", "clusterrole", "depgate-operator", "-o", "json").stdout)
        return all(r in (agg.get("rules") or []) for r in core)

    wait_for(done, 30, interval=0.3, what="the aggregated ClusterRole depgate-operator")


def operator_token_kubeconfig(plane: Plane, tmp: Path) -> Path:
    """A kubeconfig holding a token of the operator's ServiceAccount (TokenRequest API), nothing else."""
    import json

    import yaml

    token = plane.run_kubectl("create", "token", "depgate", "-n", OPERATOR_NS, "--duration=3h").stdout.strip()
    admin = yaml.safe_load(Path(plane.kubeconfig).read_text())
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"])
    cfg = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "plane", "cluster": cluster}],
           "users": [{"name": "depgate", "user": {"token": token}}],
           "contexts": [{"name": "depgate", "context": {"cluster": "plane", "user": "depgate"}}],
           "current-context": "depgate"}
    path = tmp / "depgate-sa.kubeconfig"
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def operator_kubeconfig(plane: Plane, crds: list[str], tmp_path_factory) -> str:
    """The identity the operator runs as: the ServiceAccount of manifests/, with exactly the RBAC the
    manifests grant (a TokenRequest token), never admin — so every feature test proves the
    ClusterRole sufficient. DEPGATE_TEST_AS_ADMIN=true runs it as admin instead (for debugging)."""
    from depgate.dev.plane import rbac_documents

    if os.environ.get("DEPGATE_TEST_AS_ADMIN", "").lower() == "true":
        return plane.kubeconfig
    rendered = plane.run_kubectl("kustomize", str(REPO / "manifests")).stdout
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=rbac_documents(rendered))
    if plane.pods:  # aggregation is kube-controller-manager's work
        wait_aggregated(plane)
    return str(operator_token_kubeconfig(plane, tmp_path_factory.mktemp("identity")))


@pytest.fixture(scope="session")
def operator(plane: Plane, crds: list[str], operator_kubeconfig: str, tmp_path_factory) -> Iterator[Operator]:
    extra = os.environ.get("DEPGATE_TEST_OPERATOR_ARGS", "").split()  # e.g. -v for the operator's debug log
    op = start_operator(operator_kubeconfig, tmp_path_factory.mktemp("operator"), *extra, admin=plane)
    yield op
    stop_operator(op)
    text = op.log_text()
    assert "Traceback" not in text, f"the operator logged a traceback:\n{text[-6000:]}"
