"""The seed scenario on a REAL node (issue 19): a data tier (Redis, an image built from this machine's
redis-server) and an app tier whose pods wait in Init for it through a DependencyPolicy (service, tcp,
redis and the lesson's `await-redis` as a `command` in the app's own image), then every precondition
type at least once in a real pod.

The real node runs kube-proxy and CoreDNS (cluster DNS, the kube-dns Service): tcp/redis/http/download
address Services by ClusterIP, and the `dns` check resolves `web.<ns>.svc.cluster.local` through the
cluster DNS from a real pod (no hostAliases, no /etc/hosts entry)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from depgate.dev.plane import wait_crd_served
from tests.conftest import Plane, wait_for
from tests.e2e.test_real_node import BUSYBOX, is_subsequence, logs, node_pin, pod, record_statuses, status_column
from tests.integration.kubehelp import apply, entry, get, wait_policy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REDIS = "depgate.local/redis:latest"
# the app image of a `command` precondition: not `latest` (see test_from_container_keeps_image_pull_policy)
APP = "depgate.local/busybox:app"


def cluster_ip(plane: Plane, ns: str, name: str) -> str:
    svc = get(plane, ns, "service", name)
    assert svc is not None
    return str(svc["spec"]["clusterIP"])


def gated_pod(plane: Plane, ns: str, label: str, init: str) -> str:
    def find() -> str | None:
        out = plane.run_kubectl("get", "pods", "-n", ns, "-l", label, "-o", "json").stdout
        for p in json.loads(out)["items"]:
            names = [c["name"] for c in p["spec"].get("initContainers") or []]
            if init in names and not p["metadata"].get("deletionTimestamp"):
                return str(p["metadata"]["name"])
        return None

    return str(wait_for(find, 90, interval=0.5, what=f"a pod of {label} with {init}"))


def test_seed_app_tier_waits_for_redis(plane: Plane, real_node: Any, operator: Any,
                                       namespace: str) -> None:
    apply(plane, namespace, """
    apiVersion: v1
    kind: Service
    metadata: {name: data-tier, labels: {app: microservices}}
    spec:
      selector: {tier: data}
      ports: [{name: redis, port: 6379, protocol: TCP}]
    """)
    ip = cluster_ip(plane, namespace, "data-tier")
    apply(plane, namespace, f"""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: app-tier, labels: {{app: microservices, tier: app}}}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{tier: app}}}}
      template:
        metadata: {{labels: {{app: microservices, tier: app}}}}
        spec:
          {node_pin(real_node)}
          terminationGracePeriodSeconds: 1
          containers:
          - name: server
            image: {APP}
            imagePullPolicy: Never
            env:
            - {{name: REDIS_URL, value: "redis://$(DATA_TIER_SERVICE_HOST):$(DATA_TIER_SERVICE_PORT_REDIS)"}}
            command: [sh, -c, 'echo "server started with $REDIS_URL"; exec sleep 3600']
    """)
    await_redis = ('h=${REDIS_URL#redis://}; until printf "PING\\r\\n" | nc -w 1 ${h%:*} ${h##*:} | grep -q PONG; '
                   'do echo "waiting for $REDIS_URL"; sleep 1; done; echo "redis at $REDIS_URL answered"')
    apply(plane, namespace, f"""
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {{name: app-tier}}
    spec:
      workloadRef: {{name: app-tier}}
      preconditions:
      - name: data-tier
        service: {{name: data-tier}}
      - name: redis-port
        tcp: {{host: "{ip}", port: 6379}}
      - name: redis-ping
        redis: {{host: "{ip}", port: 6379}}
      - name: await-redis
        command:
          fromContainer: server
          command: [sh, -c, {json.dumps(await_redis)}]
    """)
    name = gated_pod(plane, namespace, "tier=app", "depgate-await-redis")
    seen: list[str] = []
    record_statuses(plane, namespace, name, "Init:0/4", 90, seen)
    wait_for(lambda: logs(plane, namespace, name, "depgate-data-tier", check=False).strip(), 60, interval=0.5,
             what="the verdict waiter's log")
    pol = wait_policy(plane, namespace, "app-tier", lambda p: (p["status"].get("blocking") or [None])[0] == "data-tier",
                      60, what="blocking on data-tier")
    blocked = entry(pol, "data-tier")
    assert blocked["state"] == "Blocking", blocked
    waiter_log = logs(plane, namespace, name, "depgate-data-tier")
    assert blocked["reason"] in waiter_log, (blocked, waiter_log)
    assert status_column(plane, namespace, name) == "Init:0/4"
    st = pod(plane, namespace, name)["status"]
    assert "running" in st["initContainerStatuses"][0]["state"], st["initContainerStatuses"]
    assert not st["containerStatuses"][0].get("started")

    apply(plane, namespace, f"""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: data-tier, labels: {{app: microservices, tier: data}}}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{tier: data}}}}
      template:
        metadata: {{labels: {{app: microservices, tier: data}}}}
        spec:
          {node_pin(real_node)}
          terminationGracePeriodSeconds: 1
          containers:
          - name: redis
            image: {REDIS}
            imagePullPolicy: Never
            ports: [{{containerPort: 6379, name: redis}}]
            readinessProbe: {{tcpSocket: {{port: redis}}, periodSeconds: 1}}
    """)
    record_statuses(plane, namespace, name, "Running", 180, seen)
    order = ["Init:0/4", "Init:1/4", "Init:2/4", "Init:3/4", "PodInitializing", "Running"]
    assert is_subsequence(seen[seen.index("Init:0/4"):], order), seen
    out = json.loads(plane.run_kubectl("get", "pods", "-n", namespace, "-l", "tier=data", "-o", "json").stdout)
    (redis_pod,) = out["items"]
    ready_at = next(c["lastTransitionTime"] for c in redis_pod["status"]["conditions"] if c["type"] == "Ready")
    app = pod(plane, namespace, name)["status"]
    started_at = app["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert ready_at <= started_at, f"app started {started_at}, before Redis was Ready at {ready_at}"
    for c in app["initContainerStatuses"]:
        assert c["state"]["terminated"]["exitCode"] == 0, c
    await_log = logs(plane, namespace, name, "depgate-await-redis")
    assert f"redis at redis://{ip}:6379 answered" in await_log, await_log
    wait_policy(plane, namespace, "app-tier",
                lambda p: len(p["status"].get("preconditions") or []) == 4
                and all(e.get("state") == "Satisfied" for e in p["status"]["preconditions"]), 90,
                what="every precondition Satisfied")
    print(f"{name}: {' -> '.join(seen)}; redis Ready {ready_at}, server started {started_at}\n"
          f"depgate-data-tier log:\n{waiter_log}\ndepgate-redis-ping log:\n"
          f"{logs(plane, namespace, name, 'depgate-redis-ping')}\nawait-redis:\n{await_log}")


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.e2e.depgate.io}
spec:
  group: e2e.depgate.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: depgate-e2e-read-widgets
  labels: {depgate.io/aggregate-to-operator: "true"}
rules:
- {apiGroups: [e2e.depgate.io], resources: [widgets], verbs: [get, list, watch]}
"""
CONTENT = "served by busybox httpd for depgate's download\n"


def test_every_precondition_type_in_a_real_pod(plane: Plane, real_node: Any, operator: Any,
                                               namespace: str) -> None:
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=WIDGET_CRD)
    wait_crd_served(plane.kubectl, plane.kubeconfig, "crd/widgets.e2e.depgate.io")
    pin = node_pin(real_node)
    apply(plane, namespace, f"""
    apiVersion: v1
    kind: Service
    metadata: {{name: web}}
    spec:
      selector: {{app: web}}
      ports: [{{port: 80, targetPort: 8080}}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: web, labels: {{app: web}}}}
    spec:
      {pin}
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /tmp/www && printf "%s" "$CONTENT" > /tmp/www/file.txt &&
                          exec httpd -f -v -p 8080 -h /tmp/www']
        env: [{{name: CONTENT, value: {json.dumps(CONTENT)}}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: backend}}
    spec:
      selector: {{matchLabels: {{app: backend}}}}
      template:
        metadata: {{labels: {{app: backend}}}}
        spec:
          {pin}
          terminationGracePeriodSeconds: 1
          containers:
          - {{name: backend, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3600"]}}
    ---
    apiVersion: batch/v1
    kind: Job
    metadata: {{name: migrate}}
    spec:
      template:
        spec:
          {pin}
          restartPolicy: Never
          containers:
          - {{name: migrate, image: {BUSYBOX}, imagePullPolicy: Never, command: [sh, -c, 'echo migrated']}}
    ---
    apiVersion: v1
    kind: Secret
    metadata: {{name: creds}}
    stringData: {{password: s3cret}}
    ---
    apiVersion: v1
    kind: ConfigMap
    metadata: {{name: settings}}
    data: {{mode: fast}}
    ---
    apiVersion: e2e.depgate.io/v1
    kind: Widget
    metadata: {{name: w}}
    """)
    plane.run_kubectl("patch", "widget", "w", "-n", namespace, "--subresource=status", "--type=merge", "-p",
                      json.dumps({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Up",
                                                             "message": "up"}]}}))
    # as the operator's status asks (`secret` preconditions are opt-in per namespace, README)
    plane.run_kubectl("create", "rolebinding", "depgate-secret-reader", "-n", namespace,
                      "--clusterrole=depgate-secret-reader", "--serviceaccount=depgate-system:depgate")
    web = cluster_ip(plane, namespace, "web")
    fqdn = f"web.{namespace}.svc.cluster.local"
    sha = hashlib.sha256(CONTENT.encode()).hexdigest()
    apply(plane, namespace, f"""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: consumer}}
    spec:
      selector: {{matchLabels: {{app: consumer}}}}
      template:
        metadata: {{labels: {{app: consumer}}}}
        spec:
          {pin}
          terminationGracePeriodSeconds: 1
          containers:
          - name: consumer
            image: {APP}
            imagePullPolicy: Never
            command: [sh, -c, 'cat /depgate/shared/file.txt; exec sleep 3600']
    ---
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {{name: consumer}}
    spec:
      workloadRef: {{name: consumer}}
      preconditions:
      - {{name: web-http, http: {{url: "http://{web}/file.txt"}}}}
      - {{name: web-dns, dns: {{name: "{fqdn}"}}}}
      - {{name: web-service, service: {{name: web}}}}
      - {{name: migrate, job: {{name: migrate}}}}
      - {{name: creds, secret: {{name: creds, keys: [password]}}}}
      - {{name: settings, configMap: {{name: settings, keys: [mode]}}}}
      - {{name: backend, workload: {{kind: Deployment, name: backend}}}}
      - {{name: widget, resource: {{apiVersion: e2e.depgate.io/v1, kind: Widget, name: w, condition: Ready}}}}
      - {{name: file, download: {{url: "http://{web}/file.txt", sha256: "{sha}", path: file.txt}}}}
      - name: check
        command: {{fromContainer: consumer, command: [sh, -c, 'grep -q busybox /depgate/shared/file.txt']}}
    """)
    name = gated_pod(plane, namespace, "app=consumer", "depgate-check")
    seen: list[str] = []
    try:
        record_statuses(plane, namespace, name, "Running", 120, seen)
    except AssertionError:
        pol = get(plane, namespace, "dependencypolicy", "consumer") or {}
        blocking = [e for e in (pol.get("status") or {}).get("preconditions") or [] if e.get("state") != "Satisfied"]
        print(f"not satisfied: {json.dumps(blocking)}")
        raise
    st = pod(plane, namespace, name)["status"]
    report = []
    for c in st["initContainerStatuses"]:
        term = c["state"]["terminated"]
        assert term["exitCode"] == 0, c
        report.append(f"{c['name']}: exit 0, {term.get('message', '').strip()!r}")
    assert CONTENT.strip() in logs(plane, namespace, name, "consumer")
    wait_policy(plane, namespace, "consumer",
                lambda p: len(p["status"].get("preconditions") or []) == 10
                and all(e.get("state") == "Satisfied" for e in p["status"]["preconditions"]), 90,
                what="every precondition Satisfied")
    print(f"{name}: {' -> '.join(seen)}\n" + "\n".join(report))


def test_from_container_keeps_image_pull_policy(plane: Plane, real_node: Any, operator: Any, namespace: str) -> None:
    """A `command` with fromContainer copies the app container's imagePullPolicy with its image: an app of
    `image: ...:latest, imagePullPolicy: Never` (an image of the node's own) must not get an init container
    that a real kubelet pulls (Init:ErrImagePull; kwok never pulls, so only a real node shows it)."""
    apply(plane, namespace, f"""
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: local}}
    spec:
      selector: {{matchLabels: {{app: local}}}}
      template:
        metadata: {{labels: {{app: local}}}}
        spec:
          {node_pin(real_node)}
          terminationGracePeriodSeconds: 1
          containers:
          - {{name: server, image: {BUSYBOX}, imagePullPolicy: Never, command: [sleep, "3600"]}}
    ---
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {{name: local}}
    spec:
      workloadRef: {{name: local}}
      preconditions:
      - name: ready
        command: {{fromContainer: server, command: [sh, -c, 'echo ready']}}
    """)
    name = gated_pod(plane, namespace, "app=local", "depgate-ready")
    spec = pod(plane, namespace, name)["spec"]
    init = next(c for c in spec["initContainers"] if c["name"] == "depgate-ready")
    print(f"rendered init container: image {init['image']}, imagePullPolicy {init.get('imagePullPolicy')}")
    seen: list[str] = []
    try:
        record_statuses(plane, namespace, name, "Running", 60, seen)
    finally:
        print(f"{name}: {' -> '.join(seen)}")
