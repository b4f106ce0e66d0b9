"""Status that says which preconditions still block — per precondition and per pod — against the real
plane with kube-controller-manager and kwok."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from depgate.dev.plane import wait_crd_served
from tests.conftest import REPO, wait_for
from tests.integration.kubehelp import (
    apply,
    condition,
    deployment,
    entry,
    get,
    held_pods,
    init_names,
    policy,
    wait_deployment,
    wait_policy,
)

EXAMPLE = REPO / "examples" / "microservices"


def _ready(p) -> bool:
    return condition(p, "Ready").get("status") == "True"


def _apply_file(plane, path: Path, namespace: str) -> None:
    text = path.read_text().replace("namespace: microservices", f"namespace: {namespace}")
    plane.run_kubectl("apply", "-f", "-", input=text)


def test_three_tier_example_goes_from_blocking_data_tier_to_ready(plane, operator, namespace, needs_pods):
    _apply_file(plane, EXAMPLE / "02-app-tier.yaml", namespace)
    pol = wait_policy(plane, namespace, "app-tier",
                      lambda p: (p.get("status") or {}).get("blocking") == ["data-tier"]
                      and "data-tier" in condition(p, "Ready").get("message", ""),
                      what="blocking: [data-tier], and Ready says so")
    assert pol["status"]["blockingSummary"] == "data-tier"
    assert condition(pol, "Ready")["status"] == "False"
    assert "data-tier" in condition(pol, "Ready")["message"]
    assert entry(pol, "data-tier")["reason"] == "ServiceNotFound"
    # the data tier comes up: its pods become ready, the Service gets a ready endpoint
    _apply_file(plane, EXAMPLE / "01-data-tier.yaml", namespace)
    pol = wait_policy(plane, namespace, "app-tier", _ready, timeout=60, what="Ready")
    assert pol["status"]["blocking"] == []
    assert pol["status"]["blockingSummary"] == "-"
    assert entry(pol, "data-tier")["state"] == "Satisfied"
    assert condition(pol, "PreconditionsMet")["status"] == "True"
    # and the printer columns say so
    row = plane.run_kubectl("get", "dp", "app-tier", "-n", namespace, "--no-headers").stdout.split()
    assert row[0] == "app-tier" and "-" in row and "True" in row
    # the support tier waits on the app tier's Service in turn
    _apply_file(plane, EXAMPLE / "03-support-tier.yaml", namespace)
    _apply_file(plane, EXAMPLE / "02-app-tier.yaml", namespace)
    wait_policy(plane, namespace, "support-tier", _ready, timeout=60, what="support tier Ready")
    events = plane.run_kubectl("get", "events", "-n", namespace, "--field-selector",
                               "involvedObject.kind=DependencyPolicy,involvedObject.name=app-tier").stdout
    assert "PreconditionBlocking" in events and "PreconditionSatisfied" in events


def test_service_endpoints_flip_both_ways(plane, operator, namespace, needs_pods):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, deployment("db", labels=", tier: db"))
    apply(plane, namespace, "apiVersion: v1\nkind: Service\nmetadata: {name: db}\n"
                            "spec: {selector: {app: db}, ports: [{port: 5432}]}\n")
    apply(plane, namespace, policy("app", "app", "      - name: db\n        service: {name: db}"))
    wait_policy(plane, namespace, "app", lambda p: entry(p, "db").get("state") == "Satisfied", timeout=60)
    plane.run_kubectl("scale", "-n", namespace, "deployment/db", "--replicas=0")
    pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "db").get("state") == "Blocking", timeout=60,
                      what="blocking once the endpoints are gone")
    assert entry(pol, "db")["reason"] == "NoReadyEndpoints"
    plane.run_kubectl("scale", "-n", namespace, "deployment/db", "--replicas=1")
    wait_policy(plane, namespace, "app", lambda p: entry(p, "db").get("state") == "Satisfied", timeout=60)


def test_secret_and_configmap_keys_flip_both_ways(plane, operator, namespace):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("app", "app", "      - name: creds\n        secret: {name: db, keys: [password]}\n"
                                                  "      - name: conf\n        configMap: {name: cfg, keys: [a, b]}"))
    # Secrets are not readable by the operator until a namespace admin enables `secret` preconditions here
    pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "conf").get("reason") == "NotFound"
                      and entry(p, "creds").get("reason") == "Forbidden")
    assert pol["status"]["blocking"] == ["creds", "conf"]
    enable = (f"kubectl create rolebinding depgate-secret-reader -n {namespace} "
              "--clusterrole=depgate-secret-reader --serviceaccount=depgate-system:depgate")
    assert enable in entry(pol, "creds")["message"], entry(pol, "creds")
    plane.run_kubectl(*enable.split()[1:])
    # the per-namespace Secret watch, refused until now, is retried (at most 10 s apart) and wakes the policy
    pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "creds").get("reason") == "NotFound",
                      timeout=30, what="creds judged once enabled")
    graph = subprocess.run([sys.executable, "-m", "depgate", "graph", "-n", namespace], check=True, timeout=60,
                           env={**os.environ, "KUBECONFIG": plane.kubeconfig}, capture_output=True, text=True).stdout
    blocked = [line for line in graph.splitlines() if "[blocked]" in line]
    assert any("secret/db" in line for line in blocked) and any("configmap/cfg" in line for line in blocked), graph
    plane.run_kubectl("create", "secret", "generic", "db", "-n", namespace, "--from-literal=password=s3cret")
    plane.run_kubectl("create", "configmap", "cfg", "-n", namespace, "--from-literal=a=1")
    pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "conf").get("reason") == "MissingKeys"
                      and entry(p, "creds").get("state") == "Satisfied")
    assert "b" in entry(pol, "conf")["message"] and "s3cret" not in str(pol["status"])
    plane.run_kubectl("patch", "configmap", "cfg", "-n", namespace, "-p", '{"data": {"b": "2"}}')
    wait_policy(plane, namespace, "app", lambda p: p["status"].get("blocking") == [], what="nothing blocks")
    plane.run_kubectl("patch", "secret", "db", "-n", namespace, "--type=json",
                      "-p", '[{"op": "remove", "path": "/data/password"}]')
    wait_policy(plane, namespace, "app", lambda p: p["status"].get("blocking") == ["creds"], what="creds blocks again")


def test_job_complete_stays_satisfied_after_ttl_deletes_it(plane, operator, namespace, needs_pods):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("app", "app", "      - name: migrations\n        job: {name: db-migrate}"))
    wait_policy(plane, namespace, "app", lambda p: entry(p, "migrations").get("reason") == "JobNotFound")
    apply(plane, namespace, """
    apiVersion: batch/v1
    kind: Job
    metadata: {name: db-migrate}
    spec:
      ttlSecondsAfterFinished: 2
      template:
        spec:
          restartPolicy: Never
          containers: [{name: migrate, image: busybox, command: ["true"]}]
    """)
    pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "migrations").get("state") == "Satisfied",
                      timeout=60, what="Job Complete")
    uid = entry(pol, "migrations")["satisfiedUID"]
    wait_for(lambda: get(plane, namespace, "job", "db-migrate") is None, 60, what="the TTL controller deletes the Job")
    # The deletion wakes the policy; it must stay satisfied (the uid is remembered).
    pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "migrations").get("reason") == "CompletedAndDeleted",
                      what="CompletedAndDeleted")
    assert entry(pol, "migrations")["state"] == "Satisfied"
    assert entry(pol, "migrations")["satisfiedUID"] == uid


def test_workload_availability_flips_both_ways(plane, operator, namespace, needs_pods):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, deployment("backend"))
    backend = "      - name: backend\n        workload: {kind: Deployment, name: backend, minAvailable: 1}"
    apply(plane, namespace, policy("app", "app", backend))
    wait_policy(plane, namespace, "app", lambda p: entry(p, "backend").get("state") == "Satisfied", timeout=60)
    plane.run_kubectl("scale", "-n", namespace, "deployment/backend", "--replicas=0")
    wait_policy(plane, namespace, "app", lambda p: entry(p, "backend").get("reason") == "Unavailable", timeout=60)
    plane.run_kubectl("scale", "-n", namespace, "deployment/backend", "--replicas=1")
    wait_policy(plane, namespace, "app", lambda p: entry(p, "backend").get("state") == "Satisfied", timeout=60)


GADGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.test.depgate.io}
spec:
  group: test.depgate.io
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""


def test_custom_resource_condition_flips_both_ways(plane, operator, namespace):
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=GADGET_CRD)
    wait_crd_served(plane.kubectl, plane.kubeconfig, "crd/gadgets.test.depgate.io")
    apply(plane, namespace, deployment("app"))
    tls = ("      - name: tls\n"
           "        resource: {apiVersion: test.depgate.io/v1, kind: Gadget, name: g, condition: Ready}")
    apply(plane, namespace, policy("app", "app", tls))
    if "DEPGATE_TEST_AS_ADMIN" not in os.environ and "USE_EXISTING_CLUSTER" not in os.environ:
        # The operator's ServiceAccount may not read Gadgets: the precondition says so (never a crash) ...
        pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "tls").get("reason") == "Forbidden",
                          what="Forbidden")
        assert "gadgets" in entry(pol, "tls")["message"]
        # ... until a cluster admin grants it the documented way: a ClusterRole aggregated into the operator's
        plane.run_kubectl("apply", "--server-side", "-f", "-", input="""
    apiVersion: rbac.authorization.k8s.io/v1
    kind: ClusterRole
    metadata:
      name: depgate-read-gadgets
      labels: {depgate.io/aggregate-to-operator: "true"}
    rules:
    - {apiGroups: [test.depgate.io], resources: [gadgets], verbs: [get, list, watch]}
    """)
    wait_policy(plane, namespace, "app", lambda p: entry(p, "tls").get("reason") == "NotFound")
    apply(plane, namespace, "apiVersion: test.depgate.io/v1\nkind: Gadget\nmetadata: {name: g}\n")

    def set_ready(value: str) -> None:
        cond = {"type": "Ready", "status": value, "reason": "Issued", "message": "m"}
        plane.run_kubectl("patch", "gadget", "g", "-n", namespace, "--subresource=status", "--type=merge", "-p",
                          json.dumps({"status": {"conditions": [cond]}}))

    set_ready("True")
    wait_policy(plane, namespace, "app", lambda p: entry(p, "tls").get("state") == "Satisfied", what="Ready=True")
    set_ready("False")
    wait_policy(plane, namespace, "app", lambda p: entry(p, "tls").get("reason") == "ConditionNotMet",
                what="Ready=False blocks again")


def test_cycle_across_two_policies_is_reported_on_both_and_clears(plane, operator, namespace):
    apply(plane, namespace, deployment("a"))
    apply(plane, namespace, deployment("b"))
    apply(plane, namespace, "apiVersion: v1\nkind: Service\nmetadata: {name: a-svc}\n"
                            "spec: {selector: {app: a}, ports: [{port: 80}]}\n")
    apply(plane, namespace, "apiVersion: v1\nkind: Service\nmetadata: {name: b-svc}\n"
                            "spec: {selector: {app: b}, ports: [{port: 80}]}\n")
    apply(plane, namespace, policy("a", "a", "      - name: b\n        service: {name: b-svc}"))
    apply(plane, namespace, policy("b", "b", "      - name: a\n        service: {name: a-svc}"))
    for name in ("a", "b"):
        pol = wait_policy(plane, namespace, name, lambda p: condition(p, "Stalled").get("reason") == "DependencyCycle",
                          what="DependencyCycle")
        msg = condition(pol, "Stalled")["message"]
        assert "deployment/a" in msg and "service/b-svc" in msg and "deployment/b" in msg and "service/a-svc" in msg
        assert msg.startswith(f"deployment/{name} ->"), msg
    # `depgate graph` prints the same live graph, the cycle and the blocked edges marked
    env = {**os.environ, "KUBECONFIG": plane.kubeconfig}
    text = subprocess.run([sys.executable, "-m", "depgate", "graph", "-n", namespace], env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout
    assert "deployment/a" in text and "service/b-svc" in text, text
    assert "deployment/a -> service/b-svc -> deployment/b -> service/a-svc -> deployment/a" in text, text
    dot = subprocess.run([sys.executable, "-m", "depgate", "graph", "-n", namespace, "--format", "dot"], env=env,
                         check=True, capture_output=True, text=True, timeout=60).stdout
    assert dot.lstrip().startswith("digraph") and '"deployment/a"' in dot.replace("\\n", " "), dot
    # fix one policy: the cycle clears on both
    apply(plane, namespace, policy("b", "b", "      - name: dns\n        dns: {name: example.internal}"))
    for name in ("a", "b"):
        wait_policy(plane, namespace, name, lambda p: condition(p, "Stalled").get("status") == "False",
                    what="no longer stalled")


def test_pods_held_in_an_init_container_show_up_as_blocked_pods(plane, api_client, operator, namespace):
    """Pods on a node no kubelet (nor kwok) manages: the test plays the kubelet through pods/status."""
    from kubernetes import client

    with held_pods(plane, client.CoreV1Api(api_client), namespace, replicas=2):
        pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "redis-port").get("blockedPods") == 2,
                          what="2 blocked pods")
        e = entry(pol, "redis-port")
        assert e["state"] == "Blocking"
        assert e["reason"] == "Timeout"
        assert "connection refused" in e["message"]
        assert entry(pol, "dns")["blockedPods"] == 0
        assert pol["status"]["blocking"][0] == "redis-port"
        assert pol["status"]["pods"] == {"total": 2, "initializing": 2, "ready": 0}


def test_examples_are_admitted_under_restricted_pod_security(plane, operator, namespace, needs_pods):
    """Every gated Deployment of the examples (depgate's init containers included) passes the restricted
    Pod Security profile: kube-controller-manager creates all their pods, no FailedCreate."""
    plane.run_kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    for f in ("01-data-tier.yaml", "02-app-tier.yaml", "03-support-tier.yaml"):
        _apply_file(plane, EXAMPLE / f, namespace)
    for name in ("app-tier", "support-tier"):
        wait_policy(plane, namespace, name, _ready, timeout=90, what="Ready")

    def rolled_out(d) -> bool:
        st = d.get("status") or {}
        return (st.get("observedGeneration") == d["metadata"]["generation"]
                and st.get("readyReplicas") == st.get("updatedReplicas") == d["spec"]["replicas"])

    for name in ("data-tier", "app-tier", "support-tier"):
        dep = wait_deployment(plane, namespace, name, rolled_out, timeout=90, what="rolled out")
        if name != "data-tier":
            assert init_names(dep)[0].startswith("depgate-")
    events = json.loads(plane.run_kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    failed = [e["message"] for e in events if e.get("reason") == "FailedCreate"]
    assert failed == []
    # and a pod that is not restricted is refused there: the label is enforced
    bad = plane.run_kubectl("run", "rooty", "-n", namespace, "--image=busybox", "--restart=Never", check=False)
    assert bad.returncode != 0 and "violates PodSecurity" in bad.stderr


def test_pods_that_cannot_be_scheduled_say_the_schedulers_reason(plane, operator, namespace, needs_pods):
    """kube-scheduler runs on the plane: requests no node can meet leave the pods Pending with
    PodScheduled=False, reason Unschedulable; the status says that, with the scheduler's message,
    instead of NotReached."""
    big = deployment("app").replace("          - name: server\n",
                                    "          - name: server\n            resources: {requests: {cpu: '1000'}}\n", 1)
    assert "cpu: '1000'" in big
    apply(plane, namespace, big)
    apply(plane, namespace, policy("app", "app", "- name: redis-port\n  tcp: {host: data-tier, port: 6379}"))
    pol = wait_policy(plane, namespace, "app", lambda p: entry(p, "redis-port").get("reason") == "Unschedulable",
                      timeout=60, what="redis-port Unschedulable")
    e = entry(pol, "redis-port")
    assert e["state"] == "Pending" and "cannot be scheduled" in e["message"], e
    assert "Insufficient cpu" in e["message"], e  # the scheduler's own words
