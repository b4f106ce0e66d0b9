"""depgate.plan: what one reconcile writes, decided from what it read (no API, no fake: plain data)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch  # Kopf's own JSON-patch library (a dependency of kopf)

from depgate import plan, render, spec
from depgate.constants import APPLIED_HASH_ANNOTATION, POLICY_ANNOTATION
from depgate.graph import DEPENDENCY_CYCLE

NS = "shop"
CONFIG = render.RenderConfig(waiter_image="depgate/depgate:test")
TCP = {"name": "db", "tcp": {"host": "db", "port": 5432}}
SECRET = {"name": "creds", "secret": {"name": "creds"}}


def policy(name: str = "p", target: dict[str, Any] | None = None, preconditions: list[dict[str, Any]] | None = None,
           **fields: Any) -> spec.Policy:
    return spec.parse_policy({
        "apiVersion": spec.API_VERSION, "kind": spec.KIND,
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": {**(target or {"workloadRef": {"name": "app"}}), "preconditions": preconditions or [TCP], **fields},
    })


def deployment(name: str = "app", *, init: tuple[str, ...] = (), labels: dict[str, str] | None = None,
               claim: str | None = None, sa: str | None = None, rv: str = "7") -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [{"name": "server", "image": "node:20"}]}
    if init:
        pod["initContainers"] = [{"name": n, "image": "busybox", "command": ["true"]} for n in init]
    if sa:
        pod["serviceAccountName"] = sa
    md: dict[str, Any] = {"name": name, "namespace": NS, "resourceVersion": rv, "uid": f"uid-{name}",
                          "labels": labels or {"app": name}}
    if claim:
        md["annotations"] = {POLICY_ANNOTATION: claim}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": md,
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod}}}


def gated(pol: spec.Policy, dep: dict[str, Any]) -> dict[str, Any]:
    """The Deployment as depgate's finished apply leaves it (placement honoured, hash recorded)."""
    live = render.rendered(pol, dep, CONFIG)
    live["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = plan.body_hash(render.apply_body(pol, dep, CONFIG))
    return live


def inits(body: dict[str, Any]) -> list[str]:
    return [c["name"] for c in body["spec"]["template"]["spec"].get("initContainers") or []]


# --------------------------------------------------------------------------- up to date: no write


def test_a_deployment_already_gated_as_planned_gets_no_write() -> None:
    pol = policy()
    p = plan.plan(pol, plan.Live([gated(pol, deployment())]), CONFIG)
    assert p.applies == [] and p.problems == () and p.releases == ()
    assert [t.name for t in p.targets] == ["app"] and p.targets[0].problem is None


def test_a_gated_deployment_someone_changed_ours_on_is_applied_again() -> None:
    pol = policy()
    live = gated(pol, deployment())
    live["spec"]["template"]["spec"]["initContainers"][0]["image"] = "evil:latest"
    assert len(plan.plan(pol, plan.Live([live]), CONFIG).applies) == 1


def test_a_changed_policy_is_applied_again() -> None:
    live = gated(policy(), deployment())
    changed = policy(preconditions=[{"name": "db", "tcp": {"host": "db", "port": 5433}}])
    (target,) = plan.plan(changed, plan.Live([live]), CONFIG).targets
    assert len(target.applies) == 1
    assert target.applies[0]["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] == plan.body_hash(
        render.apply_body(changed, live, CONFIG))


# --------------------------------------------------------------------------- the applies


def test_a_deployment_without_init_containers_of_its_own_gets_one_apply_with_the_hash() -> None:
    pol = policy()
    (target,) = plan.plan(pol, plan.Live([deployment()]), CONFIG).targets
    (body,) = target.applies
    assert inits(body) == ["depgate-db"]
    assert body["metadata"]["annotations"] == {POLICY_ANNOTATION: "p",
                                               APPLIED_HASH_ANNOTATION: plan.body_hash(
                                                   render.apply_body(pol, deployment(), CONFIG))}
    assert "resourceVersion" not in body["metadata"] and target.resource_version == "7"


def test_ours_before_the_users_own_init_containers_takes_an_ordering_apply_first() -> None:
    # server-side apply appends new entries after the live ones: naming the user's entries once
    # (key only) puts ours first; the second apply, ours only, gives theirs back to them alone
    (target,) = plan.plan(policy(), plan.Live([deployment(init=("migrate", "warm"))]), CONFIG).targets
    ordering, final = target.applies
    assert inits(ordering) == ["depgate-db", "migrate", "warm"]
    assert ordering["spec"]["template"]["spec"]["initContainers"][1] == {"name": "migrate"}
    assert ordering["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] == plan.ORDERING_HASH
    assert inits(final) == ["depgate-db"]
    assert final["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] not in (None, plan.ORDERING_HASH)


def test_ours_after_the_users_own_init_containers_needs_no_ordering_apply() -> None:
    (target,) = plan.plan(policy(placement="AfterExisting"), plan.Live([deployment(init=("migrate",))]),
                          CONFIG).targets
    assert [inits(b) for b in target.applies] == [["depgate-db"]]


def test_an_apply_is_sent_guarded_by_the_version_it_is_given_and_the_plan_is_left_alone() -> None:
    (target,) = plan.plan(policy(), plan.Live([deployment()]), CONFIG).targets
    sent = plan.guarded(target.applies[0], "42")
    assert sent["metadata"]["resourceVersion"] == "42"
    assert "resourceVersion" not in target.applies[0]["metadata"]


def test_the_placement_patch_reorders_what_the_apply_left_out_of_place() -> None:
    pol = policy()
    applied = deployment(init=("migrate",), rv="9")
    applied["spec"]["template"]["spec"]["initContainers"].append({"name": "depgate-db", "image": "x"})
    patch = plan.reorder(pol, applied)
    assert patch is not None
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "9"}
    assert [c["name"] for c in patch[1]["value"]] == ["depgate-db", "migrate"]
    assert plan.reorder(policy(placement="AfterExisting"), applied) is None


def test_a_render_error_is_a_problem_and_no_write() -> None:
    pol = policy(preconditions=[{"name": "seed", "command": {"fromContainer": "nope", "command": ["true"]}}])
    (target,) = plan.plan(pol, plan.Live([deployment()]), CONFIG).targets
    assert target.applies == () and target.problem is not None
    assert target.problem.reason == "ContainerNotFound" and "nope" in target.problem.message
    assert target.problem.stalls == "ContainerNotFound"  # a typo only a person can fix (issue 16, item 2)


# --------------------------------------------------------------------------- targets, conflicts, releases


def test_a_missing_workload_ref_target_is_a_problem_and_still_wanted() -> None:
    p = plan.plan(policy(), plan.Live([]), CONFIG)
    assert [pr.reason for pr in p.problems] == [plan.TARGET_NOT_FOUND] and p.wanted == (("Deployment", "app"),)
    assert p.targets == ()


def test_a_deployment_another_existing_policy_claims_is_a_conflict_and_no_write() -> None:
    dep = deployment(claim="other")
    pol = policy()
    assert plan.claimants(pol, [dep]) == {"other"}
    (target,) = plan.plan(pol, plan.Live([dep], claimants={"other": True}), CONFIG).targets
    assert target.applies == () and target.problem == plan.Problem(
        plan.CONFLICT, "deployment app is already gated by DependencyPolicy other; this policy leaves it alone",
        stalls=plan.CONFLICT)


def test_a_claim_of_a_policy_that_no_longer_exists_is_taken_over() -> None:
    (target,) = plan.plan(policy(), plan.Live([deployment(claim="gone")], claimants={"gone": False}), CONFIG).targets
    assert target.problem is None and len(target.applies) == 1


def test_a_selector_targets_the_matching_deployments_and_releases_dropped_and_claimed_ones() -> None:
    pol = policy(target={"selector": {"matchLabels": {"tier": "web"}}})
    listed = [
        deployment("a", labels={"tier": "web"}),
        deployment("b", labels={"tier": "db"}, claim="p"),  # gated, never recorded in status.targets
        deployment("c", labels={"tier": "db"}),  # recorded, no longer selected
        deployment("d", labels={"tier": "db"}, claim="other"),  # someone else's
    ]
    p = plan.plan(pol, plan.Live(listed, prior_targets=(("Deployment", "a"), ("Deployment", "c"))), CONFIG)
    assert [t.name for t in p.targets] == ["a"] and p.wanted == ()
    assert p.releases == (("Deployment", "b"), ("Deployment", "c"))
    assert plan.claimants(pol, listed) == set()  # "other" claims only an unselected Deployment


def test_a_selector_that_matches_nothing_is_a_problem() -> None:
    p = plan.plan(policy(target={"selector": {"matchLabels": {"tier": "web"}}}), plan.Live([deployment()]), CONFIG)
    assert [pr.reason for pr in p.problems] == [plan.TARGET_NOT_FOUND] and p.targets == ()


def test_a_workload_ref_releases_the_previous_target_when_it_moves() -> None:
    p = plan.plan(policy(target={"workloadRef": {"name": "new"}}),
                  plan.Live([deployment("new")], prior_targets=(("Deployment", "old"), ("Deployment", "new"))), CONFIG)
    assert p.releases == (("Deployment", "old"),)


def test_the_release_body_names_nothing_but_the_guard() -> None:
    body = plan.release_body("p", deployment(claim="p", rv="12"))
    assert body == {"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "app", "namespace": NS, "resourceVersion": "12"}}


def test_nothing_is_released_that_this_policy_does_not_claim_or_that_garbage_collection_removes() -> None:
    assert plan.release_body("p", None) is None
    assert plan.release_body("p", deployment(claim="other")) is None
    owned = deployment(claim="p")
    owned["metadata"]["ownerReferences"] = [{"kind": spec.KIND, "name": "p", "uid": "uid-p"}]
    assert plan.release_body("p", owned) is None


# --------------------------------------------------------------------------- template mode


TEMPLATE = {"template": {"metadata": {"name": "web", "labels": {"app": "web"}},
                         "spec": {"selector": {"matchLabels": {"app": "web"}},
                                  "template": {"metadata": {"labels": {"app": "web"}},
                                               "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}}


def test_template_mode_creates_its_deployment_owned_by_the_policy() -> None:
    pol = policy(target=TEMPLATE)
    assert plan.target_name(pol) == "web"
    p = plan.plan(pol, plan.Live([]), CONFIG)
    assert p.targets == () and p.template is not None and p.template.name == "web"
    body = p.template.apply
    assert body is not None
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-p" and body["metadata"]["namespace"] == NS
    assert body["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] == plan.body_hash(
        render.rendered_template(pol, CONFIG, render.owner_reference(pol)))
    assert inits(body) == ["depgate-db"]


def test_template_mode_leaves_an_up_to_date_deployment_alone() -> None:
    pol = policy(target=TEMPLATE)
    first = plan.plan(pol, plan.Live([]), CONFIG).template
    assert first is not None and first.apply is not None
    live = copy.deepcopy(first.apply)
    live["metadata"].update(resourceVersion="3", uid="uid-web")
    live["spec"]["replicas"] = 1  # a server default: not ours to compare
    p = plan.plan(pol, plan.Live([live]), CONFIG)
    assert p.template is not None and p.template.apply is None and p.applies == []


def test_template_mode_never_takes_over_a_deployment_it_did_not_create() -> None:
    pol = policy(target=TEMPLATE)
    p = plan.plan(pol, plan.Live([deployment("web")]), CONFIG)
    assert p.template is None and p.applies == []
    (problem,) = p.problems
    assert problem.reason == plan.CONFLICT and problem.stalls == plan.CONFLICT and "not owned" in problem.message


def test_template_mode_names_the_deployment_after_the_policy_without_a_name() -> None:
    tmpl = copy.deepcopy(TEMPLATE)
    del tmpl["template"]["metadata"]["name"]
    pol = policy("shopfront", target=tmpl)
    assert plan.target_name(pol) == "shopfront"
    p = plan.plan(pol, plan.Live([]), CONFIG)
    assert p.template is not None and p.template.name == "shopfront"


def test_a_template_that_cannot_be_rendered_stalls_as_an_invalid_spec() -> None:
    pol = policy(target=TEMPLATE, preconditions=[{"name": "s", "command": {"fromContainer": "nope",
                                                                           "command": ["true"]}}])
    p = plan.plan(pol, plan.Live([]), CONFIG)
    (problem,) = p.problems
    assert (problem.reason, problem.stalls) == (plan.INVALID_TEMPLATE, plan.INVALID_SPEC) and p.template is None


# --------------------------------------------------------------------------- the wait RBAC


def test_the_wait_rbac_binds_the_shipped_cluster_role_to_the_gated_deployments_service_accounts() -> None:
    pol = policy(preconditions=[SECRET])
    (binding,) = plan.wait_rbac(pol, [deployment("a", sa="api"), deployment("b"), deployment("c", sa="api")])
    # no Role: the operator writes RoleBindings of depgate-verdict-reader only (it holds get/watch on policies)
    assert binding["kind"] == "RoleBinding" and binding["metadata"]["name"] == "depgate-verdict-p"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": plan.VERDICT_READER}
    assert [s["name"] for s in binding["subjects"]] == ["api", "default"]
    assert binding["metadata"]["ownerReferences"][0]["uid"] == "uid-p"
    # a new name: the old depgate-wait-<policy> RoleBinding's roleRef (a Role) cannot be changed
    assert plan.verdict_binding_name("p") != render.wait_role_name("p")
    long_a, long_b = "p" * 245 + "-one", "p" * 245 + "-two"
    assert plan.verdict_binding_name(long_a) != plan.verdict_binding_name(long_b)
    assert len(plan.verdict_binding_name(long_a)) <= 253


def test_no_wait_rbac_without_an_operator_judged_precondition_or_anything_gated() -> None:
    assert plan.wait_rbac(policy(preconditions=[TCP]), [deployment()]) == []
    assert plan.wait_rbac(policy(preconditions=[SECRET]), []) == []


def test_a_live_object_with_server_fields_holds_what_we_want_a_changed_one_does_not() -> None:
    (binding,) = plan.wait_rbac(policy(preconditions=[SECRET]), [deployment()])
    live = copy.deepcopy(binding)
    live["metadata"].update(uid="u", resourceVersion="5", creationTimestamp="2026-01-01T00:00:00Z")
    assert plan.holds(live, binding)
    live["subjects"][0]["name"] = "someone-else"
    assert not plan.holds(live, binding)
    assert not plan.holds(None, binding)


# --------------------------------------------------------------------------- progress -> status words


def test_the_first_problem_says_applied_and_the_first_stall_says_stalled() -> None:
    done = plan.Progress(problems=[plan.kept_changing("a"), plan.refused("b", "no"), plan.apply_failed("c", "X", "y")])
    assert done.applied().ok is False and done.applied().reason == plan.RETRYING
    stalled = done.stalled("a cycle")
    assert stalled is not None and stalled.reason == plan.REFUSED
    assert done.requeue_after == plan.APPLY_ERROR_RETRY_SECONDS  # the latest word on retrying
    assert done.result == "ok"


def test_without_problems_applied_counts_the_gated_deployments_and_a_cycle_stalls() -> None:
    done = plan.Progress(problems=[], gated=[deployment("a"), deployment("b")])
    assert done.applied().ok and done.applied().message == "init containers in place on 2 Deployments"
    assert plan.Progress(problems=[], gated=[deployment()]).applied().message.endswith("on 1 Deployment")
    stalled = done.stalled("p -> q -> p")
    assert stalled is not None and (stalled.reason, stalled.message) == (DEPENDENCY_CYCLE, "p -> q -> p")
    assert done.stalled(None) is None and done.requeue_after is None


def test_a_conflict_is_the_reconciles_result() -> None:
    conflict = plan.Problem(plan.CONFLICT, "taken", stalls=plan.CONFLICT)
    assert plan.Progress(problems=[conflict]).result == "conflict"


def test_the_custom_resources_a_policy_names_come_once_each_in_declared_order() -> None:
    def resource(name: str, kind: str, obj: str) -> dict[str, Any]:
        return {"name": name, "resource": {"apiVersion": "example.com/v1", "kind": kind, "name": obj,
                                           "condition": "Ready"}}
    pol = policy(preconditions=[resource("b", "Widget", "w2"), TCP, resource("a", "Gadget", "g"),
                                resource("c", "Widget", "w2")])
    assert plan.custom_resources(pol, NS) == [("example.com/v1", "Widget", NS, "w2"),
                                             ("example.com/v1", "Gadget", NS, "g")]


def test_secret_preconditions_are_watched_per_namespace_with_the_custom_resources() -> None:
    pol = policy(preconditions=[SECRET, {"name": "w", "resource": {"apiVersion": "example.com/v1", "kind": "Widget",
                                                                 "name": "w", "condition": "Ready"}},
                                {"name": "again", "secret": {"name": "creds"}}])
    assert plan.custom_resources(pol, NS) == [("v1", "Secret", NS, "creds"), ("example.com/v1", "Widget", NS, "w")]


# --------------------------------------------------------------------------- protected namespaces


def test_a_policy_in_a_protected_namespace_changes_nothing_and_says_why() -> None:
    pol = policy()
    live = plan.Live([deployment()], prior_targets=(("Deployment", "app"),), protected=frozenset({NS, "kube-system"}))
    p = plan.plan(pol, live, CONFIG)
    assert p.applies == [] and p.targets == () and p.releases == () and p.template is None
    (problem,) = p.problems
    assert (problem.reason, problem.stalls) == (plan.PROTECTED, plan.PROTECTED)
    assert f"namespace {NS} is protected" in problem.message and "kube-system" in problem.message
    tmpl = policy(target={"template": {"spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
        "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}})
    assert plan.plan(tmpl, plan.Live([], protected=frozenset({NS})), CONFIG).applies == []
    assert plan.plan(pol, plan.Live([deployment()], protected=frozenset({"kube-system"})), CONFIG).applies


# --------------------------------------------------------------------------- workloadRef over selector


SEL = {"selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}  # every Deployment here


def test_a_selector_leaves_a_deployment_a_workloadref_names_even_when_it_claimed_it_first() -> None:
    broad = policy("broad", target=SEL)
    mine = policy("mine")
    deps = [gated(broad, deployment("app", claim="broad")), deployment("other")]
    live = plan.Live(deps, prior_targets=(("Deployment", "app"), ("Deployment", "other")),
                     rivals=plan.rivals(broad, deps, [mine, broad]))
    p = plan.plan(broad, live, CONFIG)
    assert [t.name for t in p.targets] == ["other"]
    assert p.releases == ()  # not released: mine's apply takes it over in one write (one rollout)
    (note,) = p.problems
    assert note.note and note.reason == plan.PREEMPTED and "left to DependencyPolicy mine" in note.message
    done = plan.Progress(problems=list(p.problems), gated=[deps[1]])
    assert done.applied().ok and "left to DependencyPolicy mine" in done.applied().message
    assert done.stalled(None) is None


def test_a_workloadref_takes_its_deployment_over_from_a_selector_and_says_so() -> None:
    broad = policy("broad", target=SEL)
    mine = policy("mine")
    dep = gated(broad, deployment("app", claim="broad"))
    live = plan.Live([dep], claimants={"broad": True}, rivals=plan.rivals(mine, [dep], [broad, mine]))
    p = plan.plan(mine, live, CONFIG)
    (target,) = p.targets
    assert target.problem is None and target.applies
    assert target.applies[-1]["metadata"]["annotations"][POLICY_ANNOTATION] == "mine"
    (note,) = p.problems
    assert note.note and note.reason == plan.PRECEDENCE and "DependencyPolicy broad" in note.message
    # and once it holds the claim, the note stays (both statuses say it)
    held = gated(mine, deployment("app", claim="mine"))
    again = plan.plan(mine, plan.Live([held], rivals=plan.rivals(mine, [held], [broad])), CONFIG)
    assert again.applies == [] and [n.reason for n in again.problems] == [plan.PRECEDENCE]


def test_among_equals_the_first_claim_wins() -> None:
    first, second = policy("first"), policy("second")
    dep = gated(first, deployment("app", claim="first"))
    live = plan.Live([dep], claimants={"first": True}, rivals=plan.rivals(second, [dep], [first]))
    (target,) = plan.plan(second, live, CONFIG).targets
    assert target.problem is not None and target.problem.reason == plan.CONFLICT and not target.applies
    s1, s2 = policy("s1", target={"selector": {"matchLabels": {"app": "app"}}}), policy("s2", target=SEL)
    dep = gated(s1, deployment("app", claim="s1"))
    live = plan.Live([dep], claimants={"s1": True}, rivals=plan.rivals(s2, [dep], [s1]))
    (target,) = plan.plan(s2, live, CONFIG).targets
    assert target.problem is not None and target.problem.reason == plan.CONFLICT


def test_a_workloadref_never_takes_over_a_template_policys_own_deployment() -> None:
    mine = policy("mine")
    dep = deployment("app", claim="tmpl")
    dep["metadata"]["ownerReferences"] = [{"kind": "DependencyPolicy", "name": "tmpl", "uid": "u"}]
    live = plan.Live([dep], claimants={"tmpl": True}, rivals={("Deployment", "app"): {"tmpl": plan.SELECTOR}})
    (target,) = plan.plan(mine, live, CONFIG).targets
    assert target.problem is not None and target.problem.reason == plan.CONFLICT


def test_rivals_are_the_other_policies_targeting_each_deployment() -> None:
    deps = [deployment("app"), deployment("web", labels={"app": "web", "tier": "web"})]
    others = [policy("ref", target={"workloadRef": {"name": "web"}}), policy("sel", target=SEL),
              policy("me", target=SEL)]
    assert plan.rivals(policy("me", target=SEL), deps, others) == {
        ("Deployment", "app"): {"sel": plan.SELECTOR},
        ("Deployment", "web"): {"ref": plan.WORKLOAD_REF, "sel": plan.SELECTOR}}


def test_a_template_create_refused_by_rbac_names_the_rolebinding_to_create() -> None:
    problem = plan.template_forbidden(NS, "app", "deployments.apps is forbidden")
    assert problem.stalls == plan.FORBIDDEN and problem.retry_after == plan.APPLY_ERROR_RETRY_SECONDS
    assert (f"kubectl create rolebinding depgate-template-creator -n {NS} --clusterrole=depgate-template-creator "
            "--serviceaccount=depgate-system:depgate") in problem.message


def test_a_job_rendered_at_admission_is_gated_whatever_its_hash_and_one_created_ungated_is_a_note() -> None:
    """A Job's template cannot change: the reconcile never writes to it. Rendered at admission (claimed,
    depgate's init containers as rendered now), it is gated even when the hash differs (a Job created with
    generateName had no name when the webhook hashed its apply body); created without them, a note says so."""
    pol = policy("mig", target={"workloadRef": {"kind": "Job", "name": "mig-x7k2p"}})
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "mig-x7k2p", "namespace": NS, "resourceVersion": "5"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "m"}]}}}}
    ungated = plan.target_writes(pol, job, CONFIG)
    assert ungated.applies == () and ungated.problem is None
    assert ungated.note is not None and "job mig-x7k2p" in ungated.note and "ungated" in ungated.note
    admitted = render.rendered(pol, {**job, "metadata": {**job["metadata"], "name": None}}, CONFIG)
    admitted["metadata"]["name"] = "mig-x7k2p"
    admitted["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = "hash-of-a-nameless-body"
    gated = plan.target_writes(pol, admitted, CONFIG)
    assert (gated.applies, gated.problem, gated.note) == ((), None, None)
    assert plan.release_body("mig", admitted) is None and plan.leftovers_patch(admitted) is None  # never written


def test_leftovers_after_a_release_are_removed_by_a_guarded_json_patch() -> None:
    """Entries another field manager co-owns stay after the release apply; the patch takes out exactly
    depgate's (init containers, volumes, mounts) and nothing of the user's."""
    gone = render.rendered(policy("p"), deployment("app", init=("migrate",)), CONFIG)
    gone["metadata"]["resourceVersion"] = "12"
    patch = plan.leftovers_patch(gone)
    assert patch is not None and patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "12"}
    clean = jsonpatch.apply_patch(gone, patch)
    assert [c["name"] for c in clean["spec"]["template"]["spec"]["initContainers"]] == ["migrate"]
    assert plan.leftovers_patch(clean) is None
    assert plan.leftovers_patch(None) is None


def test_a_jobs_pod_held_at_the_gate_is_said_to_stay_held_not_to_run_ungated() -> None:
    from depgate import gates

    pol = policy("mig", target={"workloadRef": {"kind": "Job", "name": "mig"}})
    held = {"metadata": {"name": "mig-1"}, "spec": {"schedulingGates": [{"name": gates.GATE}], "containers": []}}
    notes = plan.held_notes(pol, {("Job", "mig"): [held], ("Deployment", "web"): [held]})
    assert list(notes) == [("Job", "mig")]  # a Deployment's held pod is replaced by the rollout: no note
    assert notes[("Job", "mig")] == gates.held_message("mig", "Job", "mig", template_mutable=False)
    assert plan.held_notes(pol, {("Job", "mig"): [{"metadata": {"name": "x"}, "spec": {}}]}) == {}


def test_depgate_entries_the_policy_no_longer_renders_are_patched_out_after_the_apply() -> None:
    """The golden rerender-stale case: a Deployment file copied from a gated Deployment carries depgate's
    old entries, co-owned by its user's apply; the apply cannot remove them, this patch does (and keeps
    ours and the user's own)."""
    import yaml
    from tests.unit.test_render import GOLDEN

    pol = spec.parse_policy(yaml.safe_load((GOLDEN / "rerender-stale" / "policy.yaml").read_text()))
    live = yaml.safe_load((GOLDEN / "rerender-stale" / "deployment.yaml").read_text())
    live["metadata"]["resourceVersion"] = "3"
    patch = plan.stale_patch(pol, live, CONFIG)
    assert patch is not None and patch[0]["op"] == "test"
    clean = jsonpatch.apply_patch(live, patch)
    before = [c["name"] for c in live["spec"]["template"]["spec"]["initContainers"]]
    assert "depgate-model" in before  # the removed download's init container
    pod = clean["spec"]["template"]["spec"]
    # the stale one gone, the policy's own (still rendered) and the user's kept, in their order
    assert [c["name"] for c in pod["initContainers"]] == [n for n in before if n != "depgate-model"]
    expected = yaml.safe_load((GOLDEN / "rerender-stale" / "expected.yaml").read_text())["spec"]["template"]["spec"]
    ours = sorted(v["name"] for v in expected.get("volumes") or [] if v["name"].startswith("depgate-"))
    assert sorted(v["name"] for v in pod.get("volumes") or [] if v["name"].startswith("depgate-")) == ours
    assert [[m["name"] for m in c.get("volumeMounts") or []] for c in pod["containers"]] == [
        [m["name"] for m in c.get("volumeMounts") or []] for c in expected["containers"]]
    assert plan.stale_patch(pol, render.rendered(pol, live, CONFIG), CONFIG) is None  # nothing stale once rendered
