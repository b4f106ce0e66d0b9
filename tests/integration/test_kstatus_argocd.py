"""GitOps health of DependencyPolicies, computed by the real clients' own code, not a re-implementation.

- kstatus (Flux, kpt, cli-utils): the library sigs.k8s.io/cli-utils pkg/kstatus/status, pinned in
  operator/depgate/dev/tools/go.mod and compiled from its Go module into a tiny program (tools/kstatus,
  cached by depgate.dev.gotools like the plane) that reads the objects `kubectl get -o json` prints.
- Argo CD: argocd/resource_customizations/depgate.io/DependencyPolicy/health.lua under gopher-lua, the
  Lua Argo CD embeds, run the way Argo CD's controller runs a health customization (tools/argocdhealth:
  the global `obj`, the returned table's status and message, argocd-cm's default libraries):
  every case of its health_test.yaml (Argo CD's own test format), and the policies the real operator
  wrote on the plane: fresh, Ready, blocking, Stalled, a spec not yet observed, and a precondition
  whose waiter timed out (exit 124) in a pod that restarts it (Init:CrashLoopBackOff).
- DEPGATE_UPDATE_SNAPSHOTS=1 rewrites the health_test.yaml testdata taken from the plane (testdata/live-*.yaml).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from depgate.dev import build, gotools
from tests.conftest import REPO, Plane, wait_for
from tests.integration.kubehelp import (
    HELD_MESSAGE,
    apply,
    condition,
    deployment,
    entry,
    held_pods,
    init_names,
    policy,
    wait_deployment,
    wait_policy,
)

CUSTOMIZATION = REPO / "argocd" / "resource_customizations" / "depgate.io" / "DependencyPolicy"
HEALTH_LUA = CUSTOMIZATION / "health.lua"
HEALTH_TESTS = CUSTOMIZATION / "health_test.yaml"


@pytest.fixture(scope="module")
def tools() -> Path:
    try:
        return gotools.build_tools()
    except build.BuildError as e:
        pytest.fail(f"could not compile the test tools: {e}", pytrace=False)


def _run_tool(tools: Path, args: list[str], objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a tool on objects (as the List `kubectl get -o json` prints); one JSON answer per object."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
    out = subprocess.run([str(tools / args[0]), *args[1:]], input=body, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == len(objs), out.stdout
    return answers


def kstatus(tools: Path, objs: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    names = list(objs)
    got = _run_tool(tools, ["kstatus"], [objs[n] for n in names])
    return {n: (g["status"], g["message"]) for n, g in zip(names, got, strict=True)}


def argocd_health(tools: Path, objs: dict[str, dict[str, Any]], *,
                  open_libs: bool = False) -> dict[str, tuple[str, str]]:
    names = list(objs)
    args = ["argocdhealth", *(["-open-libs"] if open_libs else []), str(HEALTH_LUA)]
    got = _run_tool(tools, args, [objs[n] for n in names])
    return {n: (g["status"], g["message"]) for n, g in zip(names, got, strict=True)}


# ---------------------------------------------------------------------------------------------------
# the tools themselves, on objects whose answer is known from the libraries' own rules


def test_kstatus_is_the_library_not_a_reimplementation(tools):
    # a Deployment's type-specific rules and a ConfigMap's "always ready" exist only in the library
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n", "generation": 2},
           "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1,
                      "availableReplicas": 1}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}}
    got = kstatus(tools, {"dep": dep, "cm": cm})
    assert got["dep"] == ("InProgress", "Updated: 1/2")
    assert got["cm"] == ("Current", "Resource is always ready")


def test_argocdhealth_runs_like_argo_cd(tools, tmp_path):
    def run(script: str, *flags: str) -> subprocess.CompletedProcess[str]:
        f = tmp_path / "h.lua"
        f.write_text(script)
        return subprocess.run([str(tools / "argocdhealth"), *flags, str(f)], capture_output=True, text=True,
                              input='{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", '
                                    '"generation": 3}, "data": {"k": "v"}}', timeout=30, check=False)

    ok = run('return {status = "Healthy", message = obj.data.k .. tostring(obj.metadata.generation + 1)}')
    assert json.loads(ok.stdout) == {"status": "Healthy", "message": "v4"}
    # argocd-cm's default opens no string library; useOpenLibs does
    assert run('return {status = string.upper("healthy")}').returncode == 1
    assert json.loads(run('return {status = "Healthy", message = string.upper("x")}', "-open-libs").stdout) == {
        "status": "Healthy", "message": "X"}
    assert json.loads(run('return {status = "Fine"}').stdout) == {
        "status": "Unknown", "message": "Lua returned an invalid health status"}
    assert "expect table output" in run('return "Healthy"').stderr
    assert run("while true do end").returncode == 1  # Argo CD gives a script one second


# ---------------------------------------------------------------------------------------------------
# health_test.yaml: Argo CD's test format, every case


def _health_cases() -> list[dict[str, Any]]:
    return list(yaml.safe_load(HEALTH_TESTS.read_text())["tests"])


def test_health_test_yaml_covers_every_testdata_file():
    listed = {c["inputPath"] for c in _health_cases()}
    on_disk = {f"testdata/{p.name}" for p in (CUSTOMIZATION / "testdata").glob("*.yaml")}
    assert listed == on_disk
    assert {c["healthStatus"]["status"] for c in _health_cases()} == {"Progressing", "Degraded", "Healthy"}


@pytest.mark.parametrize("open_libs", [False, True], ids=["argocd-cm-default", "useOpenLibs"])
def test_every_health_test_yaml_case(tools, open_libs):
    cases = _health_cases()
    objs = {c["inputPath"]: yaml.safe_load((CUSTOMIZATION / c["inputPath"]).read_text()) for c in cases}
    got = argocd_health(tools, objs, open_libs=open_libs)
    want = {c["inputPath"]: (c["healthStatus"]["status"], c["healthStatus"]["message"]) for c in cases}
    assert got == want


# ---------------------------------------------------------------------------------------------------
# policies the real operator wrote


POLICY = textwrap.dedent("""
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {{name: {name}, namespace: {ns}}}
    spec:
      workloadRef: {{name: {target}}}
      preconditions:
      - name: settings
        configMap: {{name: {cm}}}
    """)


def _kubectl_json(plane: Plane, *args: str, input: str | None = None) -> dict[str, Any]:
    return dict(json.loads(plane.run_kubectl(*args, "-o", "json", input=input).stdout))


@pytest.fixture(scope="module")
def real_policies(plane: Plane, operator) -> Iterator[dict[str, dict[str, Any]]]:
    """DependencyPolicies in each state that matters to health checks, as the API server returns them
    with the status the real operator wrote."""
    ns = f"health-{uuid.uuid4().hex[:6]}"
    plane.run_kubectl("create", "namespace", ns)
    plane.run_kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=60s")
    apply(plane, ns, deployment("app"))
    apply(plane, ns, deployment("web"))
    apply(plane, ns, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n")
    got: dict[str, dict[str, Any]] = {}
    # fresh from the API server (the create's answer): the operator cannot have written a status yet
    got["fresh"] = _kubectl_json(plane, "create", "-f", "-",
                                 input=POLICY.format(name="healthy", ns=ns, target="app", cm="settings"))
    got["ready"] = wait_policy(plane, ns, "healthy", lambda p: condition(p, "Ready").get("status") == "True",
                               what="Ready")
    # a second policy on the same Deployment stalls (Conflict)
    apply(plane, ns, POLICY.format(name="second", ns=ns, target="app", cm="settings"))
    got["stalled"] = wait_policy(plane, ns, "second", lambda p: condition(p, "Stalled").get("status") == "True",
                                 what="Stalled")
    # blocking: a ConfigMap that does not exist yet
    apply(plane, ns, POLICY.format(name="blocked", ns=ns, target="web", cm="later"))
    got["blocking"] = wait_policy(plane, ns, "blocked",
                                  lambda p: (p.get("status") or {}).get("blocking") == ["settings"],
                                  what="blocking: [settings]")
    # the patch's answer right after a spec change: the operator cannot have observed it yet
    got["changed"] = _kubectl_json(plane, "patch", "dependencypolicy", "healthy", "-n", ns, "--type=merge",
                                   "-p", '{"spec": {"defaults": {"periodSeconds": 2}}}')
    generation = got["changed"]["metadata"]["generation"]
    got["caught_up"] = wait_policy(plane, ns, "healthy", lambda p: p["status"]["observedGeneration"] == generation
                                   and condition(p, "Ready").get("status") == "True"
                                   and condition(p, "Reconciling").get("status") == "False",
                                   what="the new generation observed, Ready")
    yield got
    plane.run_kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def timed_out(plane, api_client, operator, needs_pods, namespace) -> Iterator[dict[str, Any]]:
    """Policy `app` whose first precondition (tcp redis-port) timed out: its one pod's waiter exited 124
    and waits in CrashLoopBackOff (the test plays the kubelet, tests/integration/kubehelp.held_pods)."""
    from kubernetes import client

    with held_pods(plane, client.CoreV1Api(api_client), namespace, replicas=1):
        yield wait_policy(plane, namespace, "app", lambda p: entry(p, "redis-port").get("blockedPods") == 1
                          and entry(p, "redis-port").get("reason") == "Timeout",
                          what="redis-port blocking with the waiter's Timeout")


VERDICT_TIMEOUT = "Timeout: NotSatisfied: service data-tier: ServiceNotFound after 30s"


@pytest.fixture
def verdict_timed_out(plane, api_client, operator, needs_pods, namespace) -> Iterator[dict[str, Any]]:
    """Policy `app` with one precondition the operator judges (service data-tier, which does not exist): its
    2 pods' verdict waiters exited 124 and wait in CrashLoopBackOff (the test plays the kubelet on a node no
    kubelet nor kwok runs, as kubehelp.held_pods does)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    node = f"held-{namespace}"[:63]
    core.create_node({"metadata": {"name": node, "labels": {"type": "held"}}})
    try:
        apply(plane, namespace, deployment("app", replicas=0).replace(
            "containers:\n", f"nodeName: {node}\n          containers:\n", 1))
        apply(plane, namespace, policy("app", "app", "- name: data-tier\n  service: {name: data-tier}"))
        wait_deployment(plane, namespace, "app", lambda d: init_names(d) == ["depgate-data-tier"])
        plane.run_kubectl("scale", "-n", namespace, "deployment/app", "--replicas=2")

        def gated() -> list[Any] | None:
            pods = [p for p in core.list_namespaced_pod(namespace, label_selector="app=app").items
                    if p.spec.init_containers and p.spec.init_containers[0].name == "depgate-data-tier"]
            return pods if len(pods) == 2 else None

        for pod in wait_for(gated, 60, what="2 gated pods"):
            core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {
                "phase": "Pending",
                "conditions": [{"type": "Initialized", "status": "False"}, {"type": "Ready", "status": "False"}],
                "initContainerStatuses": [
                    {"name": "depgate-data-tier", "image": "depgate/depgate:test", "imageID": "", "ready": False,
                     "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 124, "reason": "Error", "message": VERDICT_TIMEOUT}}}],
            }})
        yield wait_policy(plane, namespace, "app", lambda p: entry(p, "data-tier").get("timedOutPods") == 2,
                          what="data-tier: timedOutPods 2")
    finally:
        core.delete_node(node)


def test_the_real_policies_are_in_the_states_the_health_checks_are_tested_on(real_policies):
    p = real_policies
    assert not (p["fresh"].get("status") or {}).get("conditions")
    assert condition(p["stalled"], "Stalled")["reason"] == "Conflict"
    assert condition(p["blocking"], "Ready")["status"] == "False"
    assert condition(p["blocking"], "Stalled")["status"] == "False"
    assert condition(p["blocking"], "Reconciling")["status"] == "False"
    assert p["changed"]["metadata"]["generation"] == p["ready"]["metadata"]["generation"] + 1
    assert p["changed"]["status"]["observedGeneration"] == p["ready"]["metadata"]["generation"]


def test_real_kstatus_reads_the_real_policies(tools, real_policies):
    # Flux's, kpt's and cli-utils' view: kstatus reads Ready (since cli-utils v0.7.0), so a blocking
    # policy is InProgress, not Current (docs/operations.md, "Health of DependencyPolicies")
    got = kstatus(tools, real_policies)
    assert {k: v[0] for k, v in got.items()} == {
        "fresh": "Current", "ready": "Current", "stalled": "Failed", "blocking": "InProgress",
        "changed": "InProgress", "caught_up": "Current"}
    assert got["blocking"][1] == condition(real_policies["blocking"], "Ready")["message"]
    assert got["stalled"][1] == condition(real_policies["stalled"], "Stalled")["message"]
    assert got["changed"][1].startswith("DependencyPolicy generation is 2, but latest observed generation is 1")


def test_argocd_health_lua_reads_the_real_policies(tools, real_policies):
    health = argocd_health(tools, real_policies)
    assert {k: v[0] for k, v in health.items()} == {
        "fresh": "Progressing", "ready": "Healthy", "stalled": "Degraded", "blocking": "Progressing",
        "changed": "Progressing", "caught_up": "Healthy"}
    assert health["stalled"][1].startswith("Conflict: ")
    assert health["blocking"][1].startswith("PreconditionsBlocking: settings is Blocking: ")
    assert health["changed"][1] == "depgate has not observed generation 2 yet (observedGeneration: 1)"
    _update_testdata({f"live-{k}": v for k, v in real_policies.items()})


def test_a_waiter_that_timed_out_and_restarts_is_degraded_in_argo_cd(tools, timed_out):
    # issue 16, item 8: exit 124, Init:CrashLoopBackOff is not "Progressing"
    status, message = argocd_health(tools, {"app": timed_out})["app"]
    assert status == "Degraded"
    assert message == ("precondition redis-port timed out (exit 124) in a pod, which restarts its init container "
                       f"depgate-redis-port (Init:CrashLoopBackOff): {HELD_MESSAGE}")
    # kstatus has no word for it: Ready is False, so InProgress
    assert kstatus(tools, {"app": timed_out})["app"][0] == "InProgress"
    _update_testdata({"live-timed-out": timed_out})


def test_a_verdict_waiter_that_timed_out_and_restarts_is_degraded_in_argo_cd(tools, verdict_timed_out):
    # the operator judges a service precondition itself, so its entry's reason is the verdict's; the pods'
    # timeouts show in timedOutPods
    e = entry(verdict_timed_out, "data-tier")
    assert (e["state"], e["blockedPods"], e["timedOutPods"]) == ("Blocking", 2, 2)
    status, message = argocd_health(tools, {"app": verdict_timed_out})["app"]
    assert status == "Degraded"
    assert message == ("precondition data-tier timed out (exit 124) in 2 pods, which restart its init container "
                       f"depgate-data-tier (Init:CrashLoopBackOff): {e['reason']}: {e['message']}")
    assert kstatus(tools, {"app": verdict_timed_out})["app"][0] == "InProgress"


# ---------------------------------------------------------------------------------------------------


def _normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """A live policy as testdata: no server bookkeeping, the test's namespace as `shop`."""
    md = obj["metadata"]
    ns = md.get("namespace", "")
    keep = {k: md[k] for k in ("name", "namespace", "generation") if k in md}
    text = json.dumps({**obj, "metadata": {**keep, "namespace": "shop"}})
    return dict(json.loads(text.replace(ns, "shop") if ns else text))


def _update_testdata(objs: dict[str, dict[str, Any]]) -> None:
    if os.environ.get("DEPGATE_UPDATE_SNAPSHOTS") != "1":
        return
    for name, obj in objs.items():
        (CUSTOMIZATION / "testdata" / f"{name}.yaml").write_text(
            yaml.safe_dump(_normalised(obj), sort_keys=False, width=120))
