"""depgate.admission: the patch depgate's mutating webhook answers for a workload (plain data, no API)."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from depgate import admission, plan, render, spec
from depgate.constants import APPLIED_HASH_ANNOTATION, POLICY_ANNOTATION

NS = "shop"
CONFIG = render.RenderConfig(waiter_image="depgate/depgate:test")
TCP = {"name": "db", "tcp": {"host": "db", "port": 5432}}
SERVICE = {"name": "api", "service": {"name": "api"}}


def policy(name: str = "p", target: dict[str, Any] | None = None, preconditions: list[dict[str, Any]] | None = None,
           **fields: Any) -> spec.Policy:
    return spec.parse_policy({
        "apiVersion": spec.API_VERSION, "kind": spec.KIND,
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": {**(target or {"workloadRef": {"name": "app"}}), "preconditions": preconditions or [TCP], **fields},
    })


POD = {"containers": [{"name": "server", "image": "node:20", "terminationMessagePath": "/dev/termination-log"}]}


def workload(kind: str = "Deployment", name: str = "app", *, pod: dict[str, Any] | None = None,
             annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A workload as a CREATE's AdmissionReview carries it: no resourceVersion, no uid, managed fields."""
    template = {"metadata": {"labels": {"app": name}}, "spec": copy.deepcopy(pod or POD)}
    body: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
    api = "apps/v1"
    if kind == "Job":
        api, body = "batch/v1", {"template": {**template, "spec": {**template["spec"], "restartPolicy": "Never"}}}
    elif kind == "CronJob":
        api, body = "batch/v1", {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {
            "template": {**template, "spec": {**template["spec"], "restartPolicy": "Never"}}}}}
    md: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {"app": name},
                          "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": api}]}
    if annotations is not None:
        md["annotations"] = annotations
    return {"apiVersion": api, "kind": kind, "metadata": md, "spec": body}


def decide(obj: dict[str, Any], *policies: spec.Policy, operation: str = "CREATE",
           protected: frozenset[str] = frozenset()) -> admission.Decision:
    return admission.decide(obj, NS, operation, policies, CONFIG, protected)


def admitted(obj: dict[str, Any], d: admission.Decision) -> dict[str, Any]:
    return admission.apply_patch(obj, d.patch)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


# --------------------------------------------------------------------------- rendered as the reconcile would


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job"])
def test_a_targeted_workload_is_admitted_rendered_and_the_reconcile_then_has_nothing_to_write(kind: str) -> None:
    pol = policy(target={"workloadRef": {"kind": kind, "name": "app"}}, preconditions=[TCP, SERVICE])
    obj = workload(kind)
    d = decide(obj, pol)
    assert d.outcome == admission.RENDERED and d.policy == "p" and d.warnings == ()
    out = admitted(obj, d)
    assert out == d.result
    assert [c["name"] for c in pod_spec(out)["initContainers"]] == ["depgate-db", "depgate-api"]
    ann = out["metadata"]["annotations"]
    assert ann[POLICY_ANNOTATION] == "p"
    assert ann[APPLIED_HASH_ANNOTATION] == plan.body_hash(render.apply_body(pol, obj, CONFIG))
    # What the reconcile decides on reading it back: up to date, no apply (no rollout).
    live = copy.deepcopy(out)
    live["metadata"].update(resourceVersion="12", uid="u-1", generation=1)
    tw = plan.target_writes(pol, live, CONFIG)
    assert tw.applies == () and tw.problem is None
    # The user's fields are untouched: only depgate's init containers and the two annotations differ.
    assert render.without_ours({**out, "metadata": {**out["metadata"], "annotations": {}}}) == \
        {**obj, "metadata": {**obj["metadata"], "annotations": {}}}


def test_the_patch_is_minimal_and_adds_the_keys_that_are_missing() -> None:
    d = decide(workload(), policy())
    base = "/spec/template/spec"
    assert [(op["op"], op["path"]) for op in d.patch] == [("add", "/metadata/annotations"),
                                                          ("add", f"{base}/initContainers")]
    assert d.patch[0]["value"].keys() == {POLICY_ANNOTATION, APPLIED_HASH_ANNOTATION}


def test_existing_annotations_and_init_containers_are_kept_and_the_new_keys_escaped() -> None:
    pod = {**POD, "initContainers": [{"name": "migrate", "image": "app", "command": ["migrate"]}]}
    obj = workload(pod=pod, annotations={"team": "payments"})
    d = decide(obj, policy(placement="AfterExisting"))
    paths = {op["path"]: op for op in d.patch}
    assert paths["/metadata/annotations/depgate.io~1policy"] == {
        "op": "add", "path": "/metadata/annotations/depgate.io~1policy", "value": "p"}
    assert "/metadata/annotations/depgate.io~1applied" in paths
    assert paths["/spec/template/spec/initContainers"]["op"] == "replace"
    out = admitted(obj, d)
    assert out["metadata"]["annotations"]["team"] == "payments"
    assert [c["name"] for c in pod_spec(out)["initContainers"]] == ["migrate", "depgate-db"]


def test_a_shared_volume_mount_is_patched_into_each_container_in_place() -> None:
    pod = {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y",
                                                       "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
           "volumes": [{"name": "data", "emptyDir": {}}]}
    download = {"name": "blob", "download": {"url": "https://example.com/x", "sha256": "a" * 64, "path": "x"}}
    obj = workload(pod=pod)
    d = decide(obj, policy(preconditions=[download]))
    ops = {op["path"]: op["op"] for op in d.patch}
    base = "/spec/template/spec"
    assert ops[f"{base}/containers/0/volumeMounts"] == "add"
    assert ops[f"{base}/containers/1/volumeMounts"] == "replace"
    assert ops[f"{base}/volumes"] == "replace"
    assert f"{base}/containers" not in ops  # not the whole list: only what changes
    out = admitted(obj, d)
    assert out["spec"]["template"]["spec"]["containers"][1]["volumeMounts"][0] == {"name": "data", "mountPath": "/data"}
    assert {v["name"] for v in out["spec"]["template"]["spec"]["volumes"]} == {"data", "depgate-shared"}


def test_an_object_already_rendered_gets_no_patch_and_a_stale_rendering_is_rerendered() -> None:
    pol = policy()
    done = admitted(workload(), decide(workload(), pol))
    assert decide(done, pol, operation="UPDATE").outcome == admission.UP_TO_DATE
    assert decide(done, pol, operation="UPDATE").patch == ()
    # The policy changed since: the UPDATE gets the new rendering, stale depgate-* entries gone.
    pol2 = policy(preconditions=[{"name": "cache", "tcp": {"host": "redis", "port": 6379}}])
    d = decide(done, pol2, operation="UPDATE")
    assert d.outcome == admission.RENDERED
    assert [c["name"] for c in pod_spec(admitted(done, d))["initContainers"]] == ["depgate-cache"]
    # An update that drops depgate's entries (kubectl replace of the original file) gets them back.
    assert admitted(workload(), decide(workload(), pol, operation="UPDATE")) == done


# --------------------------------------------------------------------------- never refused, never touched


def test_a_workload_no_policy_names_is_admitted_unchanged() -> None:
    d = decide(workload(name="other"), policy(), policy("sel", {"selector": {"matchLabels": {"tier": "db"}}}))
    assert d == admission.Decision(admission.UNTARGETED)
    assert decide(workload()).outcome == admission.UNTARGETED  # no policy in the namespace
    # A policy of another namespace (the index is per namespace, but the request's namespace decides).
    other = spec.parse_policy({"apiVersion": spec.API_VERSION, "kind": spec.KIND,
                               "metadata": {"name": "p", "namespace": "elsewhere"},
                               "spec": {"workloadRef": {"name": "app"}, "preconditions": [TCP]}})
    assert decide(workload(), other).outcome == admission.UNTARGETED


def test_kinds_that_are_not_workloads_and_objects_being_deleted_are_left_alone() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": NS}, "spec": {}}
    assert decide(svc, policy()).outcome == admission.NOT_GATED
    dying = workload()
    dying["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert decide(dying, policy(), operation="UPDATE").outcome == admission.NOT_GATED


def test_a_render_error_admits_unchanged_with_a_warning_naming_the_policy_field() -> None:
    cmd = {"name": "wait", "command": {"fromContainer": "serverr", "command": ["true"]}}
    d = decide(workload(), policy(preconditions=[cmd]))
    assert d.outcome == admission.RENDER_ERROR and d.patch == ()
    assert len(d.warnings) == 1
    assert "DependencyPolicy p" in d.warnings[0] and "spec.preconditions[0].command.fromContainer" in d.warnings[0]
    assert "Deployment shop/app" in d.warnings[0]


def test_a_protected_namespace_is_never_gated() -> None:
    d = decide(workload(), policy(), protected=frozenset({NS}))
    assert d.outcome == admission.PROTECTED and d.patch == ()
    assert "protected" in d.warnings[0]


def test_a_job_is_rendered_on_create_only_its_template_cannot_change_after() -> None:
    pol = policy(target={"workloadRef": {"kind": "Job", "name": "app"}})
    assert decide(workload("Job"), pol).outcome == admission.RENDERED
    # An UPDATE of a Job created ungated (before its policy) must not touch the immutable template:
    # the API server would refuse the user's update (a label, suspend) because of depgate.
    d = decide(workload("Job"), pol, operation="UPDATE")
    assert d.outcome == admission.IMMUTABLE and d.patch == ()


# --------------------------------------------------------------------------- who owns what was added


NOW = "2026-12-01T18:00:00Z"


def test_the_rendering_is_owned_by_depgate_as_if_it_had_applied_it_and_other_managers_keep_theirs() -> None:
    pol = policy(preconditions=[TCP, SERVICE])
    obj = workload()
    d = admission.decide(obj, NS, "CREATE", [pol], CONFIG, now=NOW)
    assert admitted(obj, d) == d.result
    managed = d.result["metadata"]["managedFields"]
    assert managed[0] == obj["metadata"]["managedFields"][0]  # kubectl's entry untouched
    ours = managed[1]
    assert {k: v for k, v in ours.items() if k != "fieldsV1"} == {
        "apiVersion": "apps/v1", "fieldsType": "FieldsV1", "manager": "depgate", "operation": "Apply", "time": NOW}
    fs = ours["fieldsV1"]
    assert fs["f:metadata"] == {"f:annotations": {"f:depgate.io/policy": {}, "f:depgate.io/applied": {}}}
    inits = fs["f:spec"]["f:template"]["f:spec"]["f:initContainers"]
    assert list(inits) == ['k:{"name":"depgate-db"}', 'k:{"name":"depgate-api"}']
    db = inits['k:{"name":"depgate-db"}']
    assert db["."] == {} and db["f:args"] == {} and db["f:command"] == {}  # atomic lists
    assert db["f:securityContext"]["f:capabilities"] == {"f:drop": {}}
    assert db["f:resources"]["f:requests"] == {"f:cpu": {}, "f:memory": {}}
    api = inits['k:{"name":"depgate-api"}']
    assert api["f:env"]['k:{"name":"DEPGATE_NAMESPACE"}'] == {".": {}, "f:name": {}, "f:valueFrom": {"f:fieldRef": {}}}
    # no field of the user's: not the app container, not the labels, not the name
    assert set(fs) == {"f:metadata", "f:spec"} and set(fs["f:spec"]["f:template"]["f:spec"]) == {"f:initContainers"}


def test_a_stale_entry_of_depgate_is_replaced_and_an_object_without_managed_fields_gets_none() -> None:
    obj = workload()
    obj["metadata"]["managedFields"].append({"manager": "depgate", "operation": "Apply", "apiVersion": "apps/v1",
                                             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}})
    d = admission.decide(obj, NS, "UPDATE", [policy()], CONFIG, now=NOW)
    assert [m["manager"] for m in d.result["metadata"]["managedFields"]] == ["kubectl", "depgate"]
    assert d.result["metadata"]["managedFields"][1]["fieldsV1"] != {"f:spec": {}}
    del obj["metadata"]["managedFields"]
    d = admission.decide(obj, NS, "CREATE", [policy()], CONFIG, now=NOW)
    assert "managedFields" not in d.result["metadata"]
    # an object already rendered is left as it is, whoever owns its fields
    done = admitted(workload(), decide(workload(), policy()))
    assert admission.decide(done, NS, "UPDATE", [policy()], CONFIG, now=NOW).patch == ()


# --------------------------------------------------------------------------- which policy


def test_precedence_is_the_reconciles_a_workload_ref_over_a_selector_and_kinds_matter() -> None:
    ref = policy("zz-ref", {"workloadRef": {"name": "app"}}, preconditions=[{"name": "r", "dns": {"name": "a"}}])
    sel = policy("aa-sel", {"selector": {"matchLabels": {"app": "app"}}})
    d = decide(workload(), sel, ref)
    assert d.policy == "zz-ref"
    assert admitted(workload(), d)["metadata"]["annotations"][POLICY_ANNOTATION] == "zz-ref"
    # a selector for Deployments only (the default kinds) leaves a StatefulSet of the same labels alone
    assert decide(workload("StatefulSet"), sel).outcome == admission.UNTARGETED
    sts = policy("s", {"selector": {"matchLabels": {"app": "app"}, "kinds": ["StatefulSet"]}})
    assert decide(workload("StatefulSet"), sts).policy == "s"
    # a workloadRef names a kind: a Job of the Deployment's name is not its target
    assert decide(workload("Job"), ref).outcome == admission.UNTARGETED


def test_an_object_of_a_generated_name_is_rendered_for_a_selector_and_never_for_a_workload_ref() -> None:
    obj = workload("Job")
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "app-"
    sel = policy("sel", {"selector": {"matchLabels": {"app": "app"}, "kinds": ["Job"]}})
    d = decide(obj, sel)
    assert d.outcome == admission.RENDERED and d.policy == "sel"
    out = admitted(obj, d)
    assert "name" not in out["metadata"] and out["metadata"]["generateName"] == "app-"  # the API server names it
    assert [c["name"] for c in pod_spec(out)["initContainers"]] == ["depgate-db"]
    assert decide(obj, policy(target={"workloadRef": {"kind": "Job", "name": "app"}})).outcome == admission.UNTARGETED
    cmd = {"name": "wait", "command": {"fromContainer": "nope", "command": ["true"]}}
    broken = policy("sel", {"selector": {"matchLabels": {"app": "app"}, "kinds": ["Job"]}}, preconditions=[cmd])
    assert "Job shop/app-*" in decide(obj, broken).warnings[0]


def test_the_namespace_comes_from_the_request_when_the_object_has_none() -> None:
    obj = workload()
    del obj["metadata"]["namespace"]
    d = decide(obj, policy())
    out = admitted(obj, d)
    assert "namespace" not in out["metadata"]  # not added by depgate: the API server sets it
    assert out["metadata"]["annotations"][POLICY_ANNOTATION] == "p"


# --------------------------------------------------------------------------- the JSON patch itself


def test_diff_and_apply_patch_round_trip_and_escape_pointers() -> None:
    a = {"x": {"a/b": 1, "t~": [1, 2]}, "gone": True, "l": [{"name": "n", "v": 1}]}
    b = {"x": {"a/b": 2, "t~": [1, 2, 3], "new": {}}, "l": [{"name": "n", "v": 2}]}
    ops = admission.diff(a, b)
    assert {"op": "replace", "path": "/x/a~1b", "value": 2} in ops
    assert {"op": "replace", "path": "/x/t~0", "value": [1, 2, 3]} in ops
    assert {"op": "remove", "path": "/gone"} in ops
    assert {"op": "replace", "path": "/l/0/v", "value": 2} in ops
    assert admission.apply_patch(a, ops) == b
    assert admission.diff(b, b) == []
    assert a["x"]["a/b"] == 1  # nothing mutated


def test_apply_patch_refuses_paths_that_name_nothing() -> None:
    with pytest.raises(admission.PatchError, match="no such key"):
        admission.apply_patch({"a": {}}, [{"op": "replace", "path": "/a/b", "value": 1}])
    with pytest.raises(admission.PatchError, match="no key 'x'"):
        admission.apply_patch({"a": {}}, [{"op": "add", "path": "/x/y", "value": 1}])
    with pytest.raises(admission.PatchError, match="past the end"):
        admission.apply_patch({"a": [1]}, [{"op": "add", "path": "/a/3", "value": 1}])
    assert admission.apply_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}]) == {"a": [1, 2]}
    assert admission.apply_patch({"a": [1, 3]}, [{"op": "add", "path": "/a/1", "value": 2}]) == {"a": [1, 2, 3]}


# --------------------------------------------------------------------------- policies the watch has not delivered


def raw_policy(name: str = "p", target: str = "app", host: str = "db") -> dict[str, Any]:
    pre = {"name": "db", "tcp": {"host": host, "port": 1}}
    return {"apiVersion": spec.API_VERSION, "kind": spec.KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"workloadRef": {"name": target}, "preconditions": [pre]}}


def test_a_policy_just_admitted_gates_a_workload_before_the_watch_delivers_it() -> None:
    pending = admission.Pending(ttl=30)
    pending.admitted(raw_policy(), now=100.0)
    pols = pending.policies(NS, [], now=100.01)
    assert [p.name for p in pols] == ["p"]
    assert decide(workload(), *pols).outcome == admission.RENDERED
    assert pending.policies("elsewhere", [], now=100.01) == []
    # the watch delivers an older version first (an event in flight): the admitted one still counts
    pending.heard((NS, "p"), raw_policy(host="old"))
    assert pending.policies(NS, [policy(preconditions=[{"name": "db", "tcp": {"host": "old", "port": 1}}])],
                            now=100.02)[0].preconditions[0].body.host == "db"
    # then the admitted version: the watch's copy is used from then on
    pending.heard((NS, "p"), raw_policy())
    assert len(pending) == 0


def test_a_pending_policy_gives_way_to_any_newer_version_the_watch_delivers() -> None:
    pending = admission.Pending(ttl=30)
    listed = raw_policy()
    listed["metadata"]["resourceVersion"] = "100"  # listed at the operator's start (or an UPDATE of version 100)
    pending.admitted(listed, now=0.0)
    pending.heard((NS, "p"), {**raw_policy(host="old"), "metadata": {"name": "p", "namespace": NS,
                                                                     "resourceVersion": "100"}})
    assert len(pending) == 1  # the same version or an older one: still the one to use
    pending.heard((NS, "p"), {**raw_policy(host="new"), "metadata": {"name": "p", "namespace": NS,
                                                                     "resourceVersion": "101"}})
    assert len(pending) == 0  # changed since it was listed: the watch's copy from now on


def test_a_pending_policy_is_forgotten_after_its_ttl_or_its_deletion_and_an_invalid_one_is_never_kept() -> None:
    pending = admission.Pending(ttl=30)
    pending.admitted(raw_policy(), now=0.0)
    assert pending.policies(NS, [], now=31.0) == [] and len(pending) == 0  # never persisted (refused later)
    pending.admitted(raw_policy(), now=0.0)
    pending.heard((NS, "p"), None)
    assert pending.policies(NS, [], now=1.0) == []
    pending.admitted({**raw_policy(), "spec": {"preconditions": []}}, now=0.0)
    assert len(pending) == 0


# --------------------------------------------------------------------------- Kopf's side


def test_kopf_serves_the_workload_handlers_at_one_path_and_watches_no_kind_because_of_them() -> None:
    import kopf

    from depgate import handlers, registry, webhook, wiring

    assert handlers.admission_policies  # the handlers module registered its handlers on import
    reg = kopf.get_default_registry()
    hooks = [h for h in reg._webhooks.get_all_handlers() if h.id == webhook.WORKLOADS_PATH]
    assert sorted(h.selector.any_name for h in hooks if h.selector) == sorted(
        k.api.plural for k in registry.WORKLOAD_KINDS.values() if k.gated)
    assert all(set(h.operations or ()) == {"CREATE", "UPDATE"} for h in hooks)
    # what Kopf watches comes from its watching, spawning, changing and indexing handlers only: the
    # policies alone (the kinds depgate.wiring asks for are watched by the adapter, scoped: Operator.rescope),
    # nothing added by the admission handlers
    watched = {s.any_name for r in (reg._watching, reg._spawning, reg._changing, reg._indexing)
               for s in r.get_all_selectors()}
    assert watched == {registry.DEPENDENCY_POLICY.plural}
    assert wiring.WATCHED_KINDS  # still every kind a precondition or a target needs, for the streams


def test_an_older_installs_configuration_without_the_workloads_webhook_is_said_and_left_as_it_is(caplog) -> None:
    import logging

    from depgate import webhook

    def client(path: str) -> dict[str, Any]:
        return {"url": f"https://127.0.0.1:9443/{path}"}

    user = webhook.service_account_user("depgate-system")
    validating, mutating = webhook.configurations(client, user)
    older = {**mutating, "webhooks": [w for w in mutating["webhooks"] if w["name"] != "workloads.depgate.io"]}

    class Kube:
        patches: list[Any] = []

        def get(self, api_version: str, kind: str, ns: Any, name: str) -> dict[str, Any]:
            return validating if kind == webhook.VALIDATING else older

        def json_patch(self, *args: Any) -> None:
            self.patches.append(args)

    kube = Kube()
    with caplog.at_level(logging.WARNING, logger="depgate.webhook"):
        assert webhook.register(kube, client, user) == []  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records]
    assert any("has no webhook workloads.depgate.io (installed by an older depgate)" in m
               and "not rendered at admission" in m and "kubectl apply --server-side -k manifests/" in m
               for m in said), said
    assert kube.patches == []  # the clientConfigs are the wanted ones already; no webhook is added


def test_an_operator_serving_some_namespaces_renders_for_their_policies_only() -> None:
    from depgate import handlers
    from depgate.settings import Settings

    op = handlers.Operator(Settings(namespaces=(NS,)))
    other = {**raw_policy(), "metadata": {"name": "p", "namespace": "elsewhere"}}
    for obj in (raw_policy(), other):  # both admitted by the (cluster-wide) validating webhook
        op.admitted.admitted(obj, now=time.monotonic())
    assert [p.name for p in handlers.admission_policies(op, NS)] == ["p"]
    assert handlers.admission_policies(op, "elsewhere") == []  # not this operator's: it would never reconcile it
