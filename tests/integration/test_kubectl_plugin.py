"""`kubectl depgate` through the real kubectl's plugin mechanism, on the plane, with pods really held in Init.

The executable is the package's console script `kubectl-depgate` (pyproject.toml [project.scripts]): the
test puts the directory pip installed it in first on PATH, and only kubectl is run, as a user runs it.
The pods sit on a node no kubelet (nor kwok) manages, and the test plays the kubelet through pods/status,
as tests/integration/test_status.py does: so the operator sees a pod in CrashLoopBackOff in depgate's first
init container, and `kubectl logs` has no kubelet to ask (the plugin must say so, not fail).
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Plane, wait_for
from tests.integration import test_kinds as kinds
from tests.integration.kubehelp import apply, entry, held_pods, wait_policy
from tests.integration.test_graph_picture import svg_graph

SCRIPTS = Path(sysconfig.get_path("scripts"))
PLUGIN = SCRIPTS / "kubectl-depgate"


def kubectl(plane: Plane, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with the plugin's directory and the system's on PATH (no other plugin of this machine) and the
    plane in $KUBECONFIG (kubectl passes every argument after a plugin's name to the plugin, so kubectl's own
    flags cannot go before it)."""
    env = {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.defpath}", "KUBECONFIG": plane.kubeconfig}
    return subprocess.run([plane.kubectl, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def plugin() -> Path:
    if not PLUGIN.exists():
        pytest.fail(f"{PLUGIN} is missing: the package is installed without its console scripts "
                    "(pip install -e . installs kubectl-depgate)", pytrace=False)
    return PLUGIN


def test_kubectl_plugin_list_finds_it(plane, plugin):
    out = kubectl(plane, "plugin", "list")
    assert out.returncode == 0, out.stderr
    assert str(plugin) in out.stdout.splitlines(), out.stdout
    assert "kubectl-depgate" not in out.stderr, out.stderr  # no warning about it (not executable, overshadowed)


@pytest.fixture
def held(plane, api_client, operator, namespace):
    """Deployment `app` gated by policy `app` (redis-port, then dns); its one pod held in depgate-redis-port."""
    from kubernetes import client

    with held_pods(plane, client.CoreV1Api(api_client), namespace, replicas=1) as (pod,):
        wait_policy(plane, namespace, "app", lambda p: entry(p, "redis-port").get("blockedPods") == 1,
                    what="the pod counted as blocked")
        yield pod.metadata.name


def test_why_pod_and_deploy_name_the_init_container_policy_precondition_and_say_logs_are_unavailable(
        plane, plugin, held, namespace):
    why = kubectl(plane, "depgate", "why", f"pod/{held}", "-n", namespace)
    print(why.stdout)  # the README's sample output
    assert why.returncode == 0, why.stderr
    lines = why.stdout.splitlines()
    assert lines[0] == f"pod {namespace}/{held} is Init:0/2, on init container depgate-redis-port (1 of 2)"
    assert f"  policy:        {namespace}/app (gates deploy/app)" in lines
    assert "  precondition:  redis-port (tcp)" in lines
    state = next(line for line in lines if line.startswith("  state:"))
    assert state.startswith("  state:         Blocking since 20") and " ago)" in state
    assert "  reason:        Timeout" in lines
    assert "  message:       Refused: connect to data-tier:6379: connection refused after 30s" in lines
    assert "  in this pod:   waiting (CrashLoopBackOff); restarted 3 times; last exit 124" in lines
    assert "  then:          depgate-dns" in lines
    # no kubelet behind the node: the API server cannot fetch the log, and the plugin says why in one line
    assert lines[-1].startswith("logs of depgate-redis-port: unavailable (the API server answered "), lines[-1]

    deploy = kubectl(plane, "depgate", "why", "deploy/app", "-n", namespace)
    assert deploy.returncode == 0, deploy.stderr
    assert deploy.stdout.startswith(f"deployment {namespace}/app: gated by policy {namespace}/app; "
                                    "1 pod, 1 held in depgate's init containers\n"), deploy.stdout
    assert f"pod {namespace}/{held} is Init:0/2, on init container depgate-redis-port" in deploy.stdout

    # kubectl's --kubeconfig after the plugin's name reaches the plugin too; a missing pod is an error
    missing = kubectl(plane, "depgate", "why", "pod/nope", "-n", namespace, f"--kubeconfig={plane.kubeconfig}")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f'Error from server (NotFound): pods "nope" not found in namespace {namespace}'


def test_status_is_a_table_across_namespaces(plane, plugin, held, namespace):
    out = kubectl(plane, "depgate", "status")
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "POLICY", "TARGETS", "READY", "BLOCKING", "BLOCKED-FOR", "PODS", "REASON"]
    mine = next(r.split() for r in rows if r.startswith(namespace + " "))
    assert mine[:5] == [namespace, "app", "deploy/app", "False", "redis-port"]
    assert mine[6:] == ["0/1", "ready,", "1", "in", "init", "PreconditionsBlocking"], mine
    per = kubectl(plane, "depgate", "status", "-n", namespace, "--preconditions")
    assert per.returncode == 0, per.stderr
    rows = [r.split() for r in per.stdout.splitlines()[1:]]
    assert [[*r[:5], r[6]] for r in rows] == [[namespace, "app", "redis-port", "tcp", "Blocking", "1"],
                                             [namespace, "app", "dns", "dns", "Pending", "0"]], per.stdout


# --------------------------------------------------------------------------- every gated kind (issue 20)


@pytest.fixture
def held_node(plane) -> Iterator[str]:
    """A node no kubelet nor kwok manages: pods bound to it keep the status the test writes."""
    import uuid

    name = f"held-{uuid.uuid4().hex[:8]}"
    plane.run_kubectl("create", "-f", "-", input=f'{{"apiVersion": "v1", "kind": "Node", '
                                                  f'"metadata": {{"name": "{name}", "labels": {{"type": "held"}}}}}}')
    yield name
    plane.run_kubectl("delete", "node", name, "--wait=false", check=False)


def _cronjob(name: str, node: str) -> str:
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
          nodeName: {node}
          containers:
          - {{name: main, image: registry.example/report:1}}
"""


def _gated_pod(plane, ns: str, selector: str) -> str:
    def found() -> str | None:
        pods = [p for p in kinds.pods_of(plane, ns, selector)
                if [c["name"] for c in p["spec"].get("initContainers") or []] == kinds.OURS]
        return pods[0]["metadata"]["name"] if pods else None

    return wait_for(found, 60, what=f"a pod ({selector}) with depgate's init containers")


def test_why_sts_cj_job_and_a_cron_jobs_pod_name_the_policy_and_precondition(plane, plugin, operator, needs_pods,
                                                                           namespace, held_node):
    apply(plane, namespace, kinds.statefulset("db", node=held_node, replicas=0))
    apply(plane, namespace, kinds.policy("db", "workloadRef: {kind: StatefulSet, name: db}"))
    kinds.wait_obj(plane, namespace, "statefulset", "db", lambda o: kinds.inits(o) == kinds.OURS, what="rendered")
    plane.run_kubectl("scale", "-n", namespace, "statefulset/db", "--replicas=1")
    apply(plane, namespace, _cronjob("nightly", held_node))
    apply(plane, namespace, kinds.policy("nightly", "workloadRef: {kind: CronJob, name: nightly}"))
    kinds.wait_obj(plane, namespace, "cronjob", "nightly", lambda o: kinds.inits(o) == kinds.OURS, what="rendered")
    # named as the CronJob controller names its Jobs (<cronjob>-<minutes>: plan.cron_job_of), which is how the
    # operator counts a Job's pods for its CronJob; kubectl create job --from sets the CronJob as its controller
    plane.run_kubectl("create", "job", "-n", namespace, "nightly-29412345", "--from=cronjob/nightly")
    sts_pod = _gated_pod(plane, namespace, "app=db")
    job_pod = _gated_pod(plane, namespace, "job-name=nightly-29412345")
    for pod in (sts_pod, job_pod):
        kinds.hold(plane, namespace, pod, "depgate-cache")
    for name, kind, target in (("db", "StatefulSet", "db"), ("nightly", "CronJob", "nightly")):
        wait_policy(plane, namespace, name, lambda p, k=kind, t=target: kinds.target(p, k, t).get("blockedOn")
                    == ["cache"], timeout=60, what=f"{kind} {target}'s pod counted as held on cache")

    sts = kubectl(plane, "depgate", "why", "sts/db", "-n", namespace)
    print(sts.stdout)  # the README's sample output
    assert sts.returncode == 0, sts.stderr
    assert sts.stdout.startswith(f"statefulset {namespace}/db: gated by policy {namespace}/db; 1 pod, 1 held in "
                                 "depgate's init containers\n"), sts.stdout
    lines = sts.stdout.splitlines()
    assert f"pod {namespace}/{sts_pod} is Init:0/2, on init container depgate-cache (1 of 2)" in lines
    assert f"  policy:        {namespace}/db (gates sts/db)" in lines
    assert "  precondition:  cache (tcp)" in lines
    assert "  in this pod:   waiting (CrashLoopBackOff); restarted 2 times; last exit 124" in lines
    assert "  then:          depgate-settings" in lines

    cj = kubectl(plane, "depgate", "why", "cj/nightly", "-n", namespace)
    print(cj.stdout)
    assert cj.returncode == 0, cj.stderr
    assert cj.stdout.startswith(f"cronjob {namespace}/nightly: gated by policy {namespace}/nightly; 1 job, 1 pod, "
                                "1 held in depgate's init containers\n"), cj.stdout
    assert f"pod {namespace}/{job_pod} is Init:0/2, on init container depgate-cache (1 of 2)" in cj.stdout
    assert f"  policy:        {namespace}/nightly (gates cj/nightly)\n" in cj.stdout
    # the Job's pod and the Job: neither claims a policy, the CronJob that made the Job does
    pod = kubectl(plane, "depgate", "why", f"pod/{job_pod}", "-n", namespace)
    assert pod.returncode == 0, pod.stderr
    assert f"  policy:        {namespace}/nightly (gates cj/nightly)\n  precondition:  cache (tcp)\n" in pod.stdout
    job = kubectl(plane, "depgate", "why", "job.batch/nightly-29412345", "-n", namespace)
    assert job.stdout.startswith(f"job {namespace}/nightly-29412345: gated by policy {namespace}/nightly; 1 pod, "
                                 "1 held"), job.stdout + job.stderr
    # kubectl depgate graph: the picture, with the blocked edges red (status.blocking: no ConfigMap settings yet)
    svg = subprocess.run([plane.kubectl, "depgate", "graph", "-n", namespace, "-o", "svg"], capture_output=True,
                         timeout=60, check=False, env={**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.defpath}",
                                                       "KUBECONFIG": plane.kubeconfig})
    assert svg.returncode == 0, svg.stderr.decode()
    nodes, edges = svg_graph(svg.stdout)
    assert {f"{namespace}/StatefulSet/db", f"{namespace}/CronJob/nightly", f"{namespace}/ConfigMap/settings"} <= nodes
    for kind, name in (("StatefulSet", "db"), ("CronJob", "nightly")):
        assert edges[(f"{namespace}/{kind}/{name}", f"{namespace}/ConfigMap/settings")]["stroke"] == "red"
    missing = kubectl(plane, "depgate", "why", "ds/nope", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f'Error from server (NotFound): daemonsets.apps "nope" not found in namespace '
                                      f"{namespace}")
