"""Small helpers for tests against the real API server (through kubectl, as users do)."""

from __future__ import annotations

import contextlib
import json
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, watch

from tests.conftest import Plane, wait_for, wait_webhook_serves


def apply(plane: Plane, ns: str, manifest: str, *args: str) -> str:
    return plane.run_kubectl("apply", "-n", ns, *args, "-f", "-", input=textwrap.dedent(manifest)).stdout


def get(plane: Plane, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = plane.run_kubectl("get", "-n", ns, kind, name, "-o", "json", check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return dict(json.loads(proc.stdout))


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def entry(obj: dict[str, Any] | None, name: str) -> dict[str, Any]:
    for e in ((obj or {}).get("status") or {}).get("preconditions") or []:
        if e.get("name") == name:
            return dict(e)
    return {}


def init_names(dep: dict[str, Any] | None) -> list[str]:
    spec = ((dep or {}).get("spec") or {}).get("template", {}).get("spec", {})
    return [c["name"] for c in spec.get("initContainers") or []]


def wait_policy(plane: Plane, ns: str, name: str, pred, timeout: float = 30, what: str = "policy state"):
    def check():
        obj = get(plane, ns, "dependencypolicy", name)
        if obj is not None:
            obj.setdefault("status", {})  # not written yet: predicates read an empty status
        return obj if obj is not None and pred(obj) else None

    return wait_for(check, timeout, interval=0.2, what=f"{ns}/{name}: {what}")


def wait_deployment(plane: Plane, ns: str, name: str, pred, timeout: float = 30, what: str = "deployment state"):
    def check():
        obj = get(plane, ns, "deployment", name)
        return obj if obj is not None and pred(obj) else None

    return wait_for(check, timeout, interval=0.2, what=f"deployment {ns}/{name}: {what}")


def policy(name: str, target: str, preconditions: str) -> str:
    """A DependencyPolicy gating Deployment `target`; `preconditions` is the YAML list, unindented."""
    body = textwrap.indent(textwrap.dedent(preconditions).strip(), "      ")
    return f"""
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {{name: {name}}}
    spec:
      workloadRef: {{name: {target}}}
      preconditions:
{body}
    """


SETTINGS = "- name: settings\n  configMap: {name: app-config, keys: [redis.conf]}"


def deployment(name: str, *, init: str = "", labels: str = "", replicas: int = 1, sa: str = "") -> str:
    return f"""
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: {name}
      labels: {{app: {name}{labels}}}
    spec:
      replicas: {replicas}
      selector: {{matchLabels: {{app: {name}}}}}
      template:
        metadata: {{labels: {{app: {name}}}}}
        spec:
          {f"serviceAccountName: {sa}" if sa else ""}
          {f"initContainers: {init}" if init else ""}
          containers:
          - name: server
            image: node:20
            env: [{{name: REDIS_URL, value: "redis://data-tier:6379"}}]
    """


HELD_MESSAGE = "Timeout: Refused: connect to data-tier:6379: connection refused after 30s"


@contextlib.contextmanager
def held_pods(plane: Plane, core: Any, ns: str, replicas: int) -> Iterator[list[Any]]:
    """Deployment `app` gated by policy `app` (redis-port, then dns), its `replicas` pods on a node no
    kubelet (nor kwok) manages, shown held in depgate-redis-port: the test plays the kubelet through
    pods/status (restarted 3 times, last exit 124 with HELD_MESSAGE). Yields the pods; the node goes after."""
    node = f"held-{ns}"[:63]
    core.create_node({"metadata": {"name": node, "labels": {"type": "held"}}})
    try:
        # replicas 0 until gated: pods that no kubelet runs never finish a rolling update
        apply(plane, ns, deployment("app", replicas=0).replace(
            "containers:\n", f"nodeName: {node}\n          containers:\n", 1))
        apply(plane, ns, policy("app", "app", "- name: redis-port\n  tcp: {host: data-tier, port: 6379}\n"
                                              "- name: dns\n  dns: {name: data-tier}"))
        wait_deployment(plane, ns, "app", lambda d: init_names(d) == ["depgate-redis-port", "depgate-dns"])
        plane.run_kubectl("scale", "-n", ns, "deployment/app", f"--replicas={replicas}")

        def gated() -> list[Any] | None:
            pods = core.list_namespaced_pod(ns, label_selector="app=app").items
            pods = [p for p in pods if p.spec.init_containers and p.spec.init_containers[0].name.startswith("depgate-")]
            return pods if len(pods) == replicas else None

        pods = wait_for(gated, 60, what=f"{replicas} gated pods")
        for pod in pods:
            core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": {
                "phase": "Pending",
                "conditions": [{"type": "Initialized", "status": "False"}, {"type": "Ready", "status": "False"}],
                "initContainerStatuses": [
                    {"name": "depgate-redis-port", "image": "depgate/depgate:test", "imageID": "", "ready": False,
                     "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 124, "reason": "Error", "message": HELD_MESSAGE}}},
                    {"name": "depgate-dns", "image": "depgate/depgate:test", "imageID": "", "ready": False,
                     "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}},
                ],
            }})
        yield pods
    finally:
        core.delete_node(node)


@pytest.fixture
def restored_webhooks(plane: Plane, operator) -> Iterator[None]:
    """Whatever a test does to the webhook configurations' clientConfig (an operator of its own points
    them at itself, or at a hung listener), the session's operator serves them again after it."""
    saved = {kind: json.loads(plane.run_kubectl("get", kind, "depgate.io", "-o", "json").stdout)["webhooks"]
             for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")}
    yield
    for kind, hooks in saved.items():
        patch = [op for i, h in enumerate(hooks)
                 for op in ({"op": "test", "path": f"/webhooks/{i}/name", "value": h["name"]},
                            {"op": "replace", "path": f"/webhooks/{i}/clientConfig", "value": h["clientConfig"]})]
        plane.run_kubectl("patch", kind, "depgate.io", "--type=json", "-p", json.dumps(patch))
    wait_webhook_serves(plane)


# --- every version of every pod of a namespace (tests/integration/test_admission_workloads.py, test_pod_gates.py)


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when the watch delivered it
    type: str
    name: str
    uid: str
    owner: str
    inits: tuple[str, ...]
    gates: tuple[str, ...]
    node: str
    phase: str

    @property
    def ours(self) -> bool:
        return any(i.startswith("depgate-") for i in self.inits)

    @property
    def scheduled(self) -> bool:
        return bool(self.node) or self.phase in ("Running", "Succeeded", "Failed")


class PodWatch:
    """Every version of every pod of a namespace, from a resourceVersion listed before anything is
    created there."""

    def __init__(self, core: client.CoreV1Api, ns: str) -> None:
        self.core, self.ns = core, ns
        self.seen: list[Seen] = []
        self.rv = core.list_namespaced_pod(ns).metadata.resource_version
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                w = watch.Watch()
                for ev in w.stream(self.core.list_namespaced_pod, self.ns, resource_version=self.rv,
                                   timeout_seconds=2, allow_watch_bookmarks=True):
                    pod = ev["object"]
                    self.rv = pod.metadata.resource_version
                    if ev["type"] != "BOOKMARK":
                        owners = pod.metadata.owner_references or []
                        self.seen.append(Seen(
                            time.monotonic(), ev["type"], pod.metadata.name, pod.metadata.uid,
                            owners[0].kind if owners else "",
                            tuple(c.name for c in pod.spec.init_containers or []),
                            tuple(g.name for g in pod.spec.scheduling_gates or []),
                            pod.spec.node_name or "", (pod.status.phase if pod.status else "") or ""))
                    if self._stop.is_set():
                        w.stop()
        except BaseException as e:  # said by stop(): a watch that failed proves nothing
            self._error = e

    def versions(self, uid: str) -> list[Seen]:
        return [s for s in self.seen if s.uid == uid]

    def pods(self) -> dict[str, list[Seen]]:
        out: dict[str, list[Seen]] = {}
        for s in list(self.seen):
            out.setdefault(s.uid, []).append(s)
        return out

    def live(self) -> dict[str, Seen]:
        """The newest version of every pod not deleted."""
        return {uid: v[-1] for uid, v in self.pods().items() if v[-1].type != "DELETED"}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self._error is None, f"the pod watch failed: {self._error!r}"
