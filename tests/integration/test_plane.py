"""The foundation: what only a real kube-apiserver (with etcd, kube-controller-manager and kwok) does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from depgate.dev.plane import wait_crd_served

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.depgate.io}
spec:
  group: test.depgate.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.min <= self.max"
              message: "min must not exceed max"
            properties:
              port: {type: integer, minimum: 1, maximum: 65535}
              min: {type: integer}
              max: {type: integer}
"""


def _deployment(name: str, init: list[dict]) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx"}], "initContainers": init},
            },
        },
    }


def _apply(apps: client.AppsV1Api, ns: str, body: dict, manager: str) -> dict:
    return apps.api_client.sanitize_for_serialization(
        apps.patch_namespaced_deployment(
            body["metadata"]["name"], ns, body, field_manager=manager, force=True,
            _content_type="application/apply-patch+yaml",
        )
    )


def widget(name: str, spec: str) -> str:
    return f"apiVersion: test.depgate.io/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {spec}\n"


def test_crd_schema_and_cel_rejections_carry_the_field_path(plane, namespace):
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=WIDGET_CRD)
    wait_crd_served(plane.kubectl, plane.kubeconfig, "crd/widgets.test.depgate.io")

    bad_port = plane.run_kubectl(
        "apply", "-n", namespace, "-f", "-", check=False,
        input=widget("w1", "{port: 70000, min: 1, max: 2}"),
    )
    assert bad_port.returncode != 0
    assert ("spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535"
            in bad_port.stderr)

    bad_cel = plane.run_kubectl(
        "apply", "-n", namespace, "-f", "-", check=False,
        input=widget("w2", "{port: 80, min: 5, max: 2}"),
    )
    assert bad_cel.returncode != 0
    assert "spec: Invalid value" in bad_cel.stderr and "min must not exceed max" in bad_cel.stderr

    good = plane.run_kubectl(
        "apply", "-n", namespace, "-f", "-",
        input=widget("w3", "{port: 80, min: 1, max: 2}"),
    )
    assert "widget.test.depgate.io/w3 created" in good.stdout


def test_server_side_apply_keeps_both_managers_init_containers(plane, api_client, namespace):
    apps = client.AppsV1Api(api_client)
    theirs = {"name": "theirs", "image": "busybox", "command": ["true"]}
    ours = {"name": "depgate-x", "image": "depgate", "command": ["depgate", "wait", "tcp"]}
    _apply(apps, namespace, _deployment("web", [theirs]), "user")
    # depgate applies only its own entry of the list map keyed by name
    _apply(apps, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"initContainers": [ours], "containers": []}}},
    }, "depgate")
    live = apps.read_namespaced_deployment("web", namespace)
    assert [c.name for c in live.spec.template.spec.init_containers] == ["theirs", "depgate-x"]
    # the user re-applies their manifest, which does not mention ours: both survive
    theirs2 = {**theirs, "command": ["sh", "-c", "true"]}
    _apply(apps, namespace, _deployment("web", [theirs2]), "user")
    live = apps.read_namespaced_deployment("web", namespace)
    names = [c.name for c in live.spec.template.spec.init_containers]
    assert names == ["theirs", "depgate-x"]
    assert live.spec.template.spec.init_containers[0].command == ["sh", "-c", "true"]
    managers = {m.manager for m in live.metadata.managed_fields}
    assert {"user", "depgate"} <= managers
    # and a manager that stops applying an entry removes only its own entry
    _apply(apps, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"initContainers": [], "containers": []}}},
    }, "depgate")
    live = apps.read_namespaced_deployment("web", namespace)
    assert [c.name for c in live.spec.template.spec.init_containers] == ["theirs"]


def test_deployment_gets_running_pods_on_the_kwok_node(plane, api_client, namespace, needs_pods):
    core = client.CoreV1Api(api_client)
    node = core.read_node("kwok-node-0")
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    apps = client.AppsV1Api(api_client)
    _apply(apps, namespace, _deployment("web", []), "user")
    deadline = time.monotonic() + 60
    running: list[str] = []
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        running = [p.metadata.name for p in pods if p.status.phase == "Running"]
        if len(running) == 2:
            break
        time.sleep(0.2)
    assert len(running) == 2, f"pods not Running within 60s: {running}"


def test_rbac_is_enforced(plane, api_client, namespace):
    """A ServiceAccount token from the TokenRequest API is refused what RBAC does not grant."""
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    tok = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    cfg = client.Configuration()
    cfg.host = api_client.configuration.host
    cfg.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {tok}"}
    with client.ApiClient(cfg) as as_sa:
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(as_sa).list_namespaced_secret(namespace)
        assert exc.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in json.loads(exc.value.body)["message"]


def test_dev_up_reuses_and_down_leaves_no_process(plane, needs_pods):
    """`depgate dev up` / `down` as a user runs them, in a state dir of its own."""
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        pytest.skip("exercises the local plane")
    state = Path(tempfile.mkdtemp(prefix="depgate-devcli-"))
    env = {**os.environ, "DEPGATE_DEV_DIR": str(state)}
    dev = [sys.executable, "-m", "depgate", "dev"]
    up = subprocess.run([*dev, "up"], capture_output=True, text=True, env=env, timeout=300, check=False)
    try:
        assert up.returncode == 0, up.stderr
        last = up.stdout.strip().splitlines()[-1]
        assert last == f"export KUBECONFIG={state / 'kubeconfig'}"
        pids = [p["pid"] for p in json.loads((state / "state.json").read_text())["procs"]]
        assert len(pids) == 5
        nodes = plane.run_kubectl("--kubeconfig", str(state / "kubeconfig"), "get", "nodes", "--no-headers")
        assert "kwok-node-0" in nodes.stdout and " Ready " in nodes.stdout
        again = subprocess.run([*dev, "up"], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert again.returncode == 0 and "reusing the running plane" in again.stderr
        assert [p["pid"] for p in json.loads((state / "state.json").read_text())["procs"]] == pids
    finally:
        down = subprocess.run([*dev, "down"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert not state.exists()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    assert [p for p in pids if alive(p)] == []


def test_the_namespace_fixtures_diagnostics_tell_server_from_client(plane, namespace):
    """What a namespace whose default ServiceAccount never comes reports (see conftest.watch_diagnostics):
    the namespace's resourceVersion and the watch caches' for namespaces and serviceaccounts, and,
    on a local plane, whether every component still runs and kube-controller-manager's last lines."""
    from tests.conftest import watch_diagnostics

    text = watch_diagnostics(plane, namespace)
    rv = plane.run_kubectl("get", "namespace", namespace, "-o", "jsonpath={.metadata.resourceVersion}").stdout
    assert f"namespace {namespace} resourceVersion {rv}" in text
    for resource in ("namespaces", "serviceaccounts"):
        assert any(line.startswith("apiserver_watch_cache_resource_version") and f'resource="{resource}"' in line
                   for line in text.splitlines()), text
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() != "true":
        assert "kube-controller-manager running" in text and "kube-apiserver running" in text, text
        assert "kube-controller-manager.log (last 40 lines):" in text
