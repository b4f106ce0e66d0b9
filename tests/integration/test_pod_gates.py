"""Workload first, policy a moment later (issue 15; Argo CD applies built-in kinds before custom
resources, Helm installs unknown kinds last): in a namespace labelled depgate.io/gate=enabled every pod
a workload controller creates is held at depgate's scheduling gate (the webhook pods.depgate.io, through
the real kube-apiserver admission chain) until it carries depgate's init containers, or until the grace
window has passed with no policy gating its workload. Pods come from kube-controller-manager, the
scheduler and kwok (which marks a pod Running once it is scheduled). A watch on every pod of the
namespace, from a list's resourceVersion, checks that none was ever scheduled without depgate's init
containers."""

from __future__ import annotations

import json
import os
import signal
import statistics
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from depgate import gates
from tests.conftest import Plane, start_operator, stop_operator, wait_for
from tests.integration.kubehelp import PodWatch, Seen, get, restored_webhooks, wait_policy  # noqa: F401 (a fixture)

GATE = gates.GATE
TCP = "- name: db\n  tcp: {host: db, port: 5432}"


def deployment(name: str, replicas: int = 1, min_ready: int = 0) -> str:
    return textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}, labels: {{app: {name}}}}}
        spec:
          replicas: {replicas}
          minReadySeconds: {min_ready}
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              containers: [{{name: server, image: node:20}}]
        """)


def job(name: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: batch/v1
        kind: Job
        metadata: {{name: {name}}}
        spec:
          template:
            spec:
              restartPolicy: Never
              containers: [{{name: migrate, image: node:20}}]
        """)


def policy(name: str, kind: str, target: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: depgate.io/v1alpha1
        kind: DependencyPolicy
        metadata: {{name: {name}}}
        spec:
          workloadRef: {{kind: {kind}, name: {target}}}
          preconditions:
        """) + textwrap.indent(TCP, "  ") + "\n"


def assert_never_scheduled_without_init_containers(w: PodWatch) -> None:
    bad = [s for s in list(w.seen) if s.scheduled and not s.ours]
    assert not bad, f"pods were scheduled without depgate's init containers: {bad}"


@pytest.fixture
def core(api_client) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def opted_in(plane: Plane, namespace: str) -> str:
    plane.run_kubectl("label", "namespace", namespace, f"{gates.OPT_IN_LABEL}={gates.OPT_IN_VALUE}")
    return namespace


@pytest.fixture
def pod_watch(core, namespace) -> Iterator[PodWatch]:
    w = PodWatch(core, namespace)
    yield w
    w.stop()


def gated_pods(w: PodWatch, n: int, what: str) -> dict[str, Seen]:
    """Wait for n pods held at depgate's gate (never scheduled)."""
    def held() -> dict[str, Seen] | None:
        found = {uid: s for uid, s in w.live().items() if GATE in s.gates}
        return found if len(found) >= n else None

    return wait_for(held, 60, what=what)


# --------------------------------------------------------------------------- the Argo CD order


def test_workload_first_policy_a_moment_later_no_pod_is_scheduled_before_its_init_containers_exist(
        plane, operator, opted_in, needs_pods, pod_watch):
    ns = opted_in
    # minReadySeconds: the rollout keeps the first pods well past the grace window (a rendered pod counts
    # as available 8 s after it is Ready), so that they must be held, not merely replaced in time
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=deployment("app", replicas=2, min_ready=8))
    first = gated_pods(pod_watch, 2, "the Deployment's first pods, held at depgate's scheduling gate")
    assert all(not s.ours for s in first.values())  # rendered before any policy: no init containers
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("app", "Deployment", "app"))

    def rolled() -> dict[str, Seen] | None:
        live = pod_watch.live()
        done = [s for s in live.values() if s.ours and s.phase == "Running" and not s.gates]
        return live if len(done) == 2 and len(live) == 2 else None

    final = wait_for(rolled, 120, what="the rollout: 2 Running pods with depgate's init containers, nothing else")
    assert not set(first) & set(final)  # the held first pods were replaced, not let go
    grace = 5.0  # --gate-grace-seconds' default (the session's operator runs with it)
    for uid in first:  # ... and never scheduled: held past the grace window, then deleted from the gate
        versions = pod_watch.versions(uid)
        assert versions[-1].type == "DELETED" and all(GATE in s.gates and not s.scheduled for s in versions)
        assert versions[-1].at - versions[0].at > grace + 1, "replaced within the grace window: nothing was held"
    # the rendered pods carried their init containers from creation, so they were never gated at all
    assert all(GATE not in s.gates for uid in final for s in pod_watch.versions(uid))
    assert_never_scheduled_without_init_containers(pod_watch)


def statefulset(name: str, replicas: int = 2) -> str:
    return textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {{name: {name}, labels: {{app: {name}}}}}
        spec:
          replicas: {replicas}
          serviceName: {name}
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              containers: [{{name: server, image: redis:7}}]
        """)


def test_a_statefulset_first_then_its_policy_its_held_first_pod_is_replaced_by_a_gated_one(
        plane, operator, opted_in, needs_pods, pod_watch):
    """OrderedReady (the default): the StatefulSet controller waits for db-0 to be Ready before it does
    anything else, rollouts included, so a held db-0 would stop it for good; depgate deletes a held pod
    of a StatefulSet whose current revision carries the init containers (it never ran: no container
    started), and the controller makes it again from that revision."""
    ns = opted_in
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=statefulset("db"))
    first = gated_pods(pod_watch, 1, "db-0 at depgate's scheduling gate")
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("db", "StatefulSet", "db"))

    def rolled() -> dict[str, Seen] | None:
        live = pod_watch.live()
        done = [s for s in live.values() if s.ours and s.phase == "Running" and not s.gates]
        return live if len(done) == 2 and len(live) == 2 else None

    final = wait_for(rolled, 120, what="db-0 and db-1 Running with depgate's init containers")
    assert not set(first) & set(final)
    assert_never_scheduled_without_init_containers(pod_watch)


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_one_kubectl_apply_workload_listed_first_no_pod_runs_ungated(plane, operator, opted_in, needs_pods,
                                                                    pod_watch, kind):
    """Issue 15: the workload and its policy in ONE kubectl apply, the workload's document first (kubectl
    creates them in file order, a few milliseconds apart): whichever pods the controller makes before
    the policy arrives are held at the gate and replaced; none is ever scheduled without depgate's
    init containers, and the pods that run carry them."""
    ns = opted_in
    work = deployment("app", replicas=2) if kind == "Deployment" else statefulset("app")
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=work + "---\n" + policy("app", kind, "app"))

    def settled() -> dict[str, Seen] | None:
        live = pod_watch.live()
        done = [s for s in live.values() if s.ours and s.phase == "Running" and not s.gates]
        return live if len(done) == 2 and len(live) == 2 else None

    wait_for(settled, 120, what=f"the {kind}'s 2 pods Running with depgate's init containers, nothing else")
    assert_never_scheduled_without_init_containers(pod_watch)


def daemonset(name: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: DaemonSet
        metadata: {{name: {name}, labels: {{app: {name}}}}}
        spec:
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              containers: [{{name: agent, image: busybox}}]
        """)


def cronjob(name: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: batch/v1
        kind: CronJob
        metadata: {{name: {name}}}
        spec:
          schedule: "0 0 1 1 *"
          jobTemplate:
            spec:
              template:
                spec:
                  restartPolicy: Never
                  containers: [{{name: report, image: busybox}}]
        """)


def test_a_daemonset_first_then_its_policy_its_held_pod_is_replaced_by_the_rollout(
        plane, operator, opted_in, needs_pods, pod_watch):
    ns = opted_in
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=daemonset("agent"))
    first = gated_pods(pod_watch, 1, "the DaemonSet's pod at depgate's scheduling gate")
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("agent", "DaemonSet", "agent"))
    final = wait_for(lambda: [s for s in pod_watch.live().values() if s.ours and s.phase == "Running"
                              and not s.gates] if len(pod_watch.live()) == 1 else None, 90,
                     what="the DaemonSet's one pod Running with depgate's init containers")
    assert final[0].uid not in first
    assert_never_scheduled_without_init_containers(pod_watch)


def test_a_cronjobs_job_made_before_its_policy_stays_held(plane, operator, opted_in, needs_pods, pod_watch):
    """The Job a CronJob made (here by hand, as `kubectl create job --from=cronjob/...` does, with the
    CronJob as its controller) before the policy gating the CronJob: its pod waits, held."""
    ns = opted_in
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=cronjob("report"))
    plane.run_kubectl("create", "job", "report-manual", "-n", ns, "--from=cronjob/report")
    held = gated_pods(pod_watch, 1, "the CronJob's Job's pod at depgate's gate")
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("report", "CronJob", "report"))
    name = next(iter(held.values())).name
    wait_for(lambda: f"pod {ns}/{name} stays at its scheduling gate" in operator.log_text(), 30,
             what="the operator saying it holds the CronJob's Job's pod")
    assert "job report-manual was created before DependencyPolicy report" in operator.log_text()
    assert all(GATE in s.gates and not s.scheduled for s in pod_watch.versions(next(iter(held))))


# --------------------------------------------------------------------------- no policy: the grace window


def test_a_deployment_no_policy_names_is_let_go_after_the_grace_window(plane, operator, opted_in, needs_pods,
                                                                       pod_watch):
    ns = opted_in
    replicas = 6
    lifted = 'depgate_pod_gate_lifts_total{cause="grace"}'
    before = operator.metrics()[lifted]
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=deployment("free", replicas=replicas))

    def all_running() -> dict[str, Seen] | None:
        live = pod_watch.live()
        return live if len(live) == replicas and all(s.phase == "Running" for s in live.values()) else None

    live = wait_for(all_running, 60, what=f"{replicas} pods let go after the grace window and Running")
    delays = []
    for uid in live:
        versions = pod_watch.versions(uid)
        assert versions[0].type == "ADDED" and GATE in versions[0].gates, versions[0]  # gated at creation
        ungated = next(s for s in versions if GATE not in s.gates)
        assert not any(s.scheduled for s in versions if GATE in s.gates)
        delays.append(ungated.at - versions[0].at)
    grace = 5.0  # --gate-grace-seconds' default (the session's operator runs with it)
    p50, worst = statistics.median(delays), max(delays)
    print(f"\ngate delay for pods no policy names: p50 {p50:.2f}s, max {worst:.2f}s over {len(delays)} pods "
          f"(grace {grace:g}s)")
    assert grace * 0.9 <= min(delays) and worst < grace + 3, delays
    pod = get(plane, ns, "pod", live[next(iter(live))].name)
    assert pod["metadata"]["labels"][gates.GATED_LABEL] == "true"  # the label stays: it went through the gate
    metrics = operator.metrics()
    assert metrics[lifted] - before >= replicas
    assert metrics['depgate_pod_gate_admission_seconds_count{outcome="gated"}'] >= replicas


def test_a_namespace_that_did_not_opt_in_gets_no_gates(plane, operator, namespace, needs_pods, pod_watch):
    plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=deployment("plain", replicas=2))
    wait_for(lambda: len([s for s in pod_watch.live().values() if s.phase == "Running"]) == 2, 60,
             what="2 Running pods")
    assert all(not s.gates for s in pod_watch.seen), [s for s in pod_watch.seen if s.gates]
    for s in pod_watch.live().values():
        assert gates.GATED_LABEL not in (get(plane, namespace, "pod", s.name)["metadata"].get("labels") or {})


# --------------------------------------------------------------------------- a Job that predates its policy


def test_a_job_that_predates_its_policy_stays_held_until_it_is_created_again(plane, operator, opted_in,
                                                                            needs_pods, pod_watch):
    ns = opted_in
    plane.run_kubectl("create", "-n", ns, "-f", "-", input=job("migrate"))
    held = gated_pods(pod_watch, 1, "the Job's pod at depgate's gate")
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("migrate", "Job", "migrate"))
    wait_policy(plane, ns, "migrate", lambda p: bool(p["status"].get("conditions")), timeout=60,
                what="reconciled once")
    uid = next(iter(held))
    # the grace window passes and the pod is still held: the policy gates its Job
    wait_for(lambda: "stays at its scheduling gate" in operator.log_text() and f"{ns}/{held[uid].name}"
             in operator.log_text(), 30, what="the operator saying it holds the Job's pod")
    assert "job migrate was created before DependencyPolicy migrate" in operator.log_text()
    assert all(GATE in s.gates and not s.scheduled for s in pod_watch.versions(uid))
    # ... and the policy's status says so, for its target
    target = wait_policy(plane, ns, "migrate", lambda p: any(
        t.get("name") == "migrate" and (t.get("pods") or {}).get("held") == 1
        for t in p["status"].get("targets") or [] if isinstance(t, dict)), timeout=30,
        what="status.targets[migrate].pods.held == 1")["status"]["targets"]
    note = next(t for t in target if t.get("name") == "migrate").get("note", "")
    assert "job migrate was created before DependencyPolicy migrate" in note and GATE in note, target
    # re-created, the Job is rendered at admission and its new pod runs depgate's init containers first
    plane.run_kubectl("delete", "-n", ns, "job", "migrate", "--cascade=foreground")
    plane.run_kubectl("create", "-n", ns, "-f", "-", input=job("migrate"))
    wait_for(lambda: [s for s in pod_watch.live().values() if s.ours and s.scheduled], 60,
             what="the re-created Job's pod scheduled with depgate's init containers")
    assert_never_scheduled_without_init_containers(pod_watch)


def test_a_held_jobs_pod_is_let_go_once_its_policy_is_deleted(plane, operator, opted_in, needs_pods, pod_watch):
    ns = opted_in
    plane.run_kubectl("create", "-n", ns, "-f", "-", input=job("migrate"))
    held = gated_pods(pod_watch, 1, "the Job's pod at depgate's gate")
    uid, name = next(iter(held)), next(iter(held.values())).name
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("migrate", "Job", "migrate"))
    wait_for(lambda: f"pod {ns}/{name} stays at its scheduling gate" in operator.log_text(), 30,
             what="the operator saying it holds the Job's pod")
    plane.run_kubectl("delete", "-n", ns, "dependencypolicy", "migrate")  # waits for its finalizer
    wait_for(lambda: pod_watch.live().get(uid) and pod_watch.live()[uid].scheduled, 30,
             what="the Job's pod let go once the policy that held it is gone")
    assert not pod_watch.live()[uid].ours  # it runs ungated: the policy that would gate it is gone


# --------------------------------------------------------------------------- the operator down


@pytest.mark.usefixtures("restored_webhooks")
def test_with_no_operator_running_new_pods_are_created_ungated_and_held_pods_wait_until_one_starts(
        plane, operator, operator_kubeconfig, opted_in, needs_pods, pod_watch, tmp_path: Path):
    """The session's operator is paused (SIGSTOP: a hung replica), so that no operator answers or lifts."""
    ns = opted_in
    os.kill(operator.proc.pid, signal.SIGSTOP)
    try:
        # one operator that holds pods for long (its grace window is 10 minutes), then stops
        (tmp_path / "holder").mkdir()
        holder = start_operator(operator_kubeconfig, tmp_path / "holder", "--gate-grace-seconds=600", admin=plane)
        try:
            plane.run_kubectl("apply", "-n", ns, "-f", "-", input=deployment("held", replicas=2))
            held = gated_pods(pod_watch, 2, "2 pods at depgate's gate")
        finally:
            stop_operator(holder)
        # nobody answers the webhook now (its URL is the stopped operator's): pods are created, ungated
        started = time.monotonic()
        plane.run_kubectl("apply", "-n", ns, "-f", "-", input=deployment("ungated"))
        assert time.monotonic() - started < 5
        ungated = wait_for(lambda: [s for s in pod_watch.live().values() if s.name.startswith("ungated-")
                                    and s.phase == "Running"], 60, what="the ungated Deployment's pod Running")
        assert not ungated[0].gates and not ungated[0].ours
        assert all(GATE in s.gates and not s.scheduled for uid in held for s in pod_watch.versions(uid))
        # an operator starting lists every labelled pod and lets these go after its grace window
        (tmp_path / "lifter").mkdir()
        lifter = start_operator(operator_kubeconfig, tmp_path / "lifter", "--gate-grace-seconds=1", admin=plane)
        try:
            wait_for(lambda: all(pod_watch.live().get(uid) and pod_watch.live()[uid].phase == "Running"
                                 for uid in held), 60, what="the held pods let go by the operator that started")
        finally:
            stop_operator(lifter)
        assert "Traceback" not in lifter.log.read_text()
    finally:
        os.kill(operator.proc.pid, signal.SIGCONT)


# --------------------------------------------------------------------------- the operator's rights


def test_the_operators_token_may_remove_depgates_gate_from_a_pod_and_nothing_else(plane, operator_kubeconfig,
                                                                                   namespace):
    """What a stolen operator token could do to pods with `patch`, sent as depgate sends its lift (one
    JSON patch, through depgate's own adapter): refused by the ValidatingAdmissionPolicy, but removing
    depgate's gate."""
    from depgate.kube import Forbidden, Kube

    kube = Kube.from_environment(operator_kubeconfig)
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "victim", "labels": {"app": "victim"}},
            "spec": {"schedulingGates": [{"name": "example.com/quota"}, {"name": GATE}],
                     "containers": [{"name": "c", "image": "busybox"}]}}
    plane.run_kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(bare))
    remove_ours = {"op": "remove", "path": "/spec/schedulingGates/1"}

    def refused(ops: list[dict[str, Any]]) -> str:
        try:
            kube.json_patch("v1", "Pod", namespace, "victim", ops)
        except Forbidden as e:
            return str(e)
        return ""

    image = [remove_ours, {"op": "replace", "path": "/spec/containers/0/image", "value": "evil"}]
    wait_for(lambda: "depgate-scheduling-gate-only" in refused(image), 30, interval=0.3,
             what="the ValidatingAdmissionPolicy enforced")
    for what, ops in (
            ("another image", image),
            ("a label (out of a Service)", [remove_ours, {"op": "add", "path": "/metadata/labels/app", "value": "x"}]),
            ("an annotation", [remove_ours, {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]),
            ("a finalizer", [remove_ours, {"op": "add", "path": "/metadata/finalizers", "value": ["x.io/hold"]}]),
            ("a toleration", [remove_ours, {"op": "add", "path": "/spec/tolerations/-",
                                            "value": {"key": "x", "operator": "Exists"}}]),
            ("a node selector", [remove_ours, {"op": "add", "path": "/spec/nodeSelector", "value": {"a": "b"}}]),
            ("another gate", [{"op": "remove", "path": "/spec/schedulingGates/0"}]),
            ("every gate", [{"op": "replace", "path": "/spec/schedulingGates", "value": []}]),
            ("nothing but a label", [{"op": "add", "path": "/metadata/labels/app", "value": "x"}])):
        assert "depgate-scheduling-gate-only" in refused(ops), what
    before = get(plane, namespace, "pod", "victim")
    assert before["spec"]["schedulingGates"] == bare["spec"]["schedulingGates"]
    # what depgate does: remove its own gate, exactly
    kube.json_patch("v1", "Pod", namespace, "victim", gates.lift_ops(before) or [])
    after = get(plane, namespace, "pod", "victim")
    assert after["spec"]["schedulingGates"] == [{"name": "example.com/quota"}]
    assert after["spec"]["containers"][0]["image"] == "busybox" and after["metadata"]["labels"] == {"app": "victim"}
    # and nothing more once it is gone
    assert "depgate-scheduling-gate-only" in refused([{"op": "add", "path": "/metadata/labels/app", "value": "x"}])
    # it deletes only a pod still at its gate (one that never ran), not this one any more
    uid = after["metadata"]["uid"]
    with pytest.raises(Forbidden, match="depgate-scheduling-gate-only"):
        kube.delete("v1", "Pod", namespace, "victim", uid=uid)
    held = {**bare, "metadata": {"name": "held"}}
    plane.run_kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(held))
    assert kube.delete("v1", "Pod", namespace, "held", uid=get(plane, namespace, "pod", "held")["metadata"]["uid"])
    assert get(plane, namespace, "pod", "victim") is not None
