"""End-to-end tests on a REAL node (issue 19): a kubelet, containerd, runc and the CNI bridge joined to
the session's `depgate dev` plane (depgate.dev.node), so init containers really run and really hold a
pod in Init. Opt-in: marker `e2e`, collected only when `-m` names it (`pytest -m e2e tests/e2e`), as
root on Linux with cgroup v1 or v2, Debian's containerd/runc/CNI plugins (installed when missing) and
the kubelet compiled into the cache (about a minute with a warm Go cache)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    # kube-proxy, CoreDNS (cluster DNS) and the `kubernetes` Service's path to the API server: the
    # RealNode's defaults (it undoes them in stop()).
    node = devnode.RealNode(plane.kubeconfig, state, die_with_parent=True,
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
