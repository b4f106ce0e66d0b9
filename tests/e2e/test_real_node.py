"""Init containers on a REAL node (issue 19): they run one at a time, in order, each to completion,
and a pod really sits in Init until the port its init container waits for answers — first with
busybox `nc`, then with depgate's own rendered waiter (a DependencyPolicy with a tcp precondition,
the operator running as in tests/integration).

The servers listen on the node's InternalIP (an extra /32 on lo) from a hostNetwork pod, so the
waited-for address is known before the server exists and no traffic leaves the machine."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from tests.conftest import Plane, wait_for
from tests.integration.kubehelp import apply, condition, get, wait_deployment, wait_policy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BUSYBOX = "depgate.local/busybox:latest"


def node_pin(node: Any) -> str:
    return f"nodeSelector: {{kubernetes.io/hostname: {node.name}}}"


def free_node_port(node: Any) -> int:
    with socket.socket() as s:
        s.bind((node.node_ip, 0))
        return int(s.getsockname()[1])


def server_pod(node: Any, name: str, port: int) -> str:
    """busybox httpd on the node's InternalIP:port (hostNetwork; busybox `nc -l` cannot pick an address)."""
    return f"""
    apiVersion: v1
    kind: Pod
    metadata: {{name: {name}, labels: {{app: {name}}}}}
    spec:
      {node_pin(node)}
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: server
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [httpd, -f, -v, -p, "{node.node_ip}:{port}", -h, /tmp]
    """


def status_column(plane: Plane, ns: str, name: str) -> str:
    out = plane.run_kubectl("get", "pod", "-n", ns, name, "--no-headers", check=False).stdout.split()
    return out[2] if len(out) > 2 else ""


def record_statuses(plane: Plane, ns: str, name: str, until: str, timeout: float, seen: list[str]) -> None:
    """Poll the STATUS column kubectl prints, appending each new value to `seen`, until `until`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status_column(plane, ns, name)
        if s and (not seen or seen[-1] != s):
            seen.append(s)
        if s == until:
            return
        time.sleep(0.1)
    raise AssertionError(f"pod {ns}/{name} not {until} after {timeout:.0f}s; statuses seen: {seen}")


def pod(plane: Plane, ns: str, name: str) -> dict[str, Any]:
    got = get(plane, ns, "pod", name)
    assert got is not None, f"pod {ns}/{name} is gone"
    return got


def logs(plane: Plane, ns: str, name: str, container: str, *, check: bool = True) -> str:
    """`kubectl logs -c`: the API server asks the kubelet (at the node's InternalIP) for them."""
    return plane.run_kubectl("logs", "-n", ns, name, "-c", container, check=check).stdout


def is_subsequence(seen: list[str], order: list[str]) -> bool:
    it = iter(order)
    return all(any(s == o for o in it) for s in seen)


def test_init_containers_run_in_order_and_hold_the_pod(plane: Plane, real_node: Any, namespace: str) -> None:
    port = free_node_port(real_node)
    target = f"{real_node.node_ip} {port}"
    apply(plane, namespace, f"""
    apiVersion: v1
    kind: Pod
    metadata: {{name: app}}
    spec:
      {node_pin(real_node)}
      terminationGracePeriodSeconds: 1
      initContainers:
      - name: wait-port
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'until nc -w 1 {target} </dev/null; do echo "waiting for {target}"; sleep 1; done;
                          echo "{target} answered"']
      - name: second
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'echo "second init container ran"']
      containers:
      - name: app
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'echo "app started"; exec sleep 3600']
    """)
    seen: list[str] = []
    record_statuses(plane, namespace, "app", "Init:0/2", 60, seen)
    # the first init container really runs, and keeps the pod in Init while nothing answers
    wait_for(lambda: "waiting for" in logs(plane, namespace, "app", "wait-port", check=False), 30, interval=0.3,
             what="the first init container's log")
    time.sleep(3)
    assert status_column(plane, namespace, "app") == "Init:0/2"
    st = pod(plane, namespace, "app")["status"]
    assert "running" in st["initContainerStatuses"][0]["state"], st["initContainerStatuses"]
    assert "waiting" in st["initContainerStatuses"][1]["state"], "the second init container must not start yet"
    assert not st["containerStatuses"][0].get("started"), "the app must not start before its init containers"

    apply(plane, namespace, server_pod(real_node, "server", port))
    record_statuses(plane, namespace, "app", "Running", 90, seen)
    tail = seen[seen.index("Init:0/2"):]  # before it: Pending while the pod is being placed
    assert is_subsequence(tail, ["Init:0/2", "Init:1/2", "PodInitializing", "Running"]), seen

    assert f"{target} answered" in logs(plane, namespace, "app", "wait-port")
    assert "second init container ran" in logs(plane, namespace, "app", "second")
    assert "app started" in logs(plane, namespace, "app", "app")
    inits = pod(plane, namespace, "app")["status"]["initContainerStatuses"]
    first, second = (c["state"]["terminated"] for c in inits)
    assert first["exitCode"] == 0 and second["exitCode"] == 0, inits
    assert first["finishedAt"] <= second["startedAt"], "init containers run one at a time, in order"
    print(f"app: {' -> '.join(seen)}")


def test_init_container_waits_for_a_service(plane: Plane, real_node: Any, namespace: str) -> None:
    """kube-proxy (iptables mode) routes the Service's ClusterIP to the server pod on the bridge."""
    apply(plane, namespace, """
    apiVersion: v1
    kind: Service
    metadata: {name: backend}
    spec:
      selector: {app: backend}
      ports: [{port: 80, targetPort: 8080}]
    """)
    ip = get(plane, namespace, "service", "backend")["spec"]["clusterIP"]  # type: ignore[index]
    apply(plane, namespace, f"""
    apiVersion: v1
    kind: Pod
    metadata: {{name: client}}
    spec:
      {node_pin(real_node)}
      terminationGracePeriodSeconds: 1
      initContainers:
      - name: wait-service
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'until nc -w 1 {ip} 80 </dev/null | grep -q hello; do echo "waiting for {ip}:80"; sleep 1;
                          done; echo "backend {ip}:80 said hello"']
      containers:
      - name: app
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sleep, "3600"]
    """)
    seen: list[str] = []
    record_statuses(plane, namespace, "client", "Init:0/1", 60, seen)
    wait_for(lambda: "waiting for" in logs(plane, namespace, "client", "wait-service", check=False), 30,
             interval=0.3, what="the init container's log")
    apply(plane, namespace, f"""
    apiVersion: v1
    kind: Pod
    metadata: {{name: backend, labels: {{app: backend}}}}
    spec:
      {node_pin(real_node)}
      terminationGracePeriodSeconds: 1
      containers:
      - name: server
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'while true; do echo hello | nc -l -p 8080; done']
    """)
    record_statuses(plane, namespace, "client", "Running", 90, seen)
    assert f"backend {ip}:80 said hello" in logs(plane, namespace, "client", "wait-service")
    print(f"client: {' -> '.join(seen)}")


def test_failing_init_container_shows_init_error(plane: Plane, real_node: Any, namespace: str) -> None:
    apply(plane, namespace, f"""
    apiVersion: v1
    kind: Pod
    metadata: {{name: fails}}
    spec:
      {node_pin(real_node)}
      restartPolicy: Never
      initContainers:
      - name: exits-3
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'echo "giving up"; exit 3']
      containers:
      - name: app
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sleep, "3600"]
    """)
    seen: list[str] = []
    record_statuses(plane, namespace, "fails", "Init:Error", 60, seen)
    term = pod(plane, namespace, "fails")["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3
    assert "giving up" in logs(plane, namespace, "fails", "exits-3")
    print(f"fails: {' -> '.join(seen)}")


def test_dependency_policy_holds_the_deployment_in_init(plane: Plane, real_node: Any, operator: Any,
                                                        namespace: str) -> None:
    """The operator renders its waiter (image depgate/depgate:test, built from this checkout) into the
    Deployment; the new pod sits in Init until the server pod answers, then runs."""
    port = free_node_port(real_node)
    apply(plane, namespace, f"""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: web}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{app: web}}}}
      template:
        metadata: {{labels: {{app: web}}}}
        spec:
          {node_pin(real_node)}
          terminationGracePeriodSeconds: 1
          containers:
          - name: web
            image: {BUSYBOX}
            imagePullPolicy: Never
            command: [sh, -c, 'echo "web started"; exec sleep 3600']
    """)
    apply(plane, namespace, f"""
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {{name: web}}
    spec:
      workloadRef: {{name: web}}
      preconditions:
      - name: backend-port
        tcp: {{host: "{real_node.node_ip}", port: {port}}}
    """)
    dep = wait_deployment(plane, namespace, "web", lambda d: d["spec"]["template"]["spec"].get("initContainers"),
                          60, what="depgate's init container rendered")
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "depgate-backend-port" and init["command"] == ["depgate", "wait", "tcp"]

    def gated_pod() -> str | None:
        out = plane.run_kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout
        for p in json.loads(out)["items"]:
            names = [c["name"] for c in p["spec"].get("initContainers") or []]
            if "depgate-backend-port" in names and not p["metadata"].get("deletionTimestamp"):
                return str(p["metadata"]["name"])
        return None

    name = wait_for(gated_pod, 60, what="a pod of the rendered template")
    seen: list[str] = []
    record_statuses(plane, namespace, name, "Init:0/1", 60, seen)
    wait_for(lambda: "Refused" in logs(plane, namespace, name, "depgate-backend-port", check=False), 60, interval=0.5,
             what="the waiter's log saying the port refuses")
    time.sleep(5)
    assert status_column(plane, namespace, name) == "Init:0/1", "the pod must sit in Init while nothing answers"
    waiting = pod(plane, namespace, name)["status"]["initContainerStatuses"][0]
    assert "running" in waiting["state"] and waiting["restartCount"] == 0, waiting
    wait_policy(plane, namespace, "web", lambda p: condition(p, "Applied").get("status") == "True", 60,
                what="Applied=True")

    apply(plane, namespace, server_pod(real_node, "backend", port))
    record_statuses(plane, namespace, name, "Running", 120, seen)
    assert is_subsequence(seen[seen.index("Init:0/1"):], ["Init:0/1", "PodInitializing", "Running"]), seen
    waiter_log = logs(plane, namespace, name, "depgate-backend-port")
    assert f"tcp {real_node.node_ip}:{port}: ready after" in waiter_log, waiter_log
    term = pod(plane, namespace, name)["status"]["initContainerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0
    assert term.get("message", "").startswith("Ready"), term  # the waiter's termination log line
    assert "web started" in logs(plane, namespace, name, "web")
    print(f"{name}: {' -> '.join(seen)}\n{waiter_log}")
