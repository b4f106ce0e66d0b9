"""depgate.gates: the pod scheduling gate at admission, and when depgate lifts it (plain data)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import kopf
import pytest

from depgate import gates, spec, webhook
from depgate.gates import GATE, GATED_LABEL, GatedPods, Hold, Lift, Wait

NS = "shop"
PROTECTED = frozenset({"kube-system", "depgate-system"})


def pod(name: str = "app-7f9c-x1", *, owner: str | None = "ReplicaSet", owner_name: str = "app-7f9c",
        init: tuple[str, ...] = (), gated: tuple[str, ...] = (), uid: str = "u1", rv: str = "10",
        **spec_fields: Any) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": NS, "uid": uid, "resourceVersion": rv,
                          "labels": {"app": "app", "pod-template-hash": "7f9c"}}
    if owner:
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner, "name": owner_name, "uid": "o1",
                                  "controller": True, "blockOwnerDeletion": True}]
    body: dict[str, Any] = {"containers": [{"name": "server", "image": "node:20",
                                            "env": [{"name": "TOKEN", "value": "s3cret"}]}], **spec_fields}
    if init:
        body["initContainers"] = [{"name": n, "image": "busybox"} for n in init]
    if gated:
        body["schedulingGates"] = [{"name": g} for g in gated]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": body}


def policy(name: str = "app", target: dict[str, Any] | None = None) -> spec.Policy:
    return spec.parse_policy({
        "apiVersion": spec.API_VERSION, "kind": spec.KIND, "metadata": {"name": name, "namespace": NS},
        "spec": {**(target or {"workloadRef": {"name": "app"}}),
                 "preconditions": [{"name": "db", "tcp": {"host": "db", "port": 5432}}]}})


def gate(p: dict[str, Any], ns: str = NS, **kw: Any) -> dict[str, Any] | None:
    return gates.gate_patch(p, ns, protected=PROTECTED, **kw)


def admitted(p: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server stores it after Kopf's answer (Kopf turns the merge into JSON ops)."""
    patch = kopf.Patch()
    patch.update(change)
    ops = patch.as_json_patch(body=kopf.Body(copy.deepcopy(p)))
    return jsonpatch.apply_patch(p, ops)


# ---------------------------------------------------------------------- admission


@pytest.mark.parametrize("owner", ["ReplicaSet", "StatefulSet", "DaemonSet", "Job"])
def test_a_workloads_new_pod_gets_the_gate_and_the_label(owner: str) -> None:
    p = pod(owner=owner)
    out = admitted(p, gate(p) or {})
    assert out["spec"]["schedulingGates"] == [{"name": GATE}]
    assert out["metadata"]["labels"] == {"app": "app", "pod-template-hash": "7f9c", GATED_LABEL: "true"}
    assert out["spec"]["containers"] == p["spec"]["containers"]  # nothing else moves


def test_another_gate_is_kept_and_ours_comes_after_it_on_a_pod_without_labels() -> None:
    p = pod(gated=("example.com/quota",))
    del p["metadata"]["labels"]
    out = admitted(p, gate(p) or {})
    assert out["spec"]["schedulingGates"] == [{"name": "example.com/quota"}, {"name": GATE}]
    assert out["metadata"]["labels"] == {GATED_LABEL: "true"}


@pytest.mark.parametrize(("why", "p", "ns", "served"), [
    ("rendered already: it carries depgate's init containers", pod(init=("depgate-db",)), NS, ()),
    ("gated already (a reinvocation)", pod(gated=(GATE,)), NS, ()),
    ("a bare pod: no policy can name it", pod(owner=None), NS, ()),
    ("another controller's pod", pod(owner="Rollout"), NS, ()),
    ("bound to a node: the API server refuses gates on it", pod(nodeName="node-1"), NS, ()),
    ("a protected namespace", pod(), "kube-system", ()),
    ("a namespace this operator does not serve: nobody would lift it", pod(), NS, ("apps",)),
])
def test_pods_left_alone(why: str, p: dict[str, Any], ns: str, served: tuple[str, ...]) -> None:
    assert gate(p, ns, served=served) is None, why


def test_a_served_namespace_is_gated_and_an_owner_that_is_not_the_controller_does_not_count() -> None:
    assert gate(pod(), served=(NS,)) is not None
    p = pod()
    p["metadata"]["ownerReferences"][0]["controller"] = False
    assert gate(p) is None


def test_mirror_pods_and_pods_being_deleted_are_left_alone() -> None:
    mirror = pod()
    mirror["metadata"]["annotations"] = {gates.MIRROR_ANNOTATION: "abc"}
    deleting = pod()
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert gate(mirror) is None and gate(deleting) is None


@pytest.mark.parametrize("hostile", [
    None, "a pod", {}, {"metadata": "x", "spec": 5}, {"metadata": {"ownerReferences": "x"}},
    {"metadata": {"ownerReferences": [None, 3, {"controller": True}]}, "spec": {"initContainers": [None, {"name": 7}]}},
    pod(schedulingGates="depgate.io/render"), pod(schedulingGates=[None, {"name": None}]),
])
def test_hostile_pods_never_raise(hostile: Any) -> None:
    out = gates.gate_patch(hostile, NS, protected=PROTECTED)
    assert out is None or out["spec"]["schedulingGates"][-1] == {"name": GATE}
    if isinstance(hostile, dict):
        gates.decide(hostile, None, 0.0, 5.0, since=0.0, workload=None)
        gates.lift_ops(hostile)
        GatedPods().seen(hostile, 0.0)


def test_the_pods_webhook_is_scoped_to_opted_in_namespaces_and_never_holds_a_pod_up() -> None:
    _, mutating = webhook.configurations(lambda path: {"url": f"https://x/{path}"},
                                         webhook.service_account_user("ops"))
    hook = next(w for w in mutating["webhooks"] if w["name"] == "pods.depgate.io")
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] <= 3 and hook["sideEffects"] == "None"
    assert hook["clientConfig"] == {"url": "https://x/pods"}
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    exprs = hook["namespaceSelector"]["matchExpressions"]
    assert {"key": gates.OPT_IN_LABEL, "operator": "In", "values": [gates.OPT_IN_VALUE]} in exprs
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "ops"]} in exprs
    conditions = " ".join(c["expression"] for c in hook["matchConditions"])
    assert all(f'"{k}"' in conditions for k in gates.OWNER_KINDS) and '"depgate-"' in conditions


# ---------------------------------------------------------------------- lifting


def test_a_pod_with_depgates_init_containers_is_lifted_whatever_the_policy() -> None:
    p = pod(init=("depgate-db",), gated=(GATE,))
    for pol in (None, policy(), policy("other")):
        d = gates.decide(p, pol, 0.0, 5.0, since=0.0, workload=("Deployment", "app"))
        assert isinstance(d, Lift) and "depgate-db" in d.reason


def test_a_pod_of_no_gateable_workload_is_lifted_at_once() -> None:
    assert isinstance(gates.decide(pod(gated=(GATE,)), None, 0.0, 5.0, since=0.0, workload=None), Lift)


def test_a_pod_no_policy_gates_waits_out_the_grace_window_then_goes() -> None:
    p = pod(gated=(GATE,))
    assert gates.decide(p, None, 12.0, 5.0, since=10.0, workload=("Deployment", "app")) == Wait(15.0)
    d = gates.decide(p, None, 15.0, 5.0, since=10.0, workload=("Deployment", "app"))
    assert isinstance(d, Lift) and "grace window of 5s" in d.reason and d.cause == "grace"
    assert isinstance(gates.decide(p, None, 10.0, 0.0, since=10.0, workload=("Deployment", "app")), Lift)


def test_a_pod_made_before_its_policy_is_held_for_the_rollout_or_the_jobs_re_creation() -> None:
    p = pod(gated=(GATE,))
    d = gates.decide(p, policy(), 100.0, 5.0, since=0.0, workload=("Deployment", "app"))
    assert isinstance(d, Hold) and "the rollout replaces it" in d.reason and "DependencyPolicy app" in d.reason
    job = gates.decide(pod(owner="Job", owner_name="migrate", gated=(GATE,)), policy(), 100.0, 5.0, since=0.0,
                       workload=("Job", "migrate"), template_mutable=False)
    assert isinstance(job, Hold)
    assert "job migrate was created before DependencyPolicy app" in job.reason
    assert "deleted and created again" in job.reason and "or the policy is deleted" in job.reason


def test_held_means_gated_without_depgates_init_containers() -> None:
    assert gates.held(pod(gated=(GATE,)))
    assert not gates.held(pod(gated=(GATE,), init=("depgate-db",)))
    assert not gates.held(pod(gated=("other.io/x",)))


def test_the_lift_removes_only_depgates_gate_guarded_by_uid_and_position() -> None:
    p = pod(gated=("a.io/x", GATE, "b.io/y"))
    ops = gates.lift_ops(p)
    assert ops is not None
    assert ops[:2] == [{"op": "test", "path": "/metadata/uid", "value": "u1"},
                       {"op": "test", "path": "/spec/schedulingGates/1/name", "value": GATE}]
    out = jsonpatch.apply_patch(p, ops)
    assert out["spec"]["schedulingGates"] == [{"name": "a.io/x"}, {"name": "b.io/y"}]
    moved = copy.deepcopy(p)
    moved["spec"]["schedulingGates"].pop(0)  # the pod changed since: the test op fails, nothing is removed
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(moved, ops)
    assert gates.lift_ops(pod()) is None


def test_the_memory_of_a_gated_pod_keeps_no_container_env() -> None:
    view = gates.slim(pod(gated=(GATE,), init=("depgate-db", "migrate")))
    assert "s3cret" not in repr(view)
    assert view["spec"] == {"schedulingGates": [{"name": GATE}], "initContainers": [{"name": "depgate-db"}]}
    assert view["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"


# ---------------------------------------------------------------------- the bookkeeping


def test_a_new_gated_pod_is_due_at_once_and_waits_until_its_grace_ends() -> None:
    pods = GatedPods()
    assert pods.seen(pod(gated=(GATE,)), now=1.0)
    assert [uid for uid, _ in pods.due(1.0)] == ["u1"]
    assert pods.due(1.0) == []  # taken
    pods.decided("u1", Wait(6.0))
    assert pods.next_due() == 6.0 and pods.due(5.9) == []
    assert [uid for uid, _ in pods.due(6.0)] == ["u1"]
    assert gates.sleep_for(pods.next_due(), 2.0, 30.0) == 30.0  # nothing due: the idle bound
    pods.decided("u1", Wait(9.0))
    assert gates.sleep_for(pods.next_due(), 2.0, 30.0) == 7.0


def test_a_held_pod_is_decided_again_on_its_namespaces_policy_change_or_its_own() -> None:
    pods = GatedPods()
    p = pod(gated=(GATE,))
    pods.seen(p, 0.0)
    pods.due(0.0)
    pods.decided("u1", Hold("made before policy app"))
    assert pods.next_due() is None and [e.held for e in pods.held_in(NS)] == ["made before policy app"]
    assert pods.counts() == {"held": 1, "waiting": 0}
    assert not pods.seen({**p, "status": {"phase": "Pending"}}, 1.0)  # a status change decides nothing
    assert not pods.policies_changed("elsewhere", 2.0)
    assert pods.policies_changed(NS, 3.0) and [u for u, _ in pods.due(3.0)] == ["u1"]
    pods.decided("u1", Hold("made before policy app"))
    orphaned = copy.deepcopy(p)
    del orphaned["metadata"]["ownerReferences"]
    assert pods.seen(orphaned, 4.0)


def test_a_held_statefulset_pod_is_decided_again_when_its_own_statefulset_changes() -> None:
    """The StatefulSet controller observes the rendered revision after the policy's last event: the pod
    held before that must be decided again then (gates.replacement reads the StatefulSet), or it stays held."""
    pods = GatedPods()
    mine = pod("db-0", owner="StatefulSet", owner_name="db", gated=(GATE,), uid="u1")
    other = pod("cache-0", owner="StatefulSet", owner_name="cache", gated=(GATE,), uid="u2")
    waiting = pod("db-1", owner="StatefulSet", owner_name="db", gated=(GATE,), uid="u3")
    for p in (mine, other, waiting):
        pods.seen(p, 0.0)
    pods.due(0.0)
    pods.decided("u1", Hold("made before policy db"))
    pods.decided("u2", Hold("made before policy cache"))
    pods.decided("u3", Wait(5.0))
    assert not pods.owner_changed(NS, "StatefulSet", "web", 1.0)
    assert not pods.owner_changed("elsewhere", "StatefulSet", "db", 1.0)
    assert not pods.owner_changed(NS, "ReplicaSet", "db", 1.0)
    assert pods.owner_changed(NS, "StatefulSet", "db", 2.0)
    assert [u for u, _ in pods.due(2.0)] == ["u1"]  # not the other StatefulSet's; the waiting one keeps its time
    assert pods.next_due() == 5.0
    assert gates.controller_of(mine) == ("StatefulSet", "db") and gates.controller_of(pod(owner=None)) is None


def test_a_pod_that_lost_the_gate_or_is_deleted_is_forgotten_and_a_stale_event_after_a_lift_is_ignored() -> None:
    pods = GatedPods()
    p = pod(gated=(GATE,), rv="10")
    pods.seen(p, 0.0)
    pods.due(0.0)
    pods.lifted("u1", pod(rv="12"))
    assert len(pods) == 0
    assert not pods.seen(pod(gated=(GATE,), rv="11"), 1.0) and len(pods) == 0  # from before our lift
    assert not pods.seen(pod(rv="13"), 1.0)
    pods.gone("u1")
    assert pods.seen(pod(gated=(GATE,), rv="14"), 2.0)  # tombstone gone with the pod: a new event counts
    pods.seen(pod(rv="15"), 3.0)  # lifted by someone else
    assert len(pods) == 0
    deleting = pod(gated=(GATE,), uid="u2")
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert not pods.seen(deleting, 3.0) and len(pods) == 0


def test_failures_back_off_doubling_to_a_bound_and_a_success_resets_them() -> None:
    pods = GatedPods()
    pods.seen(pod(gated=(GATE,)), 0.0)
    delays = []
    for _ in range(8):
        pods.due(100.0)
        delays.append(pods.failed("u1", 0.0))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert pods.next_due() == 30.0
    pods.decided("u1", Wait(40.0))
    assert pods.entries["u1"].failures == 0
    assert pods.failed("gone-uid", 0.0) == 0.0  # forgotten meanwhile: nothing to retry


def statefulset(*, rendered: bool = True, observed: bool = True, update: str = "db-new",
                strategy: dict[str, Any] | None = None) -> dict[str, Any]:
    template: dict[str, Any] = {"containers": [{"name": "redis", "image": "redis:7"}]}
    if rendered:
        template["initContainers"] = [{"name": "depgate-db", "image": "depgate/depgate"}]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": NS, "generation": 2},
            "spec": {"template": {"spec": template}, "updateStrategy": strategy or {"type": "RollingUpdate"}},
            "status": {"observedGeneration": 2 if observed else 1, "updateRevision": update}}


def sts_pod(index: int = 0, revision: str = "db-old", **kw: Any) -> dict[str, Any]:
    p = pod(f"db-{index}", owner="StatefulSet", owner_name="db", gated=(GATE,), **kw)
    p["metadata"]["labels"] = {"app": "db", gates.REVISION_LABEL: revision, gates.POD_INDEX_LABEL: str(index)}
    return p


def test_a_held_statefulset_pod_is_replaced_once_the_controller_makes_it_rendered() -> None:
    why = gates.replacement(sts_pod(), statefulset(), "db")
    assert why is not None and "never ran" in why and "revision db-new" in why and "DependencyPolicy db" in why
    assert gates.replacement(sts_pod(), statefulset(strategy={"type": "OnDelete"}), "db") is not None
    at_partition = {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}
    assert gates.replacement(sts_pod(1), statefulset(strategy=at_partition), "db") is not None


@pytest.mark.parametrize(("why", "p", "sts"), [
    ("the template is not rendered yet", sts_pod(), statefulset(rendered=False)),
    ("the controller has not observed the rendered template", sts_pod(), statefulset(observed=False)),
    ("already of the update revision: it would come back the same", sts_pod(revision="db-new"), statefulset()),
    ("below the partition it would be made from the old revision", sts_pod(0),
     statefulset(strategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 1}})),
    ("it carries the init containers: it is lifted instead", sts_pod(init=("depgate-db",)), statefulset()),
    ("not at depgate's gate: it may have run", {**sts_pod(), "spec": {"containers": []}}, statefulset()),
    ("no update revision", sts_pod(), {**statefulset(), "status": {"observedGeneration": 2}}),
])
def test_a_statefulset_pod_is_not_replaced(why: str, p: dict[str, Any], sts: dict[str, Any]) -> None:
    assert gates.replacement(p, sts, "db") is None, why
