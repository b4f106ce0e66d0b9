"""depgate.controller.Reconciler on an in-memory API (tests/unit/fakekube.py): what lands in the
policy's status, what is written, and that a reconcile with nothing to change writes nothing.

The same behaviour on the real API server: tests/integration/test_reconcile.py and test_status.py."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any

import pytest
from fakekube import FakeKube

from depgate import plan, registry, render, spec
from depgate.constants import APPLIED_HASH_ANNOTATION, POLICY_ANNOTATION
from depgate.controller import Outcome, Reconciler, ReleaseFailed
from depgate.kube import ApiError, Forbidden, Kube, Rejected

NS = "shop"
CONFIG = render.RenderConfig(waiter_image="depgate/depgate:test")
TCP = {"name": "db", "tcp": {"host": "db", "port": 5432}}
SECRET = {"name": "creds", "secret": {"name": "creds", "keys": ["password"]}}
WEB = {"selector": {"matchLabels": {"tier": "web"}}}


def deployment(name: str = "app", *, init: tuple[str, ...] = (), labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [{"name": "server", "image": "node:20"}]}
    if init:
        pod["initContainers"] = [{"name": n, "image": "busybox", "command": ["true"]} for n in init]
    md: dict[str, Any] = {"name": name, "namespace": NS, "labels": {"app": name, **(labels or {})}}
    if annotations:
        md["annotations"] = annotations
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": md,
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod}}}


def policy(name: str = "p", target: dict[str, Any] | None = None,
           preconditions: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": spec.API_VERSION, "kind": spec.KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {**(target or {"workloadRef": {"name": "app"}}), "preconditions": preconditions or [TCP],
                     **fields}}


def world(*objs: dict[str, Any]) -> FakeKube:
    kube = FakeKube()
    for o in objs:
        kube.put(o)
    return kube


def reconcile(kube: FakeKube, name: str = "p", cycle: str | None = None) -> Outcome:
    """One reconcile of the policy as stored now (the worker hands over its newest copy)."""
    obj = kube.stored(spec.API_VERSION, spec.KIND, NS, name)
    assert obj is not None
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    return Reconciler(kube, CONFIG, now=lambda: now).reconcile(obj, cycle=cycle)  # type: ignore[arg-type]


def stored_status(kube: FakeKube, name: str = "p") -> dict[str, Any]:
    obj = kube.stored(spec.API_VERSION, spec.KIND, NS, name)
    assert obj is not None
    return dict(obj.get("status") or {})


def condition(kube: FakeKube, ctype: str, name: str = "p") -> tuple[str, str, str]:
    (cond,) = [c for c in stored_status(kube, name)["conditions"] if c["type"] == ctype]
    return cond["status"], cond["reason"], cond["message"]


def dep(kube: FakeKube, name: str = "app") -> dict[str, Any]:
    d = kube.stored("apps/v1", "Deployment", NS, name)
    assert d is not None
    return d


def inits(d: dict[str, Any]) -> list[str]:
    return [c["name"] for c in d["spec"]["template"]["spec"].get("initContainers") or []]


def changes_status(kube: FakeKube, name: str = "app") -> None:
    """The Deployment controller writes the Deployment's status: a new resourceVersion."""
    def write(d: dict[str, Any]) -> None:
        d["status"] = {"observedGeneration": int(d["status"]["observedGeneration"]) + 1 if "status" in d else 1}
    kube.edit("apps/v1", "Deployment", NS, name, write)


def relabel(kube: FakeKube, name: str, labels: dict[str, str]) -> None:
    kube.edit("apps/v1", "Deployment", NS, name, lambda d: d["metadata"].update(labels=labels))


# --------------------------------------------------------------------------- the adapter's interface


def test_the_fake_has_the_signatures_of_the_kube_adapter() -> None:
    for name in ("get", "items", "apply", "json_patch", "replace_status", "event"):
        fake, real = inspect.signature(getattr(FakeKube, name)), inspect.signature(getattr(Kube, name))
        assert list(fake.parameters) == list(real.parameters), name


# --------------------------------------------------------------------------- gating, and idempotence


def test_a_workload_ref_target_is_gated_and_the_status_says_applied() -> None:
    kube = world(deployment(), policy())
    out = reconcile(kube)
    assert inits(dep(kube)) == ["depgate-db"]
    assert dep(kube)["metadata"]["annotations"][POLICY_ANNOTATION] == "p"
    assert condition(kube, "Applied") == ("True", "Applied", "init containers in place on 1 Deployment")
    assert [(t["kind"], t["name"]) for t in stored_status(kube)["targets"]] == [("Deployment", "app")]
    assert (out.targets, out.wanted, out.result, out.requeue_after) == (
        [("Deployment", "app")], {("Deployment", "app")}, "ok", None)
    assert kube.writes == [("apply", "Deployment", "app"), ("status", spec.KIND, "p")] and out.writes == 2
    assert ("Normal", "Applied") in [(t, r) for t, r, _ in kube.events]


def test_a_second_reconcile_writes_nothing() -> None:
    kube = world(deployment(init=("migrate",)), policy(preconditions=[TCP, SECRET]))
    reconcile(kube)
    writes, events = list(kube.writes), list(kube.events)
    out = reconcile(kube)
    assert kube.writes == writes and kube.events == events
    assert out.writes == 0 and not out.status_written and out.status == stored_status(kube)


def test_the_users_own_init_containers_stay_theirs_after_the_two_step_apply() -> None:
    kube = world(deployment(init=("migrate", "warm")), policy())
    sent: list[dict[str, Any]] = []
    kube.before("apply", sent.append)
    reconcile(kube)
    assert [inits(b) for b in sent] == [["depgate-db", "migrate", "warm"], ["depgate-db"]]
    assert sent[0]["metadata"]["resourceVersion"] != sent[1]["metadata"]["resourceVersion"]  # each on the last
    assert inits(dep(kube)) == ["depgate-db", "migrate", "warm"]
    assert dep(kube)["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] != plan.ORDERING_HASH
    # given back: a release (the policy now targets another Deployment) takes ours only
    kube.put(deployment("other"))
    kube.put(policy(target={"workloadRef": {"name": "other"}}))
    reconcile(kube)
    assert inits(dep(kube)) == ["migrate", "warm"]
    assert POLICY_ANNOTATION not in (dep(kube)["metadata"].get("annotations") or {})


def test_a_merge_that_leaves_ours_out_of_place_is_reordered_by_the_placement_patch() -> None:
    def appends(live: list[str], applied: list[str]) -> list[str]:  # not what the model predicts
        return live + [k for k in applied if k not in live]
    kube = world(deployment(init=("migrate",)), policy())
    kube.merge_order = appends
    reconcile(kube)
    assert inits(dep(kube)) == ["depgate-db", "migrate"]
    assert kube.writes[-2] == ("json_patch", "Deployment", "app")
    writes = list(kube.writes)
    reconcile(kube)
    assert kube.writes == writes


def test_drift_on_our_init_container_is_restored() -> None:
    kube = world(deployment(), policy())
    reconcile(kube)

    def tamper(d: dict[str, Any]) -> None:
        d["spec"]["template"]["spec"]["initContainers"][0]["image"] = "evil:latest"
    kube.edit("apps/v1", "Deployment", NS, "app", tamper)
    reconcile(kube)
    assert dep(kube)["spec"]["template"]["spec"]["initContainers"][0]["image"] == CONFIG.waiter_image


def test_a_missing_target_is_reported_and_wanted() -> None:
    kube = world(policy())
    out = reconcile(kube)
    assert condition(kube, "Applied")[:2] == ("False", plan.TARGET_NOT_FOUND)
    assert out.wanted == {("Deployment", "app")} and out.targets == []


# --------------------------------------------------------------------------- what keeps Applied False


def test_a_deployment_another_policy_gates_is_a_conflict_and_left_alone() -> None:
    kube = world(deployment(annotations={POLICY_ANNOTATION: "other"}), policy("other"), policy())
    out = reconcile(kube)
    assert out.result == "conflict"
    assert condition(kube, "Stalled")[:2] == ("True", plan.CONFLICT)
    assert inits(dep(kube)) == [] and ("apply", "Deployment", "app") not in kube.writes
    # the loser lists no target (TARGETS "-"): the Deployment is the other policy's (issue 16, item 8)
    assert out.targets == [] and stored_status(kube)["targets"] == []
    assert stored_status(kube)["targetSummary"] == "-"


def test_a_claim_of_a_deleted_policy_is_taken_over() -> None:
    kube = world(deployment(annotations={POLICY_ANNOTATION: "deleted"}), policy())
    assert reconcile(kube).result == "ok"
    assert inits(dep(kube)) == ["depgate-db"]


def test_a_render_error_is_reported_and_nothing_applied() -> None:
    kube = world(deployment(), policy(preconditions=[{"name": "seed", "command": {"fromContainer": "nope",
                                                                                  "command": ["true"]}}]))
    reconcile(kube)
    status, reason, message = condition(kube, "Applied")
    assert (status, reason) == ("False", "ContainerNotFound") and "nope" in message
    assert condition(kube, "Stalled")[:2] == ("True", "ContainerNotFound")  # kstatus: Failed, not InProgress
    assert inits(dep(kube)) == []


def test_a_deployment_changing_meanwhile_is_read_again_and_applied_on_the_third_attempt() -> None:
    kube = world(deployment(), policy())
    attempts: list[int] = []

    def controller_writes_first(body: dict[str, Any]) -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            changes_status(kube)
    kube.before("apply", controller_writes_first)
    out = reconcile(kube)
    assert len(attempts) == 3 and inits(dep(kube)) == ["depgate-db"]
    assert condition(kube, "Applied")[0] == "True" and out.requeue_after is None


def test_a_deployment_changing_under_every_attempt_is_retried_soon() -> None:
    kube = world(deployment(), policy())
    kube.before("apply", lambda body: changes_status(kube))
    out = reconcile(kube)
    assert condition(kube, "Applied")[:2] == ("False", plan.RETRYING)
    assert condition(kube, "Reconciling")[0] == "True"
    assert out.requeue_after == plan.KEPT_CHANGING_RETRY_SECONDS
    assert [w for w in kube.writes if w[0] == "apply"] == []


def test_a_deployment_deleted_meanwhile_is_retried_soon() -> None:
    kube = world(deployment(), policy())
    kube.before("apply", lambda body: kube.delete("apps/v1", "Deployment", NS, "app"))
    out = reconcile(kube)
    assert condition(kube, "Applied")[:2] == ("False", plan.RETRYING)
    assert out.requeue_after == plan.KEPT_CHANGING_RETRY_SECONDS
    assert kube.stored("apps/v1", "Deployment", NS, "app") is None  # never recreated


def test_a_deployment_the_api_server_refuses_stalls_as_refused() -> None:
    kube = world(deployment(), policy())
    kube.fail("apply", Rejected("spec.template.spec.initContainers[0].image: Required value"))
    out = reconcile(kube)
    status, reason, message = condition(kube, "Applied")
    assert (status, reason) == ("False", plan.REFUSED) and "initContainers[0].image: Required" in message
    assert condition(kube, "Stalled")[:2] == ("True", plan.REFUSED)
    assert out.requeue_after is None


def test_any_other_api_error_is_said_with_its_reason_and_tried_again_later() -> None:
    kube = world(deployment(), policy())
    kube.fail("apply", ApiError(status=500, reason="Internal Server Error",
                                    body='{"reason": "InternalError", "message": "a webhook failed"}'))
    out = reconcile(kube)
    status, reason, message = condition(kube, "Applied")
    assert (status, reason) == ("False", "InternalError") and "a webhook failed" in message
    assert condition(kube, "Stalled")[0] == "False"
    assert out.requeue_after == plan.APPLY_ERROR_RETRY_SECONDS


def test_an_invalid_spec_is_stalled_and_keeps_the_targets_it_had() -> None:
    kube = world(deployment(), policy())
    reconcile(kube)
    broken = policy()
    broken["spec"]["placement"] = "Sideways"
    kube.put({**broken, "status": stored_status(kube)})
    out = reconcile(kube)
    assert out.result == "invalid"
    assert condition(kube, "Applied")[:2] == ("False", plan.INVALID_SPEC)
    assert condition(kube, "Stalled")[:2] == ("True", plan.INVALID_SPEC)
    assert [(t["kind"], t["name"]) for t in stored_status(kube)["targets"]] == [("Deployment", "app")]


def test_a_dependency_cycle_stalls_the_policy() -> None:
    kube = world(deployment(), policy())
    reconcile(kube, cycle="p -> q -> p")
    assert condition(kube, "Stalled") == ("True", "DependencyCycle", "p -> q -> p")


OPERATOR_JUDGED = {
    "service": {"name": "db"}, "job": {"name": "migrate"}, "secret": {"name": "creds"}, "configMap": {"name": "cfg"},
    "workload": {"kind": "StatefulSet", "name": "cache"},
    "resource": {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "condition": "Ready"},
}


def test_every_type_the_operator_judges_is_read_and_judged() -> None:
    assert set(OPERATOR_JUDGED) == set(registry.OPERATOR_JUDGED)
    pres = [{"name": t.lower(), t: body} for t, body in OPERATOR_JUDGED.items()]
    kube = world(deployment(), policy(preconditions=pres))
    reconcile(kube)
    entries = stored_status(kube)["preconditions"]
    assert [e["name"] for e in entries] == [t.lower() for t in OPERATOR_JUDGED]
    assert [(e["name"], e["state"]) for e in entries if e["reason"] == "NotEvaluated"] == []
    assert all(e["state"] == "Blocking" for e in entries), entries  # none of those objects exists


def test_a_custom_resource_over_a_watch_cap_is_claimed_first_and_blocks_with_too_many_watches() -> None:
    kube = world(deployment(), policy(preconditions=[{"name": "w", "resource": OPERATOR_JUDGED["resource"]}]))
    claims: list[tuple[tuple[str, str], list[Any]]] = []

    def claim(key: tuple[str, str], wanted: Any) -> dict[tuple[str, str, str], str]:
        claims.append((key, list(wanted)))
        return {("example.com/v1", "Widget", NS): "at most 0 kinds"}
    obj = kube.stored(spec.API_VERSION, spec.KIND, NS, "p")
    out = Reconciler(kube, CONFIG, claim_custom=claim).reconcile(obj)  # type: ignore[arg-type]
    assert claims == [((NS, "p"), [("example.com/v1", "Widget", NS, "w")])]
    assert out.custom == [("example.com/v1", "Widget", NS, "w")]
    (entry,) = stored_status(kube)["preconditions"]
    assert (entry["state"], entry["reason"]) == ("Blocking", "TooManyWatches")
    assert entry["message"].startswith("at most 0 kinds. As read now:")


def test_a_precondition_depgate_may_not_read_blocks_with_forbidden() -> None:
    kube = world(deployment(), policy(preconditions=[SECRET]))
    kube.fail("get", Forbidden("secrets \"creds\" is forbidden"), when=lambda av, kind, *_: kind == "Secret")
    reconcile(kube)
    (entry,) = stored_status(kube)["preconditions"]
    assert (entry["state"], entry["reason"]) == ("Blocking", "Forbidden")


# --------------------------------------------------------------------------- selectors and releases


def test_a_selector_releases_a_deployment_that_no_longer_matches() -> None:
    kube = world(deployment("a", labels={"tier": "web"}), deployment("b", labels={"tier": "web"}), policy(target=WEB))
    reconcile(kube)
    assert inits(dep(kube, "a")) == inits(dep(kube, "b")) == ["depgate-db"]
    relabel(kube, "b", {"app": "b", "tier": "db"})
    out = reconcile(kube)
    assert inits(dep(kube, "b")) == [] and POLICY_ANNOTATION not in (dep(kube, "b")["metadata"].get("annotations")
                                                                     or {})
    assert inits(dep(kube, "a")) == ["depgate-db"]
    assert [t["name"] for t in stored_status(kube)["targets"]] == ["a"] and out.targets == [("Deployment", "a")]
    assert out.writes == 2  # the release and the status (metrics count them)


def test_a_selector_releases_a_deployment_it_gated_but_never_recorded() -> None:
    # the operator died between gating and its status write: status.targets never named "b"
    kube = world(deployment("a", labels={"tier": "web"}), deployment("b", labels={"tier": "web"}), policy(target=WEB))
    reconcile(kube)
    kube.edit(spec.API_VERSION, spec.KIND, NS, "p", lambda p: p.pop("status"))
    relabel(kube, "b", {"app": "b"})
    reconcile(kube)
    assert inits(dep(kube, "b")) == []


def test_a_release_that_keeps_meeting_changes_fails_without_writing_the_status() -> None:
    kube = world(deployment("a", labels={"tier": "web"}), deployment("b", labels={"tier": "web"}), policy(target=WEB))
    reconcile(kube)
    relabel(kube, "b", {"app": "b"})
    before = stored_status(kube)

    def b_changes(body: dict[str, Any]) -> None:
        if body["metadata"]["name"] == "b":
            changes_status(kube, "b")
    kube.before("apply", b_changes)
    with pytest.raises(ReleaseFailed):
        reconcile(kube)
    assert stored_status(kube) == before  # the next reconcile still finds "b" among the targets


# --------------------------------------------------------------------------- template mode and the wait RBAC


TEMPLATE = {"template": {"metadata": {"name": "web", "labels": {"app": "web"}},
                         "spec": {"selector": {"matchLabels": {"app": "web"}},
                                  "template": {"metadata": {"labels": {"app": "web"}},
                                               "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}}


def test_template_mode_creates_a_deployment_it_owns_then_leaves_it_alone() -> None:
    kube = world(policy(target=TEMPLATE))
    out = reconcile(kube)
    web = dep(kube, "web")
    assert web["metadata"]["ownerReferences"][0]["uid"] == "uid-p" and inits(web) == ["depgate-db"]
    assert out.targets == [("Deployment", "web")] and condition(kube, "Applied")[0] == "True"
    writes = list(kube.writes)
    assert reconcile(kube).writes == 0 and kube.writes == writes


def test_template_mode_never_takes_over_a_deployment_it_did_not_create() -> None:
    kube = world(deployment("web"), policy(target=TEMPLATE))
    out = reconcile(kube)
    assert out.result == "conflict" and out.targets == []
    assert condition(kube, "Stalled")[:2] == ("True", plan.CONFLICT)
    assert inits(dep(kube, "web")) == []


def test_a_template_the_api_server_refuses_stalls_as_an_invalid_spec() -> None:
    kube = world(policy(target=TEMPLATE))
    kube.fail("apply", Rejected("spec.template.spec.containers: Required value"))
    out = reconcile(kube)
    assert condition(kube, "Applied")[:2] == ("False", plan.INVALID_TEMPLATE)
    assert condition(kube, "Stalled")[:2] == ("True", plan.INVALID_SPEC)
    assert out.targets == []


def test_an_operator_judged_precondition_gets_the_pods_a_rolebinding_to_read_the_policy_and_no_role() -> None:
    kube = world(deployment(), policy(preconditions=[SECRET]))
    reconcile(kube)
    binding = kube.stored("rbac.authorization.k8s.io/v1", "RoleBinding", NS, plan.verdict_binding_name("p"))
    assert binding is not None and binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                                          "kind": "ClusterRole", "name": plan.VERDICT_READER}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": NS}]
    assert [w for w in kube.writes if w[1] in ("Role", "RoleBinding")] == [
        ("apply", "RoleBinding", plan.verdict_binding_name("p"))]
    assert kube.stored("rbac.authorization.k8s.io/v1", "Role", NS, render.wait_role_name("p")) is None
    writes = list(kube.writes)
    reconcile(kube)
    assert kube.writes == writes


# --------------------------------------------------------------------------- issue 14: precedence, protection, rights


def test_a_workloadref_takes_over_from_a_selector_and_the_selector_says_it_left_it() -> None:
    broad = policy("broad", target={"selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}})
    kube = world(deployment("app"), deployment("other"), broad)
    reconcile(kube, "broad")
    assert dep(kube, "app")["metadata"]["annotations"][POLICY_ANNOTATION] == "broad"
    kube.put(policy("mine"))
    reconcile(kube, "mine")  # the default: the namespace's policies, listed live
    assert dep(kube, "app")["metadata"]["annotations"][POLICY_ANNOTATION] == "mine"
    assert "selector of DependencyPolicy broad" in condition(kube, "Applied", "mine")[2]
    out = reconcile(kube, "broad")
    assert out.targets == [("Deployment", "other")] and out.result == "ok"
    assert dep(kube, "app")["metadata"]["annotations"][POLICY_ANNOTATION] == "mine"
    assert "left to DependencyPolicy mine" in condition(kube, "Applied", "broad")[2]


def test_a_policy_in_a_protected_namespace_writes_only_its_status() -> None:
    kube = world(deployment(), policy(preconditions=[SECRET]))
    obj = kube.stored(spec.API_VERSION, spec.KIND, NS, "p")
    Reconciler(kube, CONFIG, protected=frozenset({NS})).reconcile(obj)  # type: ignore[arg-type]
    assert [w[0] for w in kube.writes] == ["status"]
    assert condition(kube, "Stalled")[:2] == ("True", plan.PROTECTED)


def test_a_template_where_depgate_may_not_create_says_which_rolebinding_enables_it() -> None:
    kube = world(policy(target=TEMPLATE))
    kube.fail("apply", Forbidden('deployments.apps is forbidden: User cannot create resource "deployments"'))
    out = reconcile(kube)
    assert condition(kube, "Stalled")[:2] == ("True", plan.FORBIDDEN)
    assert "--clusterrole=depgate-template-creator" in condition(kube, "Stalled")[2]
    assert out.requeue_after == plan.APPLY_ERROR_RETRY_SECONDS


def test_a_secret_depgate_may_not_read_says_which_rolebinding_enables_it() -> None:
    kube = world(deployment(), policy(preconditions=[SECRET]))
    kube.fail("get", Forbidden('secrets "creds" is forbidden'), times=99, when=lambda av, kind, *a: kind == "Secret")
    reconcile(kube)
    st = kube.stored(spec.API_VERSION, spec.KIND, NS, "p")["status"]
    creds = next(e for e in st["preconditions"] if e["name"] == "creds")
    assert creds["reason"] == "Forbidden" and "--clusterrole=depgate-secret-reader" in creds["message"]
