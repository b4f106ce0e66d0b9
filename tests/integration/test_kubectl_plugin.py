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
from pathlib import Path

import pytest

from tests.conftest import Plane
from tests.integration.kubehelp import entry, held_pods, wait_policy

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
