"""A REAL node for the local plane (issue 19): a kubelet and kube-proxy compiled from the same
k8s.io/kubernetes module as the plane, Debian's containerd + runc + CNI bridge plugin, cluster DNS
(CoreDNS from its Go module: depgate.dev.coredns) and images built locally (depgate.dev.images; no
registry), so init containers really run. `cannot_run()` says why it cannot on this machine.

What pods reach on the plane, as on a real cluster: the API server through the `kubernetes` Service (the
plane's API server listens on 127.0.0.1 only and reconciles no endpoints, so a forwarder process on the
node's InternalIP and an EndpointSlice of the Service pointing at it), and Service names through the
`kube-dns` Service in kube-system (ClusterIP DNS_SERVICE_IP, the kubelet's clusterDNS) whose
EndpointSlice points at CoreDNS, a host process listening on the node's InternalIP:53. CoreDNS answers
cluster.local from the plane and NXDOMAIN for every other name: it forwards nowhere.

Built once into ``~/.cache/depgate/node-<version>/bin``; at run time everything lives in one private
state dir (containerd's root, state and socket, the kubelet's root dir, pod logs, CNI config and
IPAM data). `RealNode.start()` records each host change in ``<state dir>/node.json`` as it makes it;
`RealNode.stop()` (or `depgate dev node down`, from another process) undoes exactly those, also
after a failed start or a killed session: the pods (drained, then killed through containerd),
kubelet, kube-proxy, CoreDNS, the API forwarder, containerd and its shims, the API objects it
made (the EndpointSlices, the kube-dns Service; the nodes it cordoned are uncordoned), every mount
under the state dir (netns, volumes, rootfs), the cgroups under its cgroupRoot, its iptables
chains and rules (and the chains kubelet or kube-proxy made, and the nf_tables tables iptables-nft
made for them), the bridge, the node IP on lo, the sysctls the kubelet sets, and the fixed host
paths containerd and the kubelet write to when they did not exist before.

Containment: pods get a private /24 on a bridge this module makes (its gateway address on it), IPAM
routes only for that /24, the service range and the node IP (no default route), CNI ipMasq off, no
global IP forwarding (kube-proxy's Service DNAT gets forwarding on the bridge alone), and FORWARD
rules dropping anything that enters or leaves the bridge to another interface. The node IP is a /32
on lo; the kubelet listens there only, trusts the plane's CA for client certificates (the API
server's kubelet client certificate, see plane.py) and authorizes by webhook. One node per machine
(a lock, and fixed host paths: /run/containerd/s, /var/lib/cni, /var/log/containers,
/var/lib/kubelet/device-plugins).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from depgate.dev import coredns
from depgate.dev.build import BuildError, _run, _say, cache_root, check_go, staging_replaces
from depgate.dev.versions import GO_MIN, KUBERNETES_VERSION

NODE_COMPONENTS = ("kubelet", "kube-proxy")


def node_dir(version: str = KUBERNETES_VERSION) -> Path:
    return cache_root() / f"node-{version}"


def node_bin_dir(version: str = KUBERNETES_VERSION) -> Path:
    return node_dir(version) / "bin"


def kubelet_path(version: str = KUBERNETES_VERSION) -> Path:
    return node_bin_dir(version) / "kubelet"


def node_is_built(version: str = KUBERNETES_VERSION) -> bool:
    return (node_dir(version) / "complete").exists() and kubelet_path(version).exists()


def build_node(version: str = KUBERNETES_VERSION, *, components: tuple[str, ...] = NODE_COMPONENTS,
               say: Callable[[str], None] = _say) -> Path:
    """Compile kubelet (and kube-proxy) into the node cache dir (a no-op when there); return the bin dir."""
    if node_is_built(version):
        return node_bin_dir(version)
    go = check_go(what="kubelet")
    ndir = node_dir(version)
    src = ndir / "src"
    out = node_bin_dir(version)
    src.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = ndir / "build.log"
    procs = os.environ.get("GOMAXPROCS", "2")  # also `go build -p`: GOMAXPROCS=1 builds on one core
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOWORK": "off", "GOMAXPROCS": procs}
    total = time.monotonic()
    say(f"compiling the node {version} ({', '.join(components)}) into {ndir} (log: {log})")
    replaces = staging_replaces(go, version, env, src)
    (src / "go.mod").write_text(
        "module depgate.local/node\n\ngo 1.24.0\n\n"
        f"require k8s.io/kubernetes {version}\n\n" + "\n".join(replaces) + "\n"
    )
    (src / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in components)
        + ")\n"
    )
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    _run([*nice, go, "mod", "tidy"], cwd=src, env=env, label="go mod tidy (node)", log=log)
    minor = version.lstrip("v").split(".")[1]
    ldflags = " ".join([
        "-s -w",
        f"-X k8s.io/component-base/version.gitVersion={version}",
        "-X k8s.io/component-base/version.gitMajor=1",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={version}",
    ])
    for comp in components:
        _run([*nice, go, "build", "-p", procs, "-trimpath", "-tags", "selinux,notest", "-ldflags", ldflags,
              "-o", str(out / comp), f"k8s.io/kubernetes/cmd/{comp}"],
             cwd=src, env=env, label=f"compiling {comp}", log=log)
    (ndir / "complete").write_text(f"{version} {' '.join(components)} built in {time.monotonic() - total:.0f}s\n")
    say(f"node compiled in {time.monotonic() - total:.0f}s")
    return out


# --- Debian packages -------------------------------------------------------------------------------

DEBIAN_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "busybox-static", "iptables")
CNI_BIN_DIR = Path("/usr/lib/cni")


class NodeError(RuntimeError):
    pass


def missing_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES) -> list[str]:
    """The packages `dpkg -l` does not list as installed (`ii`)."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages],
                         capture_output=True, text=True, check=False).stdout
    installed = {line.split()[0] for line in out.splitlines() if len(line.split()) > 1 and line.split()[1] == "ii"}
    return [p for p in packages if p not in installed]


def ensure_packages(packages: tuple[str, ...] = DEBIAN_PACKAGES, *, say: Callable[[str], None] = _say) -> None:
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise NodeError(f"Debian packages missing: {' '.join(missing)} (apt-get install them as root)")
    say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # a machine whose package lists were never fetched (or are old): once more after
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, check=False)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"apt-get install {' '.join(missing)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _installable(packages: list[str]) -> list[str]:
    """Of these packages, those apt knows no candidate version of (asks the local package lists only)."""
    if shutil.which("apt-cache") is None:
        return packages
    out = subprocess.run(["apt-cache", "policy", *packages], capture_output=True, text=True, check=False).stdout
    known: set[str] = set()
    name = ""
    for line in out.splitlines():
        if line and not line.startswith(" "):
            name = line.rstrip(":")
        elif line.strip().startswith("Candidate:") and line.split(":", 1)[1].strip() not in ("", "(none)"):
            known.add(name)
    return [p for p in packages if p not in known]


def cannot_run() -> str | None:
    """Why a real node cannot run on this machine, or None when it can: Linux, root, cgroups, Debian's
    containerd/runc/CNI plugins/busybox/iptables installed or installable, the kubelet, kube-proxy and
    CoreDNS compiled or a Go that compiles them, and no other real node running here. What `make run`
    and the e2e tier ask before they use one (cheap: nothing is built or installed)."""
    if not sys.platform.startswith("linux"):
        return f"a real node needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, a bridge, iptables)"
    if not _controllers(("cgroup", "cgroup2")):
        return f"no cgroup hierarchy is mounted under {CGROUP_FS}"
    missing = missing_packages()
    if missing:
        if shutil.which("apt-get") is None:
            return f"Debian packages missing and no apt-get to install them: {' '.join(missing)}"
        unknown = _installable(missing)
        if unknown:
            return f"Debian packages missing and not installable here (apt knows no candidate): {' '.join(unknown)}"
    try:
        if not node_is_built():
            check_go(GO_MIN, what="the kubelet and kube-proxy", otherwise="")
        if not coredns.coredns_is_built():
            check_go(coredns.COREDNS_GO_MIN, what="CoreDNS", otherwise="")
    except BuildError as e:
        return str(e).strip()
    if LOCK.exists():
        import fcntl

        fd = os.open(LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return f"another real node runs on this machine (it holds {LOCK}; `depgate dev node down` stops it)"
        finally:
            os.close(fd)
    return None


# --- the API server, from pods ---------------------------------------------------------------------


class Forwarder:
    """TCP from `listen` to `target` (threads of this process): the API server, which listens on
    127.0.0.1 only, on the node's InternalIP for pods. Run as its own process by RealNode
    (`python -m depgate.dev.node forward HOST:PORT HOST:PORT`), so it outlives `depgate dev node up`."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(listen)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            self.conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            a.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def forward_main(argv: list[str]) -> int:
    """`python -m depgate.dev.node forward LISTEN TARGET`: forward until SIGTERM."""
    fwd = Forwarder(_hostport(argv[0]), _hostport(argv[1]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"forwarding {argv[0]} -> {argv[1]}", flush=True)
    stop.wait()
    fwd.close()
    return 0


# --- the running node ------------------------------------------------------------------------------

NODE_NAME = "depgate-node-0"
NODE_IP = "10.250.255.1"  # an extra /32 on lo: the node's InternalIP (kubelet, hostNetwork pods)
POD_SUBNET = "10.250.0.0/24"  # the bridge's; the gateway is .1, on the bridge
BRIDGE = "depgate0"
CNI_NETWORK = "depgate-node"
CGROUP_ROOT = "depgate-node"  # under every cgroup v1 hierarchy (kubelet's cgroupRoot)
FORWARD_CHAIN = "DEPGATE-NODE-FWD"
DNS_SERVICE_IP = "10.96.0.10"  # the kube-dns Service's ClusterIP (the plane's service range), the kubelet's clusterDNS
DNS_NAMESPACE, DNS_SERVICE = "kube-system", "kube-dns"
API_SLICE = "kubernetes-depgate-node"  # the `kubernetes` Service's EndpointSlice: the forwarder
DNS_SLICE = "kube-dns-depgate-node"
MANAGED_BY = "depgate-node"  # endpointslice.kubernetes.io/managed-by of both, and a label of the Service
CGROUP_FS = Path("/sys/fs/cgroup")
# What the kubelet (setupKernelTunables) and the CNI bridge plugin may change: put back by stop()
SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
           "net.ipv4.conf.all.route_localnet", "net.bridge.bridge-nf-call-iptables")  # the last two: kube-proxy's
# Fixed host paths containerd (shim sockets, CNI result cache) and the kubelet (log links) write to
# (and the kubelet's device-plugin socket, whatever --root-dir says; /run/mount is util-linux's, of umount)
SHARED_PATHS = ("/run/containerd", "/var/lib/cni", "/var/log/containers", "/var/lib/kubelet", "/run/mount")
LOCK = Path("/run/depgate-node.lock")


def default_node_state_dir(version: str = KUBERNETES_VERSION) -> Path:
    return Path(os.environ.get("DEPGATE_NODE_DIR") or node_dir(version) / "run")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _sh(*cmd: str, check: bool = True, timeout: float = 60, input: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _chains(tool: str, table: str) -> set[str]:
    out = _sh(tool, "-w", "5", "-t", table, "-S", check=False).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith(("-N ", "-P "))}


TABLES = ("filter", "nat", "mangle")
IPTABLES = ("iptables", "ip6tables")


def _nft_tables(tool: str) -> dict[str, bool]:
    """The tables `<tool>-save` lists (nf_tables backend only: {} for legacy) -> whether any rule is in one."""
    if "nf_tables" not in _sh(tool, "--version", check=False).stdout:
        return {}
    out = _sh(f"{tool}-save", check=False).stdout
    tables: dict[str, bool] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
            tables[current] = False
        elif line.startswith("-A ") and current:
            tables[current] = True
    return tables


def _nft_delete_table(family: int, name: str) -> None:
    """Delete an (empty) nf_tables table over netlink: iptables-nft makes tables but cannot remove them,
    and Debian's `nft` is not installed here. One batch: BEGIN, NFT_MSG_DELTABLE, END; then the ack."""
    import struct

    nlm_f_request, nlm_f_ack = 0x1, 0x4
    subsys_nftables, nft_msg_deltable, nfta_table_name = 10, 2, 1

    def msg(mtype: int, flags: int, fam: int, res_id: int, seq: int, payload: bytes = b"") -> bytes:
        body = struct.pack("=BBH", fam, 0, socket.htons(res_id)) + payload
        return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body

    raw = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(raw), nfta_table_name) + raw + b"\0" * (-len(raw) % 4)
    batch = (msg(0x10, nlm_f_request, socket.AF_UNSPEC, subsys_nftables, 1)
             + msg((subsys_nftables << 8) | nft_msg_deltable, nlm_f_request | nlm_f_ack, family, 0, 2, attr)
             + msg(0x11, nlm_f_request, socket.AF_UNSPEC, subsys_nftables, 3))
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as sk:  # NETLINK_NETFILTER
        sk.settimeout(5)
        sk.bind((0, 0))
        sk.send(batch)
        reply = sk.recv(65536)
    _, mtype, _, _, _ = struct.unpack_from("=IHHII", reply)
    if mtype == 2:  # NLMSG_ERROR: 0 is the ack
        (err,) = struct.unpack_from("=i", reply, 16)
        if err != 0:
            raise NodeError(f"deleting nf_tables table {name} (family {family}): {os.strerror(-err)}")


@dataclass
class NodeState:
    """What start() did, saved as it goes (node.json), so stop() — or `depgate dev node down` from
    another process — undoes exactly that."""

    state_dir: str
    name: str = NODE_NAME
    node_ip: str = NODE_IP
    kubeconfig: str = ""
    kubectl: str = ""
    containerd_pid: int = 0
    kubelet_pid: int = 0
    kube_proxy_pid: int = 0
    coredns_pid: int = 0
    forwarder_pid: int = 0
    kubelet_port: int = 0
    cluster_dns: str = ""  # what pods' resolv.conf names (the kube-dns ClusterIP, or the node IP without kube-proxy)
    api_slice: bool = False  # the `kubernetes` Service's EndpointSlice API_SLICE was made
    dns_service: bool = False  # kube-system/kube-dns and its EndpointSlice were made
    cordoned: list[str] = field(default_factory=list)  # nodes this one cordoned (schedulable before)
    sysctls: dict[str, str] = field(default_factory=dict)  # the values before start
    chains: dict[str, list[str]] = field(default_factory=dict)  # "<tool> <table>" -> chains before start
    nft_tables: dict[str, list[str]] = field(default_factory=dict)  # tool -> nf_tables tables before start
    forward_rules: bool = False
    address_added: bool = False
    bridge_added: bool = False
    cgroups: list[str] = field(default_factory=list)  # the cgroupRoot dirs we made
    created_paths: list[str] = field(default_factory=list)  # SHARED_PATHS that did not exist before
    node_registered: bool = False

    @property
    def socket(self) -> Path:
        return Path(self.state_dir) / "containerd" / "containerd.sock"


def load_node_state(state_dir: Path) -> NodeState | None:
    f = Path(state_dir) / "node.json"
    if not f.exists():
        return None
    return NodeState(**json.loads(f.read_text()))


def _save(st: NodeState) -> None:
    tmp = Path(st.state_dir) / "node.json.part"
    tmp.write_text(json.dumps(asdict(st), indent=2))
    tmp.rename(Path(st.state_dir) / "node.json")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _connects(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _http_ok(url: str) -> bool:
    import urllib.request

    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status) == 200
    return False


def dns_query(server: str, name: str, *, port: int = 53, timeout: float = 2.0) -> tuple[int, list[str]]:
    """One A query over UDP: (rcode, the addresses answered). Standard library only (no dig here)."""
    import random
    import struct

    qid = random.randrange(1 << 16)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sk:
        sk.settimeout(timeout)
        sk.sendto(packet, (server, port))
        while True:
            reply, _ = sk.recvfrom(4096)
            if struct.unpack_from("!H", reply)[0] == qid:
                break
    return parse_dns_reply(reply)


def parse_dns_reply(reply: bytes) -> tuple[int, list[str]]:
    """(rcode, the A records' addresses) of a DNS reply."""
    import struct

    _, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", reply)

    def skip_name(off: int) -> int:
        while True:
            n = reply[off]
            if n == 0:
                return off + 1
            if n & 0xC0 == 0xC0:
                return off + 2
            off += n + 1

    off = 12
    for _ in range(qd):
        off = skip_name(off) + 4
    addresses = []
    for _ in range(an):
        off = skip_name(off)
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", reply, off)
        off += 10
        if rtype == 1 and rdlen == 4:
            addresses.append(socket.inet_ntoa(reply[off:off + 4]))
        off += rdlen
    return flags & 0xF, addresses


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _stop_pid(pid: int, grace: float) -> None:
    if not _alive(pid):
        return
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


def _pids_with_arg(needle: str) -> list[int]:
    """Processes whose command line holds `needle` (our private socket path: containerd's shims)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle.encode() in args:
            found.append(int(d.name))
    return found


def _mounts_under(root: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == root or mp.startswith(root.rstrip("/") + "/"):
                out.append(mp)
    return sorted(set(out), key=lambda m: m.count("/"), reverse=True)


def _controllers(types: tuple[str, ...] = ("cgroup",)) -> list[Path]:
    """The cgroup hierarchies of these filesystem types mounted under /sys/fs/cgroup (v1 by default)."""
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            parts = line.split()
            sep = parts.index("-")
            if parts[sep + 1] in types and parts[4].startswith(str(CGROUP_FS) + "/"):
                found.append(Path(parts[4]))
    return sorted(set(found))


class RealNode:
    """One real node (containerd + runc + the CNI bridge + a kubelet) joined to a `depgate dev` plane.

    Use as a context manager, or call start() and then stop() in a `finally`: stop() undoes every
    step start() got through (it reads node.json, so it also works from another process).
    """

    def __init__(self, kubeconfig: str | Path, state_dir: Path | None = None, *, name: str = NODE_NAME,
                 node_ip: str = NODE_IP, pod_subnet: str = POD_SUBNET, service_cidr: str = "10.96.0.0/16",
                 images: tuple[str, ...] = ("busybox", "pause", "waiter"), kube_proxy: bool = True,
                 dns: bool = True, api_from_pods: bool = True, cordon: tuple[str, ...] = (),
                 die_with_parent: bool = False, say: Callable[[str], None] = _say) -> None:
        """kube_proxy: ClusterIP Services (iptables mode); dns: CoreDNS as cluster DNS (through the kube-dns
        Service with kube_proxy, else at the node IP); api_from_pods: the `kubernetes` Service reaches the
        API server (needs kube_proxy); cordon: nodes of the plane (the kwok node) cordoned while this one runs,
        so that new pods land here."""
        self.kubeconfig = str(kubeconfig)
        self.state_dir = Path(state_dir or default_node_state_dir())
        self.name, self.node_ip, self.pod_subnet, self.service_cidr = name, node_ip, pod_subnet, service_cidr
        self.images = images
        self.kube_proxy = kube_proxy
        self.dns = dns
        self.api_from_pods = api_from_pods and kube_proxy
        self.cordon = cordon
        self.die_with_parent = die_with_parent
        self.say = say
        self.state = NodeState(str(self.state_dir), name=name, node_ip=node_ip, kubeconfig=self.kubeconfig)
        self._lock_fd: int | None = None

    # -- helpers

    def _kubectl(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        return _sh(self.state.kubectl, f"--kubeconfig={self.kubeconfig}", *args, check=check, timeout=timeout,
                   input=input)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ctr", "-n", "k8s.io", "-a", str(self.state.socket), *args, check=check)

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        from depgate.dev.plane import _die_with_parent

        with log.open("ab") as fh:
            return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.state_dir,
                                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                                    start_new_session=not self.die_with_parent)

    def _wait(self, what: str, check: Callable[[], bool], timeout: float,
              procs: list[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pname, p, log in procs:
                if p.poll() is not None:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                    raise NodeError(f"{pname} exited with {p.returncode} while waiting for {what}; {log}:\n{tail}")
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError, NodeError):
                if check():
                    return
            time.sleep(0.25)
        raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}")

    def node_ready(self) -> bool:
        got = self._kubectl("get", "node", self.name, "-o", "json", check=False, timeout=20)
        if got.returncode != 0:
            return False
        conds = json.loads(got.stdout).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    # -- start

    def start(self, timeout: float = 120.0) -> RealNode:
        if os.geteuid() != 0:
            raise NodeError("a real node needs root (containerd, runc, the bridge, iptables)")
        t0 = time.monotonic()
        from depgate.dev import build as devbuild
        from depgate.dev import images

        ensure_packages(say=self.say)
        bins = build_node(say=self.say)
        dns_bin = coredns.build_coredns(say=self.say) if self.dns else None
        archives = [images.IMAGES[i](say=self.say) for i in self.images]
        kubectl = devbuild.bin_dir() / "kubectl"
        self.state.kubectl = str(kubectl) if kubectl.exists() else (shutil.which("kubectl") or "kubectl")
        self._take_lock()
        try:
            if _sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
                raise NodeError(f"a link named {BRIDGE} exists already (another node?); `depgate dev node down`")
            if load_node_state(self.state_dir) is not None:
                raise NodeError(f"{self.state_dir} holds a node already; stop it first (`depgate dev node down`)")
            if len(str(self.state.socket)) > 100:
                raise NodeError(f"{self.state.socket} is too long for a unix socket; use a shorter state dir")
        except BaseException:
            self._release_lock()
            raise
        self.state_dir.mkdir(parents=True, exist_ok=True)
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        st = self.state
        _save(st)
        try:
            self._host_setup()
            self._start_containerd(logs, timeout)
            self.say(f"importing images: {', '.join(self.images)}")
            images.import_images("ctr", st.socket, archives)
            service_ips = []
            if self.api_from_pods:
                service_ips.append(self._start_api_forwarder(logs, timeout))
            if dns_bin is not None:
                self._start_coredns(dns_bin, logs, timeout)
                if st.dns_service:
                    service_ips.append(DNS_SERVICE_IP)
            self._start_kubelet(bins, logs, timeout)
            if self.kube_proxy:
                self._start_kube_proxy(bins, logs, timeout, service_ips)
            if self.cordon:
                self._cordon_others()
        except BaseException:
            self.stop()
            raise
        extra = (f", cluster DNS {st.cluster_dns}" if st.cluster_dns else "") + (
            ", the API server at the kubernetes Service" if st.api_slice else "")
        self.say(f"node {self.name} Ready in {time.monotonic() - t0:.1f}s (InternalIP {self.node_ip}, "
                 f"pods on {self.pod_subnet}{extra}, state in {self.state_dir})")
        return self

    def _apply(self, obj: dict[str, object]) -> None:
        self._kubectl("apply", "-f", "-", input=json.dumps(obj))

    def _start_api_forwarder(self, logs: Path, timeout: float) -> str:
        """The `kubernetes` Service reaches the API server from pods: the plane's API server listens on
        127.0.0.1 only and runs with --endpoint-reconciler-type=none, so the Service has no endpoints and a
        pod's `depgate wait verdict` (https://$KUBERNETES_SERVICE_HOST) could not connect. A forwarder
        process on the node's InternalIP (the Service's targetPort) and an EndpointSlice pointing at it.
        Returns the Service's ClusterIP."""
        st = self.state
        svc = json.loads(self._kubectl("get", "service", "kubernetes", "-n", "default", "-o", "json").stdout)
        target_port = int(svc["spec"]["ports"][0]["targetPort"])
        server = urlsplit(json.loads(Path(self.kubeconfig).read_text())["clusters"][0]["cluster"]["server"])
        target = f"{server.hostname}:{server.port or 443}"
        log = logs / "api-forwarder.log"
        p = self._spawn([sys.executable, "-m", "depgate.dev.node", "forward", f"{self.node_ip}:{target_port}",
                         target], log)
        st.forwarder_pid = p.pid
        _save(st)
        self._wait(f"the API forwarder on {self.node_ip}:{target_port}", lambda: _connects(self.node_ip, target_port),
                   timeout, [("the API forwarder", p, log)])
        st.api_slice = True
        _save(st)
        self._apply({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": API_SLICE, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.node_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": target_port, "protocol": "TCP"}],
        })
        return str(svc["spec"]["clusterIP"])

    def _start_coredns(self, binary: Path, logs: Path, timeout: float) -> None:
        """CoreDNS on the node's InternalIP:53 (a host process), and with kube-proxy the kube-dns Service
        (ClusterIP DNS_SERVICE_IP) whose EndpointSlice points at it: the kubelet's clusterDNS."""
        st = self.state
        d = self.state_dir / "coredns"
        d.mkdir(exist_ok=True)
        ready = f"127.0.0.1:{_free_port('127.0.0.1')}"
        (d / "Corefile").write_text(coredns.corefile(listen=self.node_ip, port=53, ready=ready,
                                                     kubeconfig=self.kubeconfig))
        log = logs / "coredns.log"
        p = self._spawn([str(binary), "-conf", str(d / "Corefile")], log)
        st.coredns_pid = p.pid
        _save(st)
        procs = [("coredns", p, log)]
        self._wait("CoreDNS ready (its kubernetes plugin synced)", lambda: _http_ok(f"http://{ready}/ready"),
                   timeout, procs)
        self._wait("CoreDNS answering kubernetes.default.svc.cluster.local",
                   lambda: bool(dns_query(self.node_ip, "kubernetes.default.svc.cluster.local")[1]), timeout, procs)
        if not self.kube_proxy:
            st.cluster_dns = self.node_ip
            _save(st)
            return
        got = self._kubectl("get", "service", DNS_SERVICE, "-n", DNS_NAMESPACE, "-o", "json", check=False)
        if got.returncode == 0:
            labels = json.loads(got.stdout)["metadata"].get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") != MANAGED_BY:
                raise NodeError(f"service {DNS_NAMESPACE}/{DNS_SERVICE} exists and is not a real node's: "
                                "this plane has a cluster DNS already")
        st.dns_service = True
        _save(st)
        self._apply({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": DNS_SERVICE, "namespace": DNS_NAMESPACE,
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS",
                                    "app.kubernetes.io/managed-by": MANAGED_BY}},
            "spec": {"clusterIP": DNS_SERVICE_IP,
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
        })
        self._apply({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": DNS_SLICE, "namespace": DNS_NAMESPACE,
                         "labels": {"kubernetes.io/service-name": DNS_SERVICE,
                                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.node_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
        })
        st.cluster_dns = DNS_SERVICE_IP
        _save(st)

    def _cordon_others(self) -> None:
        st = self.state
        for other in self.cordon:
            got = self._kubectl("get", "node", other, "-o", "jsonpath={.spec.unschedulable}", check=False)
            if got.returncode != 0 or got.stdout.strip() == "true":
                continue  # no such node, or cordoned by someone else: left as it is
            st.cordoned.append(other)
            _save(st)
            self._kubectl("cordon", other)

    def _take_lock(self) -> None:
        import fcntl

        fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise NodeError(f"another real node holds {LOCK}: one node per machine (fixed host paths)") from e
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                LOCK.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    def _host_setup(self) -> None:
        st = self.state
        for name in SYSCTLS:
            with contextlib.suppress(OSError):
                st.sysctls[name] = _sysctl_path(name).read_text().strip()
        for tool in IPTABLES:
            for table in TABLES:
                st.chains[f"{tool} {table}"] = sorted(_chains(tool, table))
            st.nft_tables[tool] = sorted(_nft_tables(tool))
        st.created_paths = [p for p in SHARED_PATHS if not os.path.lexists(p)]
        _save(st)
        # nothing that enters the bridge may leave it for another interface, nor come in from one
        _sh("iptables", "-w", "5", "-N", FORWARD_CHAIN)
        st.forward_rules = True
        _save(st)
        _sh("iptables", "-w", "5", "-A", FORWARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        _sh("iptables", "-w", "5", "-A", FORWARD_CHAIN, "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP")
        _sh("iptables", "-w", "5", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)
        # the node's InternalIP
        _sh("ip", "addr", "add", f"{self.node_ip}/32", "dev", "lo")
        st.address_added = True
        _save(st)
        # the bridge, made here with its gateway address, so the CNI plugin needs no IP forwarding
        net = ipaddress.ip_network(self.pod_subnet)
        gateway = str(net.network_address + 1)
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        st.bridge_added = True
        _save(st)
        _sh("ip", "addr", "add", f"{gateway}/{net.prefixlen}", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")
        if self.kube_proxy:  # a Service's DNAT sends pod traffic back out of the bridge: forward that alone
            _sysctl_path(f"net.ipv4.conf.{BRIDGE}.forwarding").write_text("1\n")
        # kubelet's cgroupRoot, in every v1 hierarchy (cpuset needs its cpus and mems filled in); the
        # kubelet makes it in the cgroup2 `unified` one beside them itself
        for ctl in _controllers(("cgroup2",)):
            if not (ctl / CGROUP_ROOT).exists():
                st.cgroups.append(str(ctl / CGROUP_ROOT))
        for ctl in _controllers():
            d = ctl / CGROUP_ROOT
            if not d.exists():
                d.mkdir()
                st.cgroups.append(str(d))
                _save(st)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((ctl / f).read_text())
        # CNI: the bridge plugin, routes only for the pod /24, the service range and the node IP
        cni = self.state_dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        routes = [{"dst": self.service_cidr, "gw": gateway}, {"dst": f"{self.node_ip}/32", "gw": gateway}]
        conf = {
            "cniVersion": "0.4.0", "name": CNI_NETWORK,
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": False, "isDefaultGateway": False,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.pod_subnet, "gateway": gateway}]],
                         "routes": routes, "dataDir": str(cni / "ipam")},
            }],
        }
        (cni / "net.d" / "10-depgate.conflist").write_text(json.dumps(conf, indent=2))

    def _start_containerd(self, logs: Path, timeout: float) -> None:
        from depgate.dev.images import PAUSE_IMAGE

        st = self.state
        c = self.state_dir / "containerd"
        c.mkdir(exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (c / "config.toml").write_text(f"""version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{st.socket}"
[ttrpc]
  address = "{st.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{c / 'opt'}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{self.state_dir / 'cni' / 'net.d'}"
  max_conf_num = 1
""")
        log = logs / "containerd.log"
        p = self._spawn(["containerd", "--config", str(c / "config.toml")], log)
        st.containerd_pid = p.pid
        _save(st)
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, timeout,
                   [("containerd", p, log)])

    def _start_kubelet(self, bins: Path, logs: Path, timeout: float) -> None:
        st = self.state
        k = self.state_dir / "kubelet"
        k.mkdir(exist_ok=True)
        plane_ca = self._plane_ca()
        (k / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        st.kubelet_port = _free_port(self.node_ip)
        _save(st)
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.node_ip, "port": st.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": _free_port("127.0.0.1"),
            "containerRuntimeEndpoint": f"unix://{st.socket}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "cgroupsPerQOS": True,
            "failSwapOn": False, "failCgroupV1": False,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(plane_ca)}},
            "authorization": {"mode": "Webhook"},
            "clusterDomain": coredns.CLUSTER_DOMAIN, "resolvConf": str(k / "resolv.conf"),
            **({"clusterDNS": [st.cluster_dns]} if st.cluster_dns else {}),
            "podLogsDir": str(self.state_dir / "pod-logs"),
            "volumePluginDir": str(k / "volume-plugins"),
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "registerNode": True, "rotateCertificates": False,
            "makeIPTablesUtilChains": False, "protectKernelDefaults": False,
            "shutdownGracePeriod": "0s", "shutdownGracePeriodCriticalPods": "0s",
            "nodeStatusReportFrequency": "10s", "syncFrequency": "10s",
        }
        (k / "config.json").write_text(json.dumps(cfg, indent=2))
        log = logs / "kubelet.log"
        argv = [str(bins / "kubelet"), f"--config={k / 'config.json'}", f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={k / 'root'}", f"--cert-dir={k / 'pki'}", f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}", "--v=1"]
        p = self._spawn(argv, log)
        st.kubelet_pid = p.pid
        st.node_registered = True
        _save(st)
        self._wait(f"node {self.name} Ready", self.node_ready, timeout, [("kubelet", p, log)])

    def _start_kube_proxy(self, bins: Path, logs: Path, timeout: float, service_ips: list[str]) -> None:
        """kube-proxy in iptables mode: ClusterIP Services for the pods on the bridge (no NodePorts on
        localhost, conntrack sysctls left alone). Ready once its rules route `service_ips` (the
        kubernetes and kube-dns Services)."""
        st = self.state
        cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": self.kubeconfig}, "mode": "iptables",
            "hostnameOverride": self.name, "bindAddress": self.node_ip, "clusterCIDR": self.pod_subnet,
            "healthzBindAddress": f"127.0.0.1:{_free_port('127.0.0.1')}",
            "metricsBindAddress": f"127.0.0.1:{_free_port('127.0.0.1')}",
            "nodePortAddresses": [f"{self.node_ip}/32"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.state_dir / "kube-proxy.json"
        path.write_text(json.dumps(cfg, indent=2))
        log = logs / "kube-proxy.log"
        p = self._spawn([str(bins / "kube-proxy"), f"--config={path}", "--v=1"], log)
        st.kube_proxy_pid = p.pid
        _save(st)
        def routed() -> bool:
            if "KUBE-SERVICES" not in _chains("iptables", "nat"):
                return False
            rules = _sh("iptables", "-w", "5", "-t", "nat", "-S", "KUBE-SERVICES", check=False).stdout
            return all(f"-d {ip}/32" in rules for ip in service_ips)

        self._wait("kube-proxy's rules for " + (", ".join(service_ips) or "KUBE-SERVICES"), routed, timeout,
                   [("kube-proxy", p, log)])

    def _plane_ca(self) -> Path:
        cfg = json.loads(Path(self.kubeconfig).read_text())
        ca = cfg["clusters"][0]["cluster"].get("certificate-authority")
        if not ca:
            raise NodeError(f"{self.kubeconfig} names no certificate-authority file (a `depgate dev` plane's does)")
        return Path(ca)

    # -- stop

    def stop(self) -> list[str]:
        """Undo whatever start() did, every step, whatever fails; return what could not be undone."""
        st = load_node_state(self.state_dir) or self.state
        self.state = st
        problems: list[str] = []
        t0 = time.monotonic()

        def step(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as e:  # keep going: every later step still runs
                problems.append(f"{what}: {e}")

        if st.kubectl and st.node_registered:
            step("draining the node's pods", self._drain)
        if st.kubectl and (st.cordoned or st.api_slice or st.dns_service):
            step("removing the API objects the node made", self._remove_api_objects)
        step("stopping the kubelet", lambda: _stop_pid(st.kubelet_pid, 15))
        if st.coredns_pid:
            step("stopping CoreDNS", lambda: _stop_pid(st.coredns_pid, 5))
        if st.forwarder_pid:
            step("stopping the API forwarder", lambda: _stop_pid(st.forwarder_pid, 5))
        if st.kube_proxy_pid:
            step("stopping kube-proxy", lambda: _stop_pid(st.kube_proxy_pid, 10))
            step("kube-proxy --cleanup", self._kube_proxy_cleanup)
        if st.containerd_pid:
            step("removing containers", self._remove_containers)
        step("stopping containerd", lambda: _stop_pid(st.containerd_pid, 10))
        step("stopping containerd's shims", self._kill_shims)
        step("unmounting", self._unmount)
        step("removing cgroups", self._remove_cgroups)
        step("iptables", self._undo_iptables)
        if st.bridge_added:
            step("deleting the bridge", lambda: self._ignore_missing("ip", "link", "del", BRIDGE))
        if st.address_added:
            step("removing the node IP", lambda: self._ignore_missing("ip", "addr", "del", f"{st.node_ip}/32",
                                                                        "dev", "lo"))
        step("restoring sysctls", self._restore_sysctls)
        step("removing shared paths", self._remove_shared_paths)
        if st.kubectl and st.node_registered:
            step("deleting the Node", lambda: self._delete_node())
        left = _mounts_under(str(self.state_dir))
        if left:
            problems.append(f"still mounted, so {self.state_dir} is kept: {', '.join(left[:5])}")
        elif self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._release_lock()
        for p in problems:
            self.say(f"node teardown: {p}")
        self.say(f"node {st.name} stopped in {time.monotonic() - t0:.1f}s" + (" with problems" if problems else ""))
        if not problems:  # all undone: a second stop() has nothing to do
            self.state = NodeState(str(self.state_dir), name=st.name, node_ip=st.node_ip, kubeconfig=st.kubeconfig)
        return problems

    @staticmethod
    def _ignore_missing(*cmd: str) -> None:
        proc = _sh(*cmd, check=False)
        if proc.returncode != 0 and "Cannot find" not in proc.stderr and "not exist" not in proc.stderr \
                and "Cannot assign" not in proc.stderr:
            raise NodeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")

    def _remove_api_objects(self) -> None:
        """Uncordon what start() cordoned; delete the EndpointSlices and the kube-dns Service it made. A
        plane that is gone took them with it, so a failing kubectl is no problem here."""
        st = self.state
        for other in st.cordoned:
            self._kubectl("uncordon", other, check=False, timeout=20)
        if st.api_slice:
            self._kubectl("delete", "endpointslice", "-n", "default", API_SLICE, "--ignore-not-found", "--wait=false",
                          check=False, timeout=20)
        if st.dns_service:
            self._kubectl("delete", "endpointslice", "-n", DNS_NAMESPACE, DNS_SLICE, "--ignore-not-found",
                          "--wait=false", check=False, timeout=20)
            self._kubectl("delete", "service", "-n", DNS_NAMESPACE, "-l", f"app.kubernetes.io/managed-by={MANAGED_BY}",
                          "--ignore-not-found", "--wait=false", check=False, timeout=20)

    def _drain(self) -> None:
        """Delete the node's pods while the kubelet runs, so it stops their sandboxes (CNI DEL) itself
        (cordoned first, so that their controllers' new pods do not land here again)."""
        st = self.state
        if not _alive(st.kubelet_pid):
            return
        self._kubectl("cordon", st.name, check=False, timeout=20)
        got = self._kubectl("get", "pods", "-A", f"--field-selector=spec.nodeName={st.name}", "-o", "json",
                            check=False, timeout=20)
        if got.returncode != 0:
            return
        pods = json.loads(got.stdout).get("items", [])
        for pod in pods:
            self._kubectl("delete", "pod", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"],
                          "--grace-period=0", "--force", "--wait=false", check=False, timeout=20)
        deadline = time.monotonic() + 10  # then stop() kills what is left through containerd
        while pods and time.monotonic() < deadline:
            tasks = self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
            if not any("RUNNING" in t for t in tasks):
                break
            time.sleep(0.5)

    def _kube_proxy_cleanup(self) -> None:
        _sh(str(node_bin_dir() / "kube-proxy"), "--cleanup", "--v=0", check=False, timeout=60)

    def _remove_containers(self) -> None:
        if not _alive(self.state.containerd_pid):
            return
        for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            tid = line.split()[0]
            self.ctr("tasks", "kill", "-s", "SIGKILL", tid, check=False)
        deadline = time.monotonic() + 10
        for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
            tid = line.split()[0]
            while time.monotonic() < deadline and self.ctr("tasks", "delete", tid, check=False).returncode != 0:
                time.sleep(0.2)
        for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", cid, check=False)

    def _kill_shims(self) -> None:
        for pid in _pids_with_arg(str(self.state.socket)):
            _stop_pid(pid, 3)

    def _unmount(self) -> None:
        for mp in _mounts_under(str(self.state_dir)):
            if _sh("umount", mp, check=False).returncode != 0:
                _sh("umount", "-l", mp, check=False)
        left = _mounts_under(str(self.state_dir))
        if left:
            raise NodeError(f"could not unmount {', '.join(left[:5])}")

    def _remove_cgroups(self) -> None:
        dirs = list(self.state.cgroups)
        for d in dirs:
            root = Path(d)
            if not root.exists():
                continue
            for _ in range(20):  # kill what is left inside, then rmdir bottom-up
                procs = [int(x) for f in root.rglob("cgroup.procs") for x in f.read_text().split()]
                for pid in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                for sub in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                  reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    root.rmdir()
                if not root.exists():
                    break
                time.sleep(0.25)
            if root.exists():
                raise NodeError(f"{root} is still there")

    def _undo_iptables(self) -> None:
        st = self.state
        if st.forward_rules:
            while _sh("iptables", "-w", "5", "-D", "FORWARD", "-j", FORWARD_CHAIN, check=False).returncode == 0:
                pass
            _sh("iptables", "-w", "5", "-F", FORWARD_CHAIN, check=False)
            _sh("iptables", "-w", "5", "-X", FORWARD_CHAIN, check=False)
        for key, before in st.chains.items():
            tool, table = key.split()
            new = _chains(tool, table) - set(before) - {FORWARD_CHAIN}
            if not new:
                continue
            rules = _sh(tool, "-w", "5", "-t", table, "-S", check=False).stdout.splitlines()
            for rule in rules:  # jumps into the new chains from the old ones
                parts = rule.split()
                if parts[:1] == ["-A"] and parts[1] not in new and any(
                        parts[i] in ("-j", "-g") and parts[i + 1] in new for i in range(len(parts) - 1)):
                    _sh(tool, "-w", "5", "-t", table, "-D", *parts[1:], check=False)
            for chain in new:
                _sh(tool, "-w", "5", "-t", table, "-F", chain, check=False)
            for chain in new:
                _sh(tool, "-w", "5", "-t", table, "-X", chain)
        for tool, before_tables in st.nft_tables.items():  # tables iptables-nft made for us, left empty
            family = socket.AF_INET if tool == "iptables" else socket.AF_INET6
            for table, has_rules in _nft_tables(tool).items():
                if table not in before_tables and not has_rules:
                    _nft_delete_table(family, table)

    def _restore_sysctls(self) -> None:
        for name, value in self.state.sysctls.items():
            p = _sysctl_path(name)
            with contextlib.suppress(OSError):
                if p.read_text().strip() != value:
                    p.write_text(value + "\n")

    def _remove_shared_paths(self) -> None:
        st = self.state
        logs = Path("/var/log/containers")
        if logs.is_dir() and str(logs) not in st.created_paths:  # the kubelet's links into our pod logs
            for link in logs.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(st.state_dir):
                    link.unlink()
        cache = Path("/var/lib/cni")
        if cache.is_dir() and str(cache) not in st.created_paths:
            for f in cache.rglob(f"{CNI_NETWORK}-*"):
                with contextlib.suppress(OSError):
                    f.unlink()
        for p in st.created_paths:
            if os.path.lexists(p):
                if _mounts_under(p):
                    raise NodeError(f"{p} has mounts; left in place")
                shutil.rmtree(p, ignore_errors=True)

    def _delete_node(self) -> None:
        self._kubectl("delete", "node", self.state.name, "--wait=false", "--ignore-not-found", check=False,
                      timeout=20)

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def up(kubeconfig: str | Path, state_dir: Path | None = None, **kw: object) -> RealNode:
    return RealNode(kubeconfig, state_dir, **kw).start()  # type: ignore[arg-type]


def down(state_dir: Path | None = None) -> bool:
    """Stop the node whose state is in `state_dir` (default: the CLI's). True if there was one."""
    d = Path(state_dir or default_node_state_dir())
    st = load_node_state(d)
    if st is None:
        return False
    node = RealNode(st.kubeconfig, d, name=st.name, node_ip=st.node_ip)
    node.state = st
    node._take_lock()  # refused while a live process (a test session) runs a node; stop() releases it
    problems = node.stop()
    if problems:
        raise NodeError("; ".join(problems))
    return True


if __name__ == "__main__":
    if sys.argv[1:2] == ["forward"]:
        sys.exit(forward_main(sys.argv[2:]))
    build_node()
