"""Every pod-template kind a policy can target, on the real plane (pods by kube-controller-manager's
controllers and kwok): StatefulSets, DaemonSets and CronJobs are gated by the reconcile exactly like
Deployments (server-side apply of depgate's entries, no rollout without a real change, released on
delete); a Job is gated only when it is created (its pod template cannot change): one created
before its policy is reported, never patched.

kwok marks every init container done at once, so "held" is shown the way tests/integration/kubehelp.py's
held_pods does it: the pods sit on a node no kubelet (nor kwok) manages and the test writes their
init-container status, as a kubelet would, through pods/status.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from depgate import registry
from tests.conftest import Plane, wait_for
from tests.integration.kubehelp import apply, entry, get, wait_policy

OURS = ["depgate-cache", "depgate-settings"]
PRECONDITIONS = """
  preconditions:
  - name: cache
    tcp: {host: cache, port: 6379}
  - name: settings
    configMap: {name: settings, keys: [mode]}
"""


def policy(name: str, target: str) -> str:
    return f"""
apiVersion: depgate.io/v1alpha1
kind: DependencyPolicy
metadata: {{name: {name}}}
spec:
  {target}
{PRECONDITIONS}"""


def pod_spec(node: str = "") -> str:
    return f"""
      {f"nodeName: {node}" if node else ""}
      containers:
      - {{name: main, image: registry.example/app:1}}"""


def statefulset(name: str, *, node: str = "", strategy: str = "RollingUpdate", replicas: int = 1) -> str:
    return f"""
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, labels: {{tier: data}}}}
spec:
  serviceName: {name}
  replicas: {replicas}
  updateStrategy: {{type: {strategy}}}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:{pod_spec(node)}
"""


def daemonset(name: str) -> str:
    return f"""
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {name}, labels: {{tier: agents}}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      tolerations: [{{operator: Exists}}]{pod_spec()}
"""


def cronjob(name: str) -> str:
    return f"""
apiVersion: batch/v1
kind: CronJob
metadata: {{name: {name}}}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {{name: main, image: registry.example/report:1}}
"""


def job(name: str) -> str:
    return f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  template:
    spec:
      restartPolicy: Never{pod_spec()}
"""


def inits(obj: dict[str, Any] | None) -> list[str]:
    return [c["name"] for c in (registry.pod_template(obj or {}).get("spec") or {}).get("initContainers") or []]


def wait_obj(plane: Plane, ns: str, kind: str, name: str, pred, timeout: float = 30, what: str = "") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = get(plane, ns, kind, name)
        return obj if obj is not None and pred(obj) else None

    return wait_for(check, timeout, interval=0.2, what=f"{kind} {ns}/{name}: {what}")


def target(pol: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    return next((t for t in (pol.get("status") or {}).get("targets") or []
                 if t.get("kind") == kind and t.get("name") == name), {})


def pods_of(plane: Plane, ns: str, selector: str) -> list[dict[str, Any]]:
    import json

    return list(json.loads(plane.run_kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)["items"])


@pytest.fixture
def held_node(plane: Plane) -> Iterator[str]:
    """A node no kubelet nor kwok manages: pods bound to it keep the status the test writes."""
    import uuid

    name = f"held-{uuid.uuid4().hex[:8]}"
    plane.run_kubectl("create", "-f", "-", input=f'{{"apiVersion": "v1", "kind": "Node", '
                                                  f'"metadata": {{"name": "{name}", "labels": {{"type": "held"}}}}}}')
    yield name
    plane.run_kubectl("delete", "node", name, "--wait=false", check=False)


def hold(plane: Plane, ns: str, pod: str, on: str) -> None:
    """Write the pod's status as a kubelet whose init container `on` keeps failing would."""
    import json

    status = {"status": {
        "phase": "Pending",
        "conditions": [{"type": "Initialized", "status": "False"}, {"type": "Ready", "status": "False"}],
        "initContainerStatuses": [
            {"name": n, "image": "depgate/depgate:test", "imageID": "", "ready": False, "restartCount": 2 if n == on
             else 0, "state": {"waiting": {"reason": "CrashLoopBackOff" if n == on else "PodInitializing"}},
             **({"lastState": {"terminated": {"exitCode": 124, "reason": "Error",
                                              "message": "Timeout: Refused: connect to cache:6379 after 30s"}}}
                if n == on else {})}
            for n in OURS],
    }}
    plane.run_kubectl("patch", "-n", ns, "pod", pod, "--subresource=status", "--type=merge", "-p", json.dumps(status))


def test_a_statefulset_is_gated_held_per_target_and_released(plane, operator, needs_pods, namespace, held_node):
    # replicas 0 until gated: a pod no kubelet runs never becomes Ready, and a StatefulSet's rolling
    # update waits for that before it replaces it
    apply(plane, namespace, statefulset("db", node=held_node, replicas=0))
    apply(plane, namespace, policy("db", "workloadRef: {kind: StatefulSet, name: db}"))
    sts = wait_obj(plane, namespace, "statefulset", "db", lambda o: inits(o) == OURS, what="depgate's init containers")
    assert sts["metadata"]["annotations"]["depgate.io/policy"] == "db"
    plane.run_kubectl("scale", "-n", namespace, "statefulset/db", "--replicas=1")
    # the StatefulSet controller makes its pod from the gated template (db-0, on the held node)
    wait_for(lambda: [p for p in pods_of(plane, namespace, "app=db")
                      if [c["name"] for c in p["spec"].get("initContainers") or []] == OURS],
             60, what="db-0 with the init containers")
    hold(plane, namespace, "db-0", "depgate-cache")
    pol = wait_policy(plane, namespace, "db", lambda p: target(p, "StatefulSet", "db").get("blockedOn") == ["cache"],
                      timeout=60, what="the StatefulSet's pod held on cache, said per target")
    t = target(pol, "StatefulSet", "db")
    assert t["pods"] == {"total": 1, "initializing": 1, "ready": 0}
    assert pol["status"]["targetSummary"] == "sts/db"
    assert entry(pol, "cache")["state"] == "Blocking" and entry(pol, "cache")["reason"] == "Timeout"
    assert entry(pol, "settings")["state"] == "Blocking"  # judged by the operator: no ConfigMap yet
    generation = get(plane, namespace, "statefulset", "db")["metadata"]["generation"]

    # met: the operator's verdict flips as soon as the ConfigMap holds the key
    apply(plane, namespace, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n")
    wait_policy(plane, namespace, "db", lambda p: entry(p, "settings").get("state") == "Satisfied",
                what="settings Satisfied")
    # no rollout without a real change: the reconciles since wrote nothing to the StatefulSet's template
    assert get(plane, namespace, "statefulset", "db")["metadata"]["generation"] == generation

    plane.run_kubectl("delete", "-n", namespace, "dependencypolicy", "db", "--timeout=60s")
    wait_obj(plane, namespace, "statefulset", "db", lambda o: inits(o) == [] and
             "depgate.io/policy" not in (o["metadata"].get("annotations") or {}), what="released")


def test_an_on_delete_statefulset_says_its_old_pods_stay_ungated(plane, operator, namespace):
    apply(plane, namespace, statefulset("legacy", strategy="OnDelete", replicas=0))
    apply(plane, namespace, policy("legacy", "workloadRef: {kind: StatefulSet, name: legacy}"))
    pol = wait_policy(plane, namespace, "legacy", lambda p: "note" in target(p, "StatefulSet", "legacy"),
                      what="the OnDelete note")
    assert "updateStrategy OnDelete" in target(pol, "StatefulSet", "legacy")["note"]
    assert inits(get(plane, namespace, "statefulset", "legacy")) == OURS


def test_a_selector_of_daemonsets_gates_them_and_counts_their_pods(plane, operator, needs_pods, namespace):
    apply(plane, namespace, daemonset("agent"))
    apply(plane, namespace, policy("agents", "selector: {kinds: [DaemonSet], matchLabels: {tier: agents}}"))
    wait_obj(plane, namespace, "daemonset", "agent", lambda o: inits(o) == OURS, what="depgate's init containers")

    def counted(p: dict[str, Any]) -> bool:
        t = target(p, "DaemonSet", "agent")
        pods = pods_of(plane, namespace, "app=agent")
        gated = [x for x in pods if [c["name"] for c in x["spec"].get("initContainers") or []] == OURS]
        return bool(pods) and len(gated) == len(pods) and (t.get("pods") or {}).get("total") == len(pods)

    pol = wait_policy(plane, namespace, "agents", counted, timeout=90, what="every DaemonSet pod gated and counted")
    assert pol["status"]["targetSummary"] == "ds/agent"


def test_a_cronjob_is_gated_and_the_jobs_it_creates_carry_the_init_containers(plane, operator, needs_pods,
                                                                               namespace):
    apply(plane, namespace, cronjob("nightly"))
    apply(plane, namespace, policy("nightly", "workloadRef: {kind: CronJob, name: nightly}"))
    wait_obj(plane, namespace, "cronjob", "nightly", lambda o: inits(o) == OURS, what="init containers in jobTemplate")
    # a Job the CronJob makes (kubectl create job --from sets the CronJob as its controller)
    plane.run_kubectl("create", "job", "-n", namespace, "nightly-manual", "--from=cronjob/nightly")
    made = get(plane, namespace, "job", "nightly-manual")
    assert inits(made) == OURS
    # and the Job controller makes its pod from it (kwok then runs it to completion at once)
    wait_for(lambda: [p for p in pods_of(plane, namespace, "job-name=nightly-manual")
                      if [c["name"] for c in p["spec"].get("initContainers") or []] == OURS],
             60, what="the Job's pod with the init containers")
    pol = wait_policy(plane, namespace, "nightly", lambda p: p["status"].get("targetSummary") == "cj/nightly",
                      what="the CronJob named in status")
    assert target(pol, "CronJob", "nightly")["pods"]["initializing"] == 0
    plane.run_kubectl("delete", "-n", namespace, "dependencypolicy", "nightly", "--timeout=60s")
    wait_obj(plane, namespace, "cronjob", "nightly", lambda o: inits(o) == [], what="released")


def test_a_job_created_before_its_policy_is_reported_never_patched(plane, operator, namespace):
    apply(plane, namespace, job("migrate"))
    before = get(plane, namespace, "job", "migrate")
    apply(plane, namespace, policy("migrate", "workloadRef: {kind: Job, name: migrate}"))
    pol = wait_policy(plane, namespace, "migrate", lambda p: "note" in target(p, "Job", "migrate"),
                      what="the ungated Job named in status")
    assert "pods run ungated" in target(pol, "Job", "migrate")["note"]
    after = get(plane, namespace, "job", "migrate")
    assert inits(after) == [] == inits(before)
    assert "depgate.io/policy" not in (after["metadata"].get("annotations") or {})
    assert "depgate" not in {m.get("manager") for m in after["metadata"].get("managedFields") or []}  # never written


def held_workload(kind: str, node: str) -> tuple[str, str, str]:
    """(manifest, the policy's target, the label selector of its pods) of a `kind` whose pods land on
    the node no kwok manages."""
    if kind == "DaemonSet":  # tolerates the held node's taints; the DaemonSet controller places a pod there
        return (f"""
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: [
        {{matchFields: [{{key: metadata.name, operator: In, values: [{node}]}}]}}]}}}}}}
      tolerations: [{{operator: Exists}}]
      containers:
      - {{name: main, image: registry.example/agent:1}}
""", "workloadRef: {kind: DaemonSet, name: agent}", "app=agent")
    if kind == "CronJob":
        return (f"""
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly}}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          nodeName: {node}
          containers:
          - {{name: main, image: registry.example/report:1}}
""", "workloadRef: {kind: CronJob, name: nightly}", "job-name=nightly-29000000")
    return (f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: migrate}}
spec:
  template:
    spec:
      restartPolicy: Never
      nodeName: {node}
      containers:
      - {{name: main, image: registry.example/app:1}}
""", "workloadRef: {kind: Job, name: migrate}", "job-name=migrate")


@pytest.mark.parametrize("kind", ["DaemonSet", "CronJob", "Job"])
def test_each_kind_is_held_in_init_per_target_and_released_when_the_precondition_is_met(
        plane, operator, needs_pods, namespace, held_node, kind):
    """A DaemonSet's pod, a pod of a Job its CronJob makes, and a Job created after its policy (rendered
    at admission): held in depgate-cache (the test writes the pod's status as a kubelet would), the
    policy's status names the blocker for that target; the ConfigMap key appearing satisfies the
    operator-judged precondition."""
    manifest, ref, selector = held_workload(kind, held_node)
    name = ref.rsplit(" ", 1)[1].rstrip("}")
    apply(plane, namespace, policy("p", ref))
    wait_policy(plane, namespace, "p", lambda p: bool(p["status"].get("conditions")), what="reconciled once")
    apply(plane, namespace, manifest)
    if kind == "CronJob":  # the Job its controller would make at 03:00, made now (its controller: the CronJob)
        wait_obj(plane, namespace, "cronjob", name, lambda o: inits(o) == OURS, what="init containers in jobTemplate")
        plane.run_kubectl("create", "job", "-n", namespace, "nightly-29000000", "--from=cronjob/nightly")
    pod = wait_for(lambda: next((p for p in pods_of(plane, namespace, selector)
                                 if [c["name"] for c in p["spec"].get("initContainers") or []] == OURS), None),
                   90, what=f"the {kind}'s pod with depgate's init containers")
    hold(plane, namespace, pod["metadata"]["name"], "depgate-cache")
    pol = wait_policy(plane, namespace, "p", lambda p: target(p, kind, name).get("blockedOn") == ["cache"],
                      timeout=60, what=f"the {kind}'s pod held on cache, said for that target")
    assert target(pol, kind, name)["pods"]["initializing"] == 1
    assert entry(pol, "cache")["state"] == "Blocking" and entry(pol, "cache")["timedOutPods"] == 1
    apply(plane, namespace, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n")
    wait_policy(plane, namespace, "p", lambda p: entry(p, "settings").get("state") == "Satisfied",
                what="settings Satisfied")
