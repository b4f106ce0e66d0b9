"""A real local control plane on loopback: etcd, kube-apiserver (RBAC on), kube-controller-manager,
kube-scheduler and kwok with one fake Node.

Every process runs in its own process group and is recorded in `<state dir>/state.json` (with its
command line), so `down` stops exactly what `up` started, a second `up` reuses a running plane, and
`restart` can stop one component and start it again as it was (fault-injection tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from depgate.dev import build
from depgate.dev.versions import KUBERNETES_VERSION

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"
NODE_NAME = "kwok-node-0"


class PlaneError(RuntimeError):
    pass


@dataclass
class Proc:
    name: str
    pid: int
    log: str
    argv: list[str] = field(default_factory=list)  # the whole command line, for restart()


@dataclass
class PlaneState:
    state_dir: str
    kubeconfig: str
    server: str
    token: str
    version: str
    procs: list[Proc] = field(default_factory=list)
    pods: bool = True  # False when only kube-apiserver + etcd run (KUBEBUILDER_ASSETS without the rest)
    die_with_parent: bool = False  # the processes stop when the process that started them dies


# What the operator's rights are made of in manifests/ (as `kubectl kustomize manifests/` renders it): its
# namespace and ServiceAccount, the roles and bindings (the ClusterRole depgate-verdict-reader that the
# gated pods read their verdicts through included), and the admission policies that bound them. Not the
# Deployment nor the webhook configurations: those are whoever runs the operator's to make.
RBAC_KINDS = frozenset({"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"})


def rbac_documents(rendered: str) -> str:
    """The RBAC_KINDS documents of a rendered manifests/ stream, as one YAML stream to apply."""
    import yaml

    return yaml.safe_dump_all([d for d in yaml.safe_load_all(rendered) if d and d.get("kind") in RBAC_KINDS])


def default_state_dir() -> Path:
    return Path(os.environ.get("DEPGATE_DEV_DIR") or build.cache_root() / "dev")


def _say(msg: str) -> None:
    print(f"depgate dev: {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: stop when the test process dies


def find_binaries() -> tuple[Path, bool]:
    """(directory, has everything for pods). KUBEBUILDER_ASSETS wins when it has apiserver + etcd."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        p = Path(assets)
        if (p / "kube-apiserver").exists() and (p / "etcd").exists():
            full = all((p / b).exists() for b in ("kube-controller-manager", "kube-scheduler", "kwok"))
            return p, full
        _say(f"KUBEBUILDER_ASSETS={assets} lacks kube-apiserver or etcd; compiling instead")
    return build.build(), True


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PlaneError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _make_pki(pki: Path) -> None:
    if shutil.which("openssl") is None:
        raise PlaneError("openssl is not on PATH (Debian package 'openssl'); it makes the plane's certificates")
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=depgate-dev-ca", cwd=pki)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver", cwd=pki)
    (pki / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "3650", "-extfile", "san.ext", cwd=pki)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    # the API server's client certificate towards kubelets (logs, exec on a real node: depgate.dev.node)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "kubelet-client.key", "-out", "kubelet-client.csr", "-subj",
             "/O=system:masters/CN=kube-apiserver-kubelet-client", cwd=pki)
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "kubelet-client.crt", "-days", "3650", "-extfile", "client.ext", cwd=pki)


def _kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "depgate-dev", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "depgate-dev", "context": {"cluster": "depgate-dev", "user": "admin"}}],
        "current-context": "depgate-dev",
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML: no yaml dependency needed here
    path.chmod(0o600)


def _get(url: str, token: str, ca: Path, timeout: float = 2.0) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ca)) if url.startswith("https") else None
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode(errors="replace")


def _wait_until(what: str, check: Callable[[], bool], timeout: float,
                procs: list[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
    deadline = time.monotonic() + timeout
    last_err = ""
    next_note = time.monotonic() + 10
    while time.monotonic() < deadline:
        for name, p, log in procs:
            if p.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise PlaneError(f"{name} exited with {p.returncode} while waiting for {what}; {log}:\n{tail}")
        try:
            if check():
                return
        except (OSError, ValueError) as e:
            last_err = str(e)
        if time.monotonic() > next_note:
            _say(f"  waiting for {what} ...")
            next_note = time.monotonic() + 10
        time.sleep(0.2)
    raise PlaneError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_err or 'none'})")


def wait_crd_served(kubectl: str, kubeconfig: str | None, name: str, timeout: float = 60.0) -> float:
    """Wait until CRD `name` (`crd/<name>` or `<plural>.<group>`) is Established and its objects are
    served from the API server's watch cache; return the seconds it took.

    Established alone is not enough: the first LIST of a new resource can still be refused with
    `429 storage is (re)initializing` while its watch cache fills. A list at resourceVersion=0 is
    served by that cache, so its 200 is the sign. (Not `kubectl wait --for=condition=Established`:
    it fails at once, without waiting, when it reads the CRD before the API server has written
    `status.conditions` — "accessor error: <nil> is of the type <nil>" — seen 2 times in 20 fresh planes.)
    """
    crd = name.split("/", 1)[-1]
    base = [kubectl, *([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])]
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = ""
    while time.monotonic() < deadline:
        got = subprocess.run([*base, "get", f"crd/{crd}", "-o", "json"], capture_output=True, text=True,
                             check=False, timeout=30)
        if got.returncode == 0:
            obj = json.loads(got.stdout)
            conds = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                sp = obj["spec"]
                version = next(v["name"] for v in sp["versions"] if v.get("served"))
                listing = subprocess.run(
                    [*base, "get", "--raw", f"/apis/{sp['group']}/{version}/{sp['names']['plural']}"
                     "?limit=1&resourceVersion=0"], capture_output=True, text=True, check=False, timeout=30)
                if listing.returncode == 0:
                    return time.monotonic() - t0
                last = listing.stderr.strip()
            else:
                last = f"conditions: {conds}"
        else:
            last = got.stderr.strip()
        time.sleep(0.2)
    raise PlaneError(f"timed out after {timeout:.0f}s waiting for crd/{crd} to be Established and served "
                     f"(last: {last or 'none'})")


def load_state(state_dir: Path) -> PlaneState | None:
    f = state_dir / "state.json"
    if not f.exists():
        return None
    raw = json.loads(f.read_text())
    raw["procs"] = [Proc(**p) for p in raw["procs"]]
    return PlaneState(**raw)


def components(state: PlaneState) -> list[tuple[str, int, bool]]:
    """(name, pid, still running) of every process the plane started."""
    return [(p.name, p.pid, _alive(p.pid)) for p in state.procs]


def running(state: PlaneState) -> bool:
    if not all(_alive(p.pid) for p in state.procs):
        return False
    try:
        code, _ = _get(f"{state.server}/readyz", state.token, Path(state.state_dir) / "pki" / "ca.crt")
    except OSError:
        return False
    return code == 200


def _kwok_node(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "1000"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "1000"},
        },
    }


def _post(url: str, token: str, ca: Path, body: dict[str, object]) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        if e.code == 409:
            return 409
        raise PlaneError(f"POST {url}: {e.code} {e.read().decode(errors='replace')}") from e


def up(state_dir: Path | None = None, *, die_with_parent: bool = False, timeout: float | None = None) -> PlaneState:
    """Start the plane (or reuse a running one in the same state dir) and return its state."""
    state_dir = Path(state_dir or default_state_dir())
    timeout = timeout or float(os.environ.get("KUBEBUILDER_CONTROLPLANE_START_TIMEOUT", "120"))
    existing = load_state(state_dir)
    if existing is not None:
        if running(existing):
            _say(f"reusing the running plane in {state_dir}")
            return existing
        _say(f"found a stale plane in {state_dir}; cleaning it up")
        down(state_dir, quiet=True)

    bins, full = find_binaries()
    state_dir.mkdir(parents=True, exist_ok=True)
    pki = state_dir / "pki"
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    _make_pki(pki)
    token = secrets.token_hex(24)
    (pki / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = state_dir / "kubeconfig"
    _kubeconfig(kubeconfig, server, pki / "ca.crt", token)
    state = PlaneState(str(state_dir), str(kubeconfig), server, token, KUBERNETES_VERSION, pods=full,
                       die_with_parent=die_with_parent)
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(name: str, args: list[str]) -> None:
        log = logs / f"{name}.log"
        argv = [str(bins / name), *args]
        p = _spawn(argv, log, state_dir, die_with_parent, append=False)
        started.append((name, p, log))
        state.procs.append(Proc(name, p.pid, str(log), argv))
        _save(state)

    verbosity = int(os.environ.get("DEPGATE_DEV_VERBOSITY") or 0)  # kube-apiserver's and kube-controller-manager's --v
    t0 = time.monotonic()
    try:
        _say(f"starting etcd, kube-apiserver {KUBERNETES_VERSION}"
             + (", kube-controller-manager, kube-scheduler, kwok" if full else " (no pods: assets lack the rest)")
             + f" in {state_dir}")
        start("etcd", [
            f"--data-dir={state_dir / 'etcd'}", "--name=default",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        _wait_until("etcd", lambda: _get(f"http://127.0.0.1:{etcd_port}/health", "", pki / "ca.crt")[0] == 200,
                    timeout, started)
        start("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC", f"--token-auth-file={pki / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--endpoint-reconciler-type=none", "--allow-privileged=true",
            # a real node (depgate.dev.node) is reached at its InternalIP, never by a name lookup
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            f"--v={verbosity}",
        ])
        _wait_until("kube-apiserver /readyz", lambda: _get(f"{server}/readyz", token, pki / "ca.crt")[0] == 200,
                    timeout, started)
        if full:
            start("kube-controller-manager", [
                f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0",
                f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
                "--controllers=*", "--node-monitor-grace-period=2m",
                "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
                "--concurrent-endpoint-syncs=10", "--concurrent-service-endpoint-syncs=10",
                f"--v={verbosity}",
            ])
            start("kube-scheduler", [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0"])
            stages = build.stages_dir() if bins == build.bin_dir() else bins / "kwok-stages"
            configs = sorted(str(p) for p in stages.glob("*.yaml")) if stages.exists() else []
            start("kwok", [
                f"--kubeconfig={kubeconfig}", "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}", "--node-ip=10.244.0.1", f"--server-address=127.0.0.1:{_free_port()}",
                # keep the node's Lease fresh: without it kube-controller-manager sees status heartbeats
                # only every ~55 s, marks the node Unknown and every pod on it NotReady
                "--node-lease-duration-seconds=40",
                *[f"--config={c}" for c in configs],
            ])
            _post(f"{server}/api/v1/nodes", token, pki / "ca.crt", _kwok_node(NODE_NAME))

            def node_ready() -> bool:
                code, body = _get(f"{server}/api/v1/nodes/{NODE_NAME}", token, pki / "ca.crt")
                conds = json.loads(body).get("status", {}).get("conditions", []) if code == 200 else []
                return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

            def default_sa() -> bool:
                code, _ = _get(f"{server}/api/v1/namespaces/default/serviceaccounts/default", token,
                               pki / "ca.crt")
                return code == 200

            def root_ca() -> bool:
                code, _ = _get(f"{server}/api/v1/namespaces/default/configmaps/kube-root-ca.crt", token,
                               pki / "ca.crt")
                return code == 200

            _wait_until(f"node {NODE_NAME} Ready (kwok)", node_ready, timeout, started)
            # What a pod in a new namespace needs of kube-controller-manager: both are made per namespace
            _wait_until("the default ServiceAccount (kube-controller-manager)", default_sa, timeout, started)
            _wait_until("the kube-root-ca.crt ConfigMap (kube-controller-manager)", root_ca, timeout, started)
    except BaseException:
        down(state_dir, quiet=True)
        raise
    _say(f"plane ready in {time.monotonic() - t0:.1f}s: {server}")
    return state


def _spawn(argv: list[str], log: Path, cwd: Path, die_with_parent: bool, *, append: bool) -> subprocess.Popen[bytes]:
    with log.open("ab" if append else "wb") as fh:
        return subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            preexec_fn=_die_with_parent if die_with_parent else None, start_new_session=not die_with_parent,
        )


def _save(state: PlaneState) -> None:
    (Path(state.state_dir) / "state.json").write_text(json.dumps(asdict(state), indent=2))


def restart(state_dir: Path, name: str, down_seconds: float = 0.0, *, timeout: float = 60.0) -> Proc:
    """Stop one component of a running plane, leave it down for `down_seconds`, start it again with
    the same command line (its log goes on), record the new pid, and for etcd and kube-apiserver
    wait until they answer again. Stopping is SIGTERM to its process group, then SIGKILL for what
    is still there when the downtime is over (kube-apiserver stops listening at once on SIGTERM
    but can take a minute to exit).

    With a plane started `die_with_parent`, call this from the thread that will outlive the
    component: the kernel's parent-death signal fires when the starting *thread* exits.
    """
    state_dir = Path(state_dir)
    state = load_state(state_dir)
    if state is None:
        raise PlaneError(f"no plane in {state_dir}")
    proc = next((p for p in state.procs if p.name == name), None)
    if proc is None:
        raise PlaneError(f"the plane in {state_dir} runs no {name} (it runs {', '.join(p.name for p in state.procs)})")
    if not proc.argv:
        raise PlaneError(f"{state_dir}/state.json has no command line for {name} (started by an older depgate)")
    t0 = time.monotonic()
    _stop_pid(proc.pid, grace=max(0.5, down_seconds))
    time.sleep(max(0.0, down_seconds - (time.monotonic() - t0)))
    p = _spawn(proc.argv, Path(proc.log), state_dir, state.die_with_parent, append=True)
    proc.pid = p.pid
    _save(state)
    ca = state_dir / "pki" / "ca.crt"
    waiting = [(name, p, Path(proc.log))]
    if name == "etcd":
        url = next(a.split("=", 1)[1] for a in proc.argv if a.startswith("--listen-client-urls="))
        _wait_until("etcd", lambda: _get(f"{url}/health", "", ca)[0] == 200, timeout, waiting)
    elif name == "kube-apiserver":
        _wait_until("kube-apiserver /readyz", lambda: _get(f"{state.server}/readyz", state.token, ca)[0] == 200,
                    timeout, waiting)
    return proc


def wait_settled(state_dir: Path, timeout: float = 150.0) -> float:
    """Wait until kube-controller-manager hears the API server again: a probe namespace gets its
    default ServiceAccount. Return the seconds it took.

    After kube-apiserver restarts, its watch caches start with no history, so every client-go
    reflector's resumed watch is refused as too old (410) and lists again after its backoff: 800 ms
    doubling to 30 s, jittered up to twice that, reset only after 2 minutes without a failure.
    Measured here: three restarts 10 s apart and kube-controller-manager's namespaces reflector waited
    49 s before listing again; a new namespace got its ServiceAccount 66 s after it was created
    (0.1 s on a settled plane). A test that restarts the API server calls this before the next test
    needs kube-controller-manager (it is what a cold `make test` tripped on: issue 11).
    """
    state = load_state(Path(state_dir))
    if state is None:
        raise PlaneError(f"no plane in {state_dir}")
    if not state.pods:
        return 0.0  # no kube-controller-manager to wait for
    ca = Path(state.state_dir) / "pki" / "ca.crt"
    name = f"depgate-settle-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    _post(f"{state.server}/api/v1/namespaces", state.token, ca,
          {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        _wait_until("kube-controller-manager to hear the API server again (a probe namespace's ServiceAccount)",
                    lambda: _get(f"{state.server}/api/v1/namespaces/{name}/serviceaccounts/default", state.token,
                                 ca)[0] == 200, timeout, [])
    finally:
        req = urllib.request.Request(f"{state.server}/api/v1/namespaces/{name}", method="DELETE",
                                     headers={"Authorization": f"Bearer {state.token}"})
        with contextlib.suppress(OSError):
            urllib.request.urlopen(req, timeout=10, context=ssl.create_default_context(cafile=str(ca))).close()
    return time.monotonic() - t0


def _stop_pid(pid: int, grace: float) -> None:
    # Each process leads its own group (start_new_session / setsid): signal the group.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if not _alive(pid):
            return


def down(state_dir: Path | None = None, *, quiet: bool = False) -> bool:
    """Stop every process `up` started (newest first) and remove the state. True if anything ran."""
    state_dir = Path(state_dir or default_state_dir())
    state = load_state(state_dir)
    if state is None:
        if not quiet:
            _say(f"no plane in {state_dir}")
        return False
    for proc in reversed(state.procs):
        _stop_pid(proc.pid, grace=10.0 if proc.name == "etcd" else 5.0)
    shutil.rmtree(state_dir, ignore_errors=True)
    if not quiet:
        _say(f"stopped {len(state.procs)} processes and removed {state_dir}")
    return True
