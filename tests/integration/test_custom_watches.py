"""Custom resources (`resource` preconditions) are watched through one shared watch per
(apiVersion, kind, namespace), on the operator's event loop: a kind whose CRD is installed after the
policy is picked up, and every object of the kind flips its own policies, not the others'."""

from __future__ import annotations

import json
import os

import pytest

from depgate.dev.plane import wait_crd_served
from tests.conftest import wait_for
from tests.integration.kubehelp import apply, deployment, entry, policy, wait_policy

GROUP = "latecomers.depgate.io"
CRD = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: sprockets.{GROUP}}}
spec:
  group: {GROUP}
  names: {{kind: Sprocket, plural: sprockets, singular: sprocket}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""
READ = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: depgate-read-sprockets
  labels: {{depgate.io/aggregate-to-operator: "true"}}
rules:
- {{apiGroups: [{GROUP}], resources: [sprockets], verbs: [get, list, watch]}}
"""


def sprocket(name: str, ready: str) -> str:
    return json.dumps({"apiVersion": f"{GROUP}/v1", "kind": "Sprocket", "metadata": {"name": name},
                       "status": {"conditions": [{"type": "Ready", "status": ready}]}})


@pytest.fixture
def read_sprockets(plane):
    """The right to read Sprockets, granted the documented way, and taken back after the test (the
    operator's rights are compared with a snapshot by test_manifests)."""
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=READ)

    def aggregated() -> bool:  # (`kubectl auth can-i` needs the kind served to say yes)
        role = json.loads(plane.run_kubectl("get", "clusterrole", "depgate-operator", "-o", "json").stdout)
        return any(GROUP in (r.get("apiGroups") or []) for r in role.get("rules") or [])

    checked = "DEPGATE_TEST_AS_ADMIN" not in os.environ and "USE_EXISTING_CLUSTER" not in os.environ
    if checked:
        wait_for(aggregated, 30, interval=0.3, what="the aggregated right to watch Sprockets")
    yield
    plane.run_kubectl("delete", "clusterrole", "depgate-read-sprockets", check=False)
    if checked:
        wait_for(lambda: not aggregated(), 30, interval=0.3, what="the right to watch Sprockets taken back")


def test_a_kind_installed_after_its_policies_is_watched_once_for_all(plane, operator, namespace, read_sprockets):
    for p in ("a", "b"):
        apply(plane, namespace, deployment(f"app-{p}"))
        apply(plane, namespace, policy(p, f"app-{p}", "\n".join(
            f"- name: s{i}\n  resource: {{apiVersion: {GROUP}/v1, kind: Sprocket, name: {p}-{i}, condition: Ready}}"
            for i in range(3))))
    for p in ("a", "b"):
        wait_policy(plane, namespace, p, lambda o: entry(o, "s0").get("reason") == "KindNotServed",
                    what="KindNotServed before the CRD exists")

    plane.run_kubectl("apply", "--server-side", "-f", "-", input=CRD)
    wait_crd_served(plane.kubectl, plane.kubeconfig, f"crd/sprockets.{GROUP}")
    for p in ("a", "b"):  # the shared watch retries (at most 10 s apart) and wakes both once it is served
        wait_policy(plane, namespace, p, lambda o: all(entry(o, f"s{i}").get("reason") == "NotFound"
                                                       for i in range(3)), timeout=45, what="NotFound once served")

    for i in range(3):
        plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=sprocket(f"a-{i}", "True"))
        plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=sprocket(f"b-{i}", "False"))
    wait_policy(plane, namespace, "a", lambda o: all(entry(o, f"s{i}").get("state") == "Satisfied" for i in range(3)),
                what="a: its three Sprockets Ready")
    wait_policy(plane, namespace, "b", lambda o: all(entry(o, f"s{i}").get("reason") == "ConditionNotMet"
                                                     for i in range(3)), what="b: its three Sprockets not Ready")
    plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=sprocket("b-1", "True"))
    wait_policy(plane, namespace, "b", lambda o: entry(o, "s1").get("state") == "Satisfied", what="b-1 Ready")
    plane.run_kubectl("delete", "sprocket", "a-2", "-n", namespace)
    wait_policy(plane, namespace, "a", lambda o: entry(o, "s2").get("reason") == "NotFound", what="a-2 deleted")
    assert operator.counter("depgate_custom_watches") >= 1
