"""End-to-end tests on a REAL node (issue 19): a kubelet, containerd, runc and the CNI bridge joined to
the session's `depgate dev` plane (depgate.dev.node), so init containers really run and really hold a
pod in Init. Opt-in: marker `e2e`, collected only when `-m` names it (`pytest -m e2e tests/e2e`), as
root on Linux with cgroup v1 or v2, Debian's containerd/runc/CNI plugins (installed when missing) and
the kubelet compiled into the cache (about a minute with a warm Go cache)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import Plane


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The e2e tests run only when asked for by marker (`-m e2e`), whatever else is selected."""
    if "e2e" in (config.option.markexpr or ""):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if item.get_closest_marker("e2e") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def real_node(plane: Plane) -> Iterator[object]:
    """One real node, for the session; stopped (every host change undone) at the end, also on failure."""
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        pytest.skip("a real node joins only a local `depgate dev` plane, not $KUBECONFIG's cluster")
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("a real node needs root on Linux (containerd, runc, a bridge, iptables)")
    if not plane.pods:
        pytest.skip("this plane runs no kube-controller-manager/kube-scheduler (KUBEBUILDER_ASSETS without them)")
    from depgate.dev import build
    from depgate.dev import node as devnode

    # A fixed state dir: a session that was killed (its kubelet and containerd die with it, its host
    # changes do not) is cleaned up by the next one, from the node.json it left.
    state = Path(tempfile.gettempdir()) / "depgate-e2e-node"
    if devnode.load_node_state(state) is not None:
        devnode.down(state)
    node = devnode.RealNode(plane.kubeconfig, state, kube_proxy=True, die_with_parent=True,
                            images=("busybox", "pause", "waiter", "redis", "busybox-app"))
    try:
        node.start()
    except (build.BuildError, devnode.NodeError) as e:  # start() has undone what it did
        pytest.fail(f"could not start the real node: {e}", pytrace=False)
    try:
        yield node
    finally:
        problems = node.stop()
        assert not problems, f"the real node's teardown left something behind: {problems}"


class Forwarder:
    """TCP from the node's InternalIP:port to 127.0.0.1:target (threads of this process)."""

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

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()


@pytest.fixture(scope="session")
def api_from_pods(plane: Plane, real_node: object) -> Iterator[None]:
    """The `kubernetes` Service reaches the API server from pods. The plane's API server listens on
    127.0.0.1 only and runs with --endpoint-reconciler-type=none, so the Service has no endpoints and a
    pod's `depgate wait verdict` (https://$KUBERNETES_SERVICE_HOST) could not connect: a forwarder on the
    node's InternalIP (the API server's port) and an EndpointSlice for the Service pointing at it."""
    svc = json.loads(plane.run_kubectl("get", "service", "kubernetes", "-n", "default", "-o", "json").stdout)
    target_port = int(svc["spec"]["ports"][0]["targetPort"])
    api_port = urlsplit(plane.server).port or 443
    node_ip = str(real_node.node_ip)  # type: ignore[attr-defined]
    fwd = Forwarder((node_ip, target_port), ("127.0.0.1", api_port))
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes-e2e", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "depgate-e2e"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [node_ip], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": target_port, "protocol": "TCP"}],
    }
    plane.run_kubectl("apply", "-f", "-", input=json.dumps(slice_))
    try:
        yield
    finally:
        plane.run_kubectl("delete", "endpointslice", "-n", "default", "kubernetes-e2e", "--ignore-not-found",
                          check=False)
        fwd.close()
