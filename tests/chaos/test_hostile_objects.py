"""Hostile input the schema cannot stop (issue 12): objects the API server stores that are hard to
decode, bookkeeping the policy's author can write, policies too big for Kopf's old bookkeeping, and
writes the API server fails. While each exists, the operator keeps serving a canary policy, never
exits, logs no traceback, explains the hostile policy in its status, and deletes it without hanging.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from depgate.dev.plane import wait_crd_served
from tests.chaos import support

BLOB_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: blobs.hostile.depgate.io}
spec:
  group: hostile.depgate.io
  names: {kind: Blob, plural: blobs, singular: blob, listKind: BlobList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""
DEPTH = 9_990  # the API server's JSON decoder stops at 10,000 levels (kubectl's too); this is stored


def canary(api: support.Api, ns: str) -> Any:
    """A policy on a ConfigMap, and a function that flips the ConfigMap and waits for the status to follow."""
    deploys, policies, cms = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns), support.CM.format(ns=ns)
    api.create(deploys, support.deployment("canary-app"))
    api.apply(f"{policies}/canary", support.policy(
        "canary", {"workloadRef": {"name": "canary-app"}},
        [{"name": "settings", "configMap": {"name": "canary-cm", "keys": ["a"]}}]), "chaos-test")
    flips = [0]

    def moves() -> None:
        flips[0] += 1
        has_key = flips[0] % 2 == 1
        api.apply(f"{cms}/canary-cm", support.config_map("canary-cm", {"a" if has_key else "b": str(flips[0])}),
                  "chaos-test")
        want = "Satisfied" if has_key else "Blocking"
        support.poll(lambda: [] if entry(api.get(f"{policies}/canary"), "settings").get("state") == want
                     else [f"canary is {entry(api.get(f'{policies}/canary'), 'settings')}"], 30,
                     f"the canary's status to say {want} (flip {flips[0]})")

    return moves


def entry(pol: dict[str, Any] | None, name: str) -> dict[str, Any]:
    return next((e for e in ((pol or {}).get("status") or {}).get("preconditions") or [] if e.get("name") == name),
                {})


def deleted_within(api: support.Api, path: str, seconds: float) -> float:
    api.delete(path)
    return support.poll(lambda: [] if api.get(path) is None else [f"{path} still there"], seconds,
                        f"{path} deleted (finalizer removed)")


def operator_healthy(op: Any) -> None:
    assert op.proc.poll() is None, f"the operator exited ({op.proc.returncode}):\n{op.log_text()[-3000:]}"
    assert "Traceback" not in op.log_text(), op.log_text()[-6000:]


READ_BLOBS = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: depgate-read-hostile-blobs
  labels: {depgate.io/aggregate-to-operator: "true"}
rules:
- {apiGroups: [hostile.depgate.io], resources: [blobs], verbs: [get, list, watch]}
"""


@pytest.fixture
def blob_crd(plane, operator_kubeconfig) -> Iterator[None]:
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=BLOB_CRD)
    wait_crd_served(plane.kubectl, plane.kubeconfig, "blobs.hostile.depgate.io")
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=READ_BLOBS)  # granted the documented way
    sa = "system:serviceaccount:depgate-system:depgate"
    support.poll(lambda: [] if plane.run_kubectl("auth", "can-i", "watch", "blobs.hostile.depgate.io", f"--as={sa}",
                                                 check=False).stdout.strip() == "yes" else ["not yet"],
                 30, "the operator's ClusterRole to aggregate the right to read Blobs")
    yield
    plane.run_kubectl("delete", "clusterrole", "depgate-read-hostile-blobs", check=False)
    plane.run_kubectl("delete", "crd", "blobs.hostile.depgate.io", "--wait=false", check=False)


@pytest.mark.chaos
def test_a_custom_resource_nested_10000_deep_is_read_and_judged(blob_crd, plane, api, namespace, operators,
                                                                tmp_path, report):
    ns = namespace
    nested = "1"
    for _ in range(DEPTH):
        nested = '{"a":' + nested + "}"
    blob = tmp_path / "blob.json"
    blob.write_text('{"apiVersion":"hostile.depgate.io/v1","kind":"Blob","metadata":{"name":"deep"},'
                    f'"spec":{nested},"status":{{"conditions":[{{"type":"Ready","status":"False"}}],"deep":{nested}}}}}')
    plane.run_kubectl("create", "-n", ns, "--validate=false", "-f", str(blob))
    op = operators.start()
    moves = canary(api, ns)
    moves()
    policies = support.DP.format(ns=ns)
    api.create(support.DEPLOY.format(ns=ns), support.deployment("app"))
    api.apply(f"{policies}/hostile", support.policy(
        "hostile", {"workloadRef": {"name": "app"}},
        [{"name": "blob", "resource": {"apiVersion": "hostile.depgate.io/v1", "kind": "Blob", "name": "deep",
                                       "condition": "Ready"}}]), "chaos-test")
    support.poll(lambda: [] if entry(api.get(f"{policies}/hostile"), "blob").get("state") == "Blocking"
                 else [f"blob is {entry(api.get(f'{policies}/hostile'), 'blob')}"], 60,
                 "the policy on the deep Blob to say Blocking (Ready is False)")
    # its status flips when the deep object changes: the custom watch decodes it too
    patch = tmp_path / "status.json"
    patch.write_text(json.dumps({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
    plane.run_kubectl("patch", "blob", "deep", "-n", ns, "--subresource=status", "--type=merge",
                      "--patch-file", str(patch))
    support.poll(lambda: [] if entry(api.get(f"{policies}/hostile"), "blob").get("state") == "Satisfied"
                 else [f"blob is {entry(api.get(f'{policies}/hostile'), 'blob')}"], 60,
                 "the policy on the deep Blob to say Satisfied")
    moves()
    operators.kill()  # and a restart lists the deep object first thing
    op = operators.start()
    moves()
    operator_healthy(op)
    report(f"a Blob nested {DEPTH} levels deep: judged, watched, listed after a restart")


@pytest.mark.chaos
def test_unreadable_kopf_bookkeeping_in_a_policy_changes_nothing(api, namespace, operators, report):
    ns = namespace
    op = operators.start()
    moves = canary(api, ns)
    policies = support.DP.format(ns=ns)
    api.create(support.DEPLOY.format(ns=ns), support.deployment("app"))
    pol = support.policy("scribbled", {"workloadRef": {"name": "app"}},
                         [{"name": "settings", "configMap": {"name": "nope", "keys": ["a"]}}])
    # what Kopf would keep there (the delete handler's retries, its copy of the spec), as garbage
    pol["metadata"]["annotations"] = {"depgate.io/policy_cleanup": "{not json", "depgate.io/kopf-managed": "[",
                                      "depgate.io/last-handled-configuration": "}" * 1000}
    api.apply(f"{policies}/scribbled", pol, "chaos-test")
    support.poll(lambda: [] if entry(api.get(f"{policies}/scribbled"), "settings").get("state") == "Blocking"
                 else ["not judged yet"], 60, "the scribbled policy judged")
    moves()
    took = deleted_within(api, f"{policies}/scribbled", 60)
    moves()
    operator_healthy(op)
    report(f"a policy with unreadable Kopf annotations: judged, deleted in {took:.1f}s")


@pytest.mark.chaos
def test_a_policy_over_256_kib_is_explained_and_deleted(api, namespace, operators, report):
    ns = namespace
    op = operators.start()
    moves = canary(api, ns)
    policies = support.DP.format(ns=ns)
    api.create(support.DEPLOY.format(ns=ns), support.deployment("app"))
    headers = [{"name": f"X-Pad-{j}", "value": "v" * 4096} for j in range(32)]
    pres = [{"name": f"h{i}", "http": {"url": f"http://svc-{i}/", "headers": headers}} for i in range(3)]
    api.apply(f"{policies}/big", support.policy("big", {"workloadRef": {"name": "app"}}, pres), "chaos-test")
    size = len(json.dumps(api.get(f"{policies}/big")))
    assert size > 256 * 1024, f"the test policy is only {size} bytes"

    def stalled() -> list[str]:
        c = support.condition(api.get(f"{policies}/big"), "Stalled")
        return [] if (c.get("status"), c.get("reason")) == ("True", "InvalidSpec") else [f"Stalled is {c}"]

    support.poll(stalled, 60, "the big policy explained (Stalled, InvalidSpec)")
    ann = (api.get(f"{policies}/big") or {}).get("metadata", {}).get("annotations") or {}
    assert not any(k.startswith("depgate.io/last-handled") for k in ann), f"Kopf's spec copy is back: {list(ann)}"
    moves()
    took = deleted_within(api, f"{policies}/big", 60)
    moves()
    operator_healthy(op)
    report(f"a {size // 1024} KiB policy: Stalled InvalidSpec, deleted in {took:.1f}s")


@pytest.mark.chaos
def test_writes_the_api_server_refuses_or_fails_land_in_status(plane, api, namespace, operators, report):
    ns = namespace
    op = operators.start()
    moves = canary(api, ns)
    policies, deploys = support.DP.format(ns=ns), support.DEPLOY.format(ns=ns)
    api.create(deploys, support.deployment("app"))
    api.create(deploys, support.deployment("hooked"))

    # 422: requests above limits (each is a valid quantity; only the Deployment's validation can tell)
    refused = support.policy("refused", {"workloadRef": {"name": "app"}},
                             [{"name": "db", "tcp": {"host": "db", "port": 5432}}])
    refused["spec"]["defaults"] = {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}
    api.apply(f"{policies}/refused", refused, "chaos-test")

    def said(name: str, ctype: str, want: tuple[str, str], text: str) -> list[str]:
        c = support.condition(api.get(f"{policies}/{name}"), ctype)
        ok = (c.get("status"), c.get("reason")) == want and text in (c.get("message") or "")
        return [] if ok else [f"{name}: {ctype} is {c}"]

    support.poll(lambda: said("refused", "Applied", ("False", "Refused"), "initContainers[0].resources.requests"),
                 60, "Applied=False Refused naming the field")
    support.poll(lambda: said("refused", "Stalled", ("True", "Refused"), "must be less than or equal to cpu limit"),
                 30, "Stalled=True Refused")

    # 500: an admission webhook that cannot be reached (loopback, nothing listens) fails every write
    hook = f"depgate-chaos-{ns}"
    plane.run_kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": hook},
        "webhooks": [{"name": "unreachable.depgate.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "failurePolicy": "Fail", "timeoutSeconds": 2,
                      "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                      "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                      "objectSelector": {"matchLabels": {"app": "hooked"}},
                      "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["UPDATE"],
                                 "resources": ["deployments"]}]}]}))
    try:
        api.apply(f"{policies}/hooked", support.policy(
            "hooked", {"workloadRef": {"name": "hooked"}}, [{"name": "db", "tcp": {"host": "db", "port": 5432}}]),
            "chaos-test")
        support.poll(lambda: said("hooked", "Applied", ("False", "InternalError"), "failed calling webhook"), 60,
                     "Applied=False InternalError (the webhook's 500) in status")
        moves()
    finally:
        plane.run_kubectl("delete", "validatingwebhookconfiguration", hook, check=False)
    t0 = time.monotonic()
    support.poll(lambda: said("hooked", "Applied", ("True", "Applied"), ""), 90, "Applied once the webhook is gone")
    moves()
    operator_healthy(op)
    report(f"422 Refused and 500 InternalError said in status; applied {time.monotonic() - t0:.1f}s after the "
           "webhook went")
