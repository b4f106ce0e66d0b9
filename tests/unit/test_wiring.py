"""depgate.wiring: which policies an event wakes, when a worker reconciles, which custom watches run."""

from __future__ import annotations

import math
from typing import Any

import pytest

from depgate import plan, registry, spec
from depgate.constants import POLICY_ANNOTATION
from depgate.controller import Outcome
from depgate.wiring import (
    FIRST_BACKOFF_SECONDS,
    GATED_PODS,
    KOPF_DIFFBASE,
    RECENT_SECONDS,
    WATCHED_KINDS,
    CustomClaims,
    CycleSchedule,
    Stream,
    Wiring,
    WorkerState,
    cycles_of,
    kopf_watch_restart,
    plain,
    protected,
    slim,
    to_release,
)

NS = "ns"


def policy(name: str, *, target: dict[str, Any] | None = None, pre: list[dict[str, Any]] | None = None,
           generation: int = 1, rv: str = "10", uid: str | None = None, ns: str = NS,
           **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
        "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "generation": generation,
                     "resourceVersion": rv, **metadata},
        "spec": {**(target or {"workloadRef": {"name": "web"}}), "preconditions": pre or [NAMES_NOTHING]},
    }


NAMES_NOTHING = {"name": "port", "tcp": {"host": "example.org", "port": 443}}  # judged in the pod: no object


def service(name: str) -> dict[str, Any]:
    return {"name": f"svc-{name}", "service": {"name": name}}


def wiring() -> Wiring:
    return Wiring(CustomClaims(max_watches=64, max_kinds_per_policy=8))


def running(w: Wiring, *names: str, ns: str = NS) -> None:
    """Start the workers of these policies (their flags exist, unset)."""
    for n in names:
        w.worker((ns, n))


def woken(w: Wiring) -> set[str]:
    """The policies whose flag is set; clears every flag."""
    out = {k[1] for k, flag in w.dirty.items() if flag.is_set()}
    for flag in w.dirty.values():
        flag.clear()
    return out


def deployment(name: str, labels: dict[str, str] | None = None,
               template: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "spec": {"template": {"metadata": {"labels": template or {}}}}}


def seen(w: Wiring, *pols: dict[str, Any]) -> None:
    for p in pols:
        w.policy_seen((p["metadata"]["namespace"], p["metadata"]["name"]), p)


# ---------------------------------------------------------------------- which keys an event marks


def test_a_deployment_wakes_the_policies_that_target_it_by_name_or_selector_want_it_or_depend_on_it() -> None:
    w = wiring()
    other = {"workloadRef": {"name": "elsewhere-app"}}  # (a workloadRef's own target wakes it from its spec on)
    seen(w, policy("by-name"), policy("by-selector", target={"selector": {"matchLabels": {"tier": "app"}}}),
         policy("depends", target=other, pre=[{"name": "api", "workload": {"kind": "Deployment", "name": "api"}}]),
         policy("wants", target={"workloadRef": {"name": "not-yet"}}),
         policy("other-ns", ns="elsewhere", target={"selector": {"matchLabels": {"tier": "app"}}}))
    running(w, "by-name", "by-selector", "depends", "wants")
    running(w, "other-ns", ns="elsewhere")
    w.reconciled((NS, "by-name"), w.policies[(NS, "by-name")], Outcome(targets=["web"]))
    w.reconciled((NS, "wants"), w.policies[(NS, "wants")], Outcome(wanted={"not-yet"}))
    woken(w)

    w.mark(w.deployment_seen(NS, "web", deployment("web"), deleted=False).wake)
    assert woken(w) == {"by-name"}
    w.mark(w.deployment_seen(NS, "x", deployment("x", labels={"tier": "app"}), deleted=False).wake)
    assert woken(w) == {"by-selector"}  # not the same selector's policy in another namespace
    w.mark(w.deployment_seen(NS, "x", deployment("x", labels={"tier": "db"}), deleted=False).wake)
    assert woken(w) == set()
    w.mark(w.deployment_seen(NS, "api", deployment("api"), deleted=False).wake)
    assert woken(w) == {"depends"}
    w.mark(w.deployment_seen(NS, "not-yet", deployment("not-yet"), deleted=True).wake)
    assert woken(w) == {"wants"}


def test_pods_that_changed_during_the_reconcile_that_learnt_their_deployment_make_it_run_again() -> None:
    """Issue 16, item 5: a pod event of a Deployment nobody targets yet wakes nobody; the reconcile that
    learns the target must not keep the pod counts it read before that event."""
    w = wiring()
    seen(w, policy("a"), policy("b"))
    running(w, "a", "b")
    key = (NS, "a")
    w.to_reconcile(key, w.policies[key])
    pod = {"metadata": {"labels": {"pod-template-hash": "5d8f"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f"}]}}
    assert w.pod_seen(NS, pod) == frozenset()  # nobody targets web yet
    assert w.reconciled(key, w.policies[key], Outcome(targets=["web"])).again
    # the next reconcile, with no pod event meanwhile, is the last
    w.to_reconcile(key, w.policies[key])
    assert not w.reconciled(key, w.policies[key], Outcome(targets=["web"])).again
    # and a reconcile that learns nothing new is not repeated for pods (their events wake it anyway)
    other = (NS, "b")
    w.to_reconcile(other, w.policies[other])
    w.pod_seen(NS, pod)
    assert not w.reconciled(other, w.policies[other], Outcome(targets=[])).again


def test_a_pod_wakes_the_policies_targeting_its_deployment() -> None:
    w = wiring()
    seen(w, policy("a"))
    running(w, "a")
    w.reconciled((NS, "a"), w.policies[(NS, "a")], Outcome(targets=["web"]))
    woken(w)

    def pod(owner: str, pod_hash: str = "5d8f") -> dict[str, Any]:
        return {"metadata": {"labels": {"pod-template-hash": pod_hash},
                             "ownerReferences": [{"kind": "ReplicaSet", "name": f"{owner}-5d8f"}]}}

    assert w.pod_seen(NS, pod("web")) == {(NS, "a")}
    assert w.pod_seen(NS, pod("api")) == frozenset()
    assert w.pod_seen("elsewhere", pod("web")) == frozenset()
    assert w.pod_seen(NS, pod("web", pod_hash="other")) == frozenset()  # not its ReplicaSet's hash
    assert w.pod_seen(NS, {"metadata": {}}) == frozenset()


def test_a_service_and_its_endpointslices_wake_the_policies_with_a_service_precondition_on_it() -> None:
    w = wiring()
    seen(w, policy("a", pre=[service("db")]), policy("b", pre=[service("cache")]))
    running(w, "a", "b")
    assert w.service_seen(NS, "db", {"spec": {"selector": {"app": "db"}}}, deleted=False).wake == {(NS, "a")}
    assert w.service_seen("elsewhere", "db", {}, deleted=False).wake == frozenset()
    slice_of = {"metadata": {"labels": {"kubernetes.io/service-name": "cache"}}}
    assert w.endpointslice_seen(NS, slice_of) == {(NS, "b")}
    assert w.endpointslice_seen(NS, {"metadata": {"labels": {}}}) == frozenset()


@pytest.mark.parametrize(("kind", "body"), [("Job", {"job": {"name": "x"}}), ("Secret", {"secret": {"name": "x"}}),
                                            ("ConfigMap", {"configMap": {"name": "x"}})])
def test_jobs_secrets_and_configmaps_wake_the_policies_naming_them_by_kind_and_name(
        kind: str, body: dict[str, Any]) -> None:
    w = wiring()
    seen(w, policy("a", pre=[{"name": "p", **body}]))
    assert w.object_seen(kind, NS, "x") == {(NS, "a")}
    assert w.object_seen(kind, NS, "y") == frozenset()
    others = {"Job", "Secret", "ConfigMap"} - {kind}
    assert all(w.object_seen(other, NS, "x") == frozenset() for other in others)


def test_every_watched_kind_is_routed_to_what_its_events_mean() -> None:
    w = wiring()
    seen(w, policy("a", pre=[service("svc"), {"name": "j", "job": {"name": "x"}},
                             {"name": "s", "secret": {"name": "x"}}, {"name": "c", "configMap": {"name": "x"}},
                             {"name": "st", "workload": {"kind": "StatefulSet", "name": "x"}},
                             {"name": "ds", "workload": {"kind": "DaemonSet", "name": "x"}},
                             {"name": "d", "workload": {"kind": "Deployment", "name": "x"}}]))
    w.set_targets((NS, "a"), ["web", ("CronJob", "x")])  # no precondition waits on a CronJob: a target
    bodies: dict[str, tuple[str, dict[str, Any]]] = {
        "Service": ("svc", {}),
        "EndpointSlice": ("svc-x1", {"metadata": {"labels": {registry.SERVICE_NAME_LABEL: "svc"}}}),
        "Pod": ("web-5d8f-q", {"metadata": {"labels": {"pod-template-hash": "5d8f"},
                                            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f"}]}}),
    }
    kinds = {k.kind for k in WATCHED_KINDS}
    assert kinds >= {"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Service", "EndpointSlice", "Job",
                     "ConfigMap", "Pod"}
    for kind in sorted(kinds):
        name, body = bodies.get(kind, ("x", {}))
        assert w.event(kind, NS, name, body, deleted=False).wake == {(NS, "a")}, kind
        assert w.event(kind, NS, "unnamed", {}, deleted=False).wake == frozenset(), kind
    assert w.event("Deployment", NS, "web", {}, deleted=False).wake == {(NS, "a")}  # its target
    assert w.event("Service", NS, "svc", {"spec": {"selector": {"a": "b"}}}, deleted=False).graph_changed
    assert w.event("StatefulSet", NS, "x", {"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}},
                   deleted=False).graph_changed
    assert not w.event("Job", NS, "x", {}, deleted=True).graph_changed


def test_a_workload_wakes_the_policies_with_a_precondition_on_that_kind_and_name() -> None:
    w = wiring()
    seen(w, policy("a", pre=[{"name": "p", "workload": {"kind": "StatefulSet", "name": "db"}}]))
    assert w.workload_seen("StatefulSet", NS, "db", {}, deleted=False).wake == {(NS, "a")}
    assert w.workload_seen("DaemonSet", NS, "db", {}, deleted=False).wake == frozenset()


def test_workloads_of_every_kind_and_their_pods_wake_the_policies_targeting_them() -> None:
    w = wiring()
    sel = {"matchLabels": {"tier": "app"}, "kinds": ["StatefulSet", "CronJob"]}
    seen(w, policy("s", target={"selector": sel}))
    labelled = {"metadata": {"labels": {"tier": "app"}}}
    assert w.workload_seen("StatefulSet", NS, "db", labelled, deleted=False).wake == {(NS, "s")}
    assert w.workload_seen("CronJob", NS, "nightly", labelled, deleted=False).wake == {(NS, "s")}
    assert w.workload_seen("Deployment", NS, "web", labelled, deleted=False).wake == frozenset()  # not its kind
    w.set_targets((NS, "s"), [("StatefulSet", "db"), ("CronJob", "nightly")])
    owned = {"metadata": {"ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": True}]}}
    assert w.pod_seen(NS, owned) == {(NS, "s")}
    # a pod of a Job the CronJob made (<cronjob>-<minutes>) wakes the CronJob's policy
    of_job = {"metadata": {"ownerReferences": [{"kind": "Job", "name": "nightly-29000000", "controller": True}]}}
    assert w.pod_seen(NS, of_job) == {(NS, "s")}
    other = {"metadata": {"ownerReferences": [{"kind": "DaemonSet", "name": "db", "controller": True}]}}
    assert w.pod_seen(NS, other) == frozenset()
    # a Job made by `kubectl create job --from=cronjob/nightly manual`: its name says nothing, its owner does
    manual = {"metadata": {"ownerReferences": [{"kind": "CronJob", "name": "nightly", "controller": True}]}}
    w.workload_seen("Job", NS, "manual", manual, deleted=False)
    of_manual = {"metadata": {"ownerReferences": [{"kind": "Job", "name": "manual", "controller": True}]}}
    assert w.pod_seen(NS, of_manual) == {(NS, "s")}
    w.workload_seen("Job", NS, "manual", manual, deleted=True)
    assert w.pod_seen(NS, of_manual) == frozenset() and w.cron_jobs == {}


def test_the_graph_changes_when_labels_selectors_or_templates_do_or_an_object_goes() -> None:
    w = wiring()
    assert w.deployment_seen(NS, "web", deployment("web", {"a": "1"}, {"t": "1"}), deleted=False).graph_changed
    assert not w.deployment_seen(NS, "web", deployment("web", {"a": "1"}, {"t": "1"}), deleted=False).graph_changed
    assert w.deployment_seen(NS, "web", deployment("web", {"a": "1"}, {"t": "2"}), deleted=False).graph_changed
    assert w.deployment_labels[(NS, "Deployment", "web")] == {"a": "1"}
    assert w.workload_labels[(NS, "Deployment", "web")] == {"t": "2"}
    assert w.deployment_seen(NS, "web", deployment("web", {"a": "2"}, {"t": "2"}), deleted=False).graph_changed
    assert w.deployment_seen(NS, "web", {}, deleted=True).graph_changed
    assert (NS, "Deployment", "web") not in w.deployment_labels and (NS, "Deployment", "web") not in w.workload_labels

    sel = {"spec": {"selector": {"app": "db"}}}
    assert w.service_seen(NS, "db", sel, deleted=False).graph_changed
    assert not w.service_seen(NS, "db", sel, deleted=False).graph_changed
    assert w.services[(NS, "db")] == {"app": "db"}
    assert w.service_seen(NS, "db", sel, deleted=True).graph_changed and (NS, "db") not in w.services

    ss = {"spec": {"template": {"metadata": {"labels": {"app": "db"}}}}}
    assert w.workload_seen("StatefulSet", NS, "db", ss, deleted=False).graph_changed
    assert not w.workload_seen("StatefulSet", NS, "db", ss, deleted=False).graph_changed
    assert w.workload_seen("StatefulSet", NS, "db", ss, deleted=True).graph_changed


def test_a_policy_wakes_its_worker_when_new_respecified_or_deleting_not_for_its_own_status_writes() -> None:
    w = wiring()
    key = (NS, "a")
    first = w.policy_seen(key, policy("a", rv="10"))
    assert first.wake == {key} and first.graph_changed
    status_only = w.policy_seen(key, {**policy("a", rv="11"), "status": {"phase": "x"}})
    assert status_only.wake == frozenset() and not status_only.graph_changed
    respec = w.policy_seen(key, policy("a", rv="12", generation=2, pre=[service("db")]))
    assert respec.wake == {key} and respec.graph_changed
    deleting = w.policy_seen(key, policy("a", rv="13", generation=2, pre=[service("db")], deletionTimestamp="now"))
    assert deleting.wake == {key} and not deleting.graph_changed


def test_a_lagging_copy_of_a_policy_older_than_the_one_kept_is_ignored() -> None:
    w = wiring()
    key = (NS, "a")
    w.policy_seen(key, policy("a", rv="20", generation=2, pre=[service("db")]))
    stale = w.policy_seen(key, policy("a", rv="15", generation=1))
    assert stale.wake == frozenset() and not stale.graph_changed
    assert w.policies[key]["metadata"]["resourceVersion"] == "20"
    assert w.service_seen(NS, "db", {}, deleted=False).wake == {key}  # the kept copy's deps stand
    recreated = w.policy_seen(key, policy("a", rv="5", uid="another"))  # same name, a new object
    assert recreated.wake == {key} and w.policies[key]["metadata"]["uid"] == "another"


def test_new_deps_and_targets_replace_the_old_in_every_index() -> None:
    w = wiring()
    key = (NS, "a")
    ref = {"workloadRef": {"name": "ref"}}
    w.policy_seen(key, policy("a", target=ref, pre=[service("db")]))
    w.policy_seen(key, policy("a", target=ref, rv="11", generation=2, pre=[service("cache")]))
    assert w.service_seen(NS, "db", {}, deleted=False).wake == frozenset()
    assert w.service_seen(NS, "cache", {}, deleted=False).wake == {key}
    assert w.deps[key] == {("Service", NS, "cache")} and not w.by_dep[("Service", NS, "db")]

    w.set_targets(key, ["web", "api"])
    w.set_targets(key, ["api"])
    assert w.for_deployment(NS, "web", {}) == set() and w.for_deployment(NS, "api", {}) == {key}
    assert not w.by_target[(NS, "Deployment", "web")]

    w.policy_seen(key, policy("a", rv="12", generation=3, target={"selector": {"matchLabels": {"x": "1"}}}))
    assert w.for_deployment(NS, "any", {"x": "1"}) == {key}
    w.policy_seen(key, policy("a", rv="13", generation=4))  # back to workloadRef: no selector
    assert w.for_deployment(NS, "any", {"x": "1"}) == set()


def test_an_invalid_spec_depends_on_nothing() -> None:
    w = wiring()
    key = (NS, "a")
    w.policy_seen(key, policy("a", pre=[service("db")]))
    broken = policy("a", rv="11", generation=2, pre=[service("db")])
    broken["spec"]["preconditions"][0]["service"]["name"] = "NOT A NAME"
    assert w.policy_seen(key, broken).wake == {key}  # its reconcile reports the error
    assert w.deps[key] == set() and w.service_seen(NS, "db", {}, deleted=False).wake == frozenset()
    assert w.graph_inputs()[0] == []  # on no cycle


def test_forget_leaves_nothing_that_wakes_the_policy_and_gives_up_its_custom_watches() -> None:
    w = Wiring(CustomClaims(max_watches=1, max_kinds_per_policy=8))
    key, other = (NS, "a"), (NS, "b")
    w.policy_seen(key, policy("a", pre=[service("db"), {"name": "j", "job": {"name": "mig"}}],
                              target={"selector": {"matchLabels": {"x": "1"}}}))
    running(w, "a", "b")
    w.reconciled(key, w.policies[key], Outcome(targets=["web"], custom=[("ex.io/v1", "Widget", NS, "w1")]))
    assert w.graph_inputs()[0] == [w.parsed[key]]
    assert w.custom.claim(other, [("ex.io/v1", "Gadget", NS, "g1")]).refused  # the one watch is taken
    woken(w)

    claim = w.forget(key)
    assert claim.woken == {other}  # the freed watch: the refused policy claims again
    assert w.custom.watched() == set()
    assert not w.alive(key) and key not in w.policies and key not in w.selectors and w.graph_inputs()[0] == []
    assert w.for_deployment(NS, "web", {"x": "1"}) == set()
    assert w.service_seen(NS, "db", {}, deleted=False).wake == frozenset()
    assert w.object_seen("Job", NS, "mig") == frozenset()
    assert w.mark([key]) == set()  # no worker flag left to set


def test_only_running_workers_are_marked() -> None:
    w = wiring()
    w.policy_seen((NS, "a"), policy("a"))
    assert w.mark([(NS, "a")]) == set()
    flag = w.worker((NS, "a"))
    assert w.worker((NS, "a")) is flag  # a worker started again gets the flag it had
    assert w.mark([(NS, "a"), (NS, "nobody")]) == {(NS, "a")} and flag.is_set()


# ---------------------------------------------------------------------- after a reconcile


def test_the_copy_a_status_write_returned_is_kept_and_a_new_generation_reconciles_again() -> None:
    w = wiring()
    key = (NS, "a")
    reconciled = policy("a", rv="10")
    w.policy_seen(key, reconciled)
    running(w, "a")
    after = w.reconciled(key, reconciled, Outcome(written=policy("a", rv="11", managedFields=[{}])))
    assert not after.again and not after.graph_changed and w.policies[key]["metadata"]["resourceVersion"] == "11"
    assert "managedFields" not in w.policies[key]["metadata"]  # slimmed

    # the spec changed while it reconciled: the write returned generation 2, whose event is older
    after = w.reconciled(key, reconciled, Outcome(written=policy("a", rv="13", generation=2, pre=[service("db")])))
    assert after.again and after.graph_changed
    assert w.service_seen(NS, "db", {}, deleted=False).wake == {key}  # what the kept copy names wakes it
    assert w.policy_seen(key, policy("a", rv="12", generation=2)).wake == frozenset()  # that older event

    w.policy_seen(key, policy("a", rv="20", generation=3))
    after = w.reconciled(key, reconciled, Outcome(written=policy("a", rv="14", generation=2)))
    assert not after.again and w.policies[key]["metadata"]["resourceVersion"] == "20"  # the watch's is newer


def test_a_policy_deleted_while_it_reconciled_is_not_learnt_again() -> None:
    w = wiring()
    key = (NS, "a")
    obj = policy("a")
    w.policy_seen(key, obj)
    running(w, "a")
    w.forget(key)
    after = w.reconciled(key, obj, Outcome(targets=["web"], written=policy("a", rv="11"),
                                           custom=[("ex.io/v1", "Widget", NS, "w1")]))
    assert not after.again and not after.claim.refused
    assert key not in w.policies and w.for_deployment(NS, "web", {}) == set() and w.custom.watched() == set()


def test_a_reconcile_learns_its_targets_and_wanted_names_and_claims_its_custom_watches() -> None:
    w = wiring()
    key = (NS, "a")
    w.policy_seen(key, policy("a"))
    running(w, "a")
    w.reconciled(key, w.policies[key], Outcome(targets=["web"], wanted={"api"},
                                               custom=[("ex.io/v1", "Widget", NS, "w1")]))
    assert w.targets[key] == {("Deployment", "web"), ("Deployment", "api")}
    assert w.custom.watched() == {("ex.io/v1", "Widget", NS)}
    assert w.custom.woken_by(("ex.io/v1", "Widget", NS), {"w1"}) == {key}


def test_to_reconcile_is_the_newest_known_copy_else_kopfs_body() -> None:
    w = wiring()
    body = policy("a", rv="10", managedFields=[{"big": "x"}])
    assert w.to_reconcile((NS, "a"), body) == slim(policy("a", rv="10"))
    w.policy_seen((NS, "a"), policy("a", rv="12"))
    assert w.to_reconcile((NS, "a"), body)["metadata"]["resourceVersion"] == "12"


# ---------------------------------------------------------------------- one policy's worker


def test_an_idle_policy_reconciles_at_once_and_one_that_just_did_coalesces() -> None:
    s = WorkerState(coalesce_seconds=0.05, max_backoff_seconds=60)
    assert s.next_pause(now=100.0) == 0
    s.on_success(now=100.0)
    assert s.next_pause(now=100.2) == 0.05
    assert s.next_pause(now=100.0 + RECENT_SECONDS) == 0


def test_failures_back_off_doubling_up_to_max_backoff_and_a_success_resets_it() -> None:
    s = WorkerState(coalesce_seconds=0.05, max_backoff_seconds=60)
    delays = [s.on_failure(now=float(t)) for t in range(10)]
    assert delays == [FIRST_BACKOFF_SECONDS * 2 ** i for i in range(6)] + [60.0] * 4
    assert delays[:3] == [1.0, 2.0, 4.0]
    s.on_success(now=20.0)
    assert s.on_failure(now=30.0) == FIRST_BACKOFF_SECONDS
    many = WorkerState(coalesce_seconds=0, max_backoff_seconds=1e9)
    assert all(math.isfinite(many.on_failure(now=0)) for _ in range(2000))  # no overflow, ever


def test_after_a_failure_nothing_reconciles_before_the_backoff_is_over_whatever_wakes_it() -> None:
    s = WorkerState(coalesce_seconds=0.05, max_backoff_seconds=60)
    s.on_failure(now=100.0)
    delay = s.on_failure(now=100.0)  # 2 s
    assert s.next_pause(now=100.0) == delay
    assert s.next_pause(now=101.5) == pytest.approx(delay - 1.5)  # woken early: still waits
    assert s.next_pause(now=100.0 + delay) == 0


# ---------------------------------------------------------------------- the cycles


def test_cycles_are_recomputed_once_at_a_time_and_only_after_a_change() -> None:
    c = CycleSchedule()
    assert c.start()  # never computed
    assert not c.start()  # one at a time
    v = c.version
    c.changed()  # changed while computing: the recompute goes on
    assert c.finish(v, {(NS, "a"): "x -> y -> x"}) == {(NS, "a")}
    assert c.stale()
    assert c.finish(c.version, {(NS, "a"): "x -> y -> x"}) == set()  # the same message: nobody woken
    assert not c.stale()
    c.stopped()
    assert not c.start()  # nothing changed since
    c.changed()
    assert c.start()
    assert c.finish(c.version, {(NS, "b"): "m"}) == {(NS, "a"), (NS, "b")}  # a's went away, b's came
    assert c.cycle_for((NS, "b")) == "m" and c.cycle_for((NS, "a")) is None


def test_cycles_of_names_every_policy_on_a_cycle() -> None:
    def pol(name: str, target: str, dep: str) -> spec.Policy:
        return spec.parse_policy(policy(name, target={"workloadRef": {"name": target}},
                                        pre=[{"name": "w", "workload": {"kind": "Deployment", "name": dep}}]))

    labels = {(NS, "web"): {}, (NS, "api"): {}}
    found = cycles_of([pol("a", "web", "api"), pol("b", "api", "web")], labels, {}, {})
    assert set(found) == {(NS, "a"), (NS, "b")} and "deployment/web" in found[(NS, "a")]
    assert cycles_of([pol("a", "web", "api"), pol("b", "api", "db")], labels, {}, {}) == {}


# ---------------------------------------------------------------------- custom-resource watches

WIDGET, GADGET, DOOHICKEY = ("ex.io/v1", "Widget"), ("ex.io/v1", "Gadget"), ("ex.io/v1", "Doohickey")


def cr(kind: tuple[str, str], name: str, ns: str = NS) -> tuple[str, str, str, str]:
    return (kind[0], kind[1], ns, name)


def test_a_policy_gets_at_most_max_kinds_per_policy_kinds_watched_in_declared_order() -> None:
    claims = CustomClaims(max_watches=64, max_kinds_per_policy=2)
    c = claims.claim((NS, "a"), [cr(WIDGET, "w1"), cr(GADGET, "g1"), cr(WIDGET, "w2"), cr(DOOHICKEY, "d1")])
    assert set(c.refused) == {(*DOOHICKEY, NS)}
    assert "--max-custom-kinds-per-policy=2" in c.refused[(*DOOHICKEY, NS)]
    assert "this policy's 3rd" in c.refused[(*DOOHICKEY, NS)]
    assert claims.watched() == {(*WIDGET, NS), (*GADGET, NS)}
    assert claims.wants((*WIDGET, NS), "w2") and not claims.wants((*WIDGET, NS), "w3")


def test_the_operator_runs_at_most_max_watches_shared_by_every_policy_naming_a_kind() -> None:
    claims = CustomClaims(max_watches=2, max_kinds_per_policy=8)
    assert not claims.claim((NS, "a"), [cr(WIDGET, "w1"), cr(GADGET, "g1")]).refused
    refused = claims.claim((NS, "b"), [cr(WIDGET, "w2"), cr(DOOHICKEY, "d1")]).refused
    assert set(refused) == {(*DOOHICKEY, NS)}  # Widget's watch is shared; a third kind is over the cap
    assert "--max-custom-watches=2" in refused[(*DOOHICKEY, NS)]
    assert claims.claim((NS, "c"), [cr(WIDGET, "w1", ns="other")]).refused  # one watch per namespace too
    assert claims.woken_by((*WIDGET, NS), {"w1"}) == {(NS, "a")}
    assert claims.woken_by((*WIDGET, NS), {"w2"}) == {(NS, "b")}
    assert claims.woken_by((*WIDGET, NS), None) == {(NS, "a"), (NS, "b")}
    assert claims.woken_by((*DOOHICKEY, NS), None) == set()


def test_a_watch_that_stops_wakes_the_policies_refused_one_and_a_new_claim_replaces_the_old() -> None:
    claims = CustomClaims(max_watches=1, max_kinds_per_policy=8)
    claims.claim((NS, "a"), [cr(WIDGET, "w1")])
    assert claims.claim((NS, "b"), [cr(GADGET, "g1")]).refused
    assert claims.claim((NS, "a"), [cr(WIDGET, "w2")]).woken == frozenset()  # still watched: nothing freed
    assert claims.wants((*WIDGET, NS), "w2") and not claims.wants((*WIDGET, NS), "w1")
    freed = claims.claim((NS, "a"), [])
    assert freed.woken == {(NS, "b")} and claims.watched() == set()
    assert not claims.claim((NS, "b"), [cr(GADGET, "g1")]).refused
    assert claims.claim((NS, "b"), []).woken == frozenset()  # nobody else was refused


def test_a_policy_that_frees_a_watch_and_is_refused_another_does_not_wake_itself() -> None:
    claims = CustomClaims(max_watches=1, max_kinds_per_policy=8)
    claims.claim((NS, "a"), [cr(WIDGET, "w1")])
    claims.claim((NS, "b"), [cr(GADGET, "g1")])  # refused
    moved = claims.claim((NS, "a"), [cr(DOOHICKEY, "d1")])  # refused too (Widget's still counted), Widget freed
    assert set(moved.refused) == {(*DOOHICKEY, NS)} and moved.woken == {(NS, "b")}


def test_ordinals_in_the_refusal_say_11th_12th_13th_and_21st() -> None:
    claims = CustomClaims(max_watches=64, max_kinds_per_policy=1)
    kinds = [("ex.io/v1", f"K{i}") for i in range(23)]
    refused = claims.claim((NS, "a"), [cr(k, "x") for k in kinds]).refused
    said = {k[1]: refused[(*k, NS)].split("this policy's ")[1].split(",")[0] for k in kinds[1:]}
    assert [said[f"K{i}"] for i in (1, 2, 10, 11, 12, 20, 21, 22)] == \
        ["2nd", "3rd", "11th", "12th", "13th", "21st", "22nd", "23rd"]


# ---------------------------------------------------------------------- small helpers


def test_slim_and_plain_drop_what_no_reconcile_reads() -> None:
    body = policy("a", managedFields=[{"f": 1}], annotations={KOPF_DIFFBASE: "{}", "keep": "me"})
    out = plain(body)
    assert "managedFields" not in out["metadata"] and out["metadata"]["annotations"] == {"keep": "me"}
    assert "managedFields" in body["metadata"]  # plain() copies
    assert slim({"metadata": "odd"}) == {"metadata": "odd"}


def test_a_deleted_policy_releases_what_its_status_names_and_every_deployment_it_claims() -> None:
    deployments = [{"metadata": {"name": n, "annotations": {POLICY_ANNOTATION: p}}}
                   for n, p in (("web", "a"), ("api", "a"), ("db", "other"))] + [{"metadata": {"name": "bare"}}]
    d = "Deployment"
    assert to_release("a", {"targets": ["gone", "web"]}, deployments) == [(d, "api"), (d, "gone"), (d, "web")]
    # status.targets as {kind, name} (the format since every workload kind can be targeted)
    sts = {"kind": "StatefulSet", "metadata": {"name": "db", "annotations": {POLICY_ANNOTATION: "a"}}}
    assert to_release("a", {"targets": [{"kind": "CronJob", "name": "nightly"}]}, [sts]) == [
        ("CronJob", "nightly"), ("StatefulSet", "db")]
    assert to_release("a", None, []) == []


def test_kopfs_watch_restart_lines_are_recognised_as_kopf_writes_them() -> None:
    import inspect

    from kopf._cogs.clients import watching

    source = inspect.getsource(watching)
    assert 'f"Watch-stream for {resource} {where} is inactive, reconnecting."' in source
    assert 'f"Restarting the watch-stream for {resource} {where}."' in source
    assert kopf_watch_restart("Watch-stream for pods.v1 cluster-wide is inactive, reconnecting.") == \
        ("silent", "pods.v1 cluster-wide")
    assert kopf_watch_restart("Restarting the watch-stream for pods.v1 in 'ns'.") == \
        ("expired", "pods.v1 in 'ns'.")
    assert kopf_watch_restart("Watch-stream for pods.v1 cluster-wide is done.") is None


def test_kopf_watches_the_policies_only_the_adapter_watches_what_they_name() -> None:
    import kopf

    from depgate import handlers

    watched = {(h.selector.group, h.selector.version, h.selector.any_name)
               for h in kopf.get_default_registry()._watching.get_all_handlers()}
    policies = handlers.POLICIES
    assert watched == {(policies.group, policies.version, policies.plural)}


def test_kopf_has_no_changing_handler_so_an_empty_essence_loses_nothing() -> None:
    """handlers._NoDiffBase answers Kopf with an empty essence (no deep copy of each policy on each event):
    right only while no on.create/update/delete/resume/field handler reads a diff of it."""
    import kopf

    from depgate import handlers

    assert kopf.get_default_registry()._changing.get_all_handlers() == []
    storage = handlers._NoDiffBase()
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "1"}}, "spec": {"workloadRef": {"name": "w"}}})
    assert storage.build(body=body) == storage.fetch(body=body) == {}
    storage.store(body=body, patch=kopf.Patch(), essence={})  # never a write


# ---------------------------------------------------------------------- the streams: what the policies name


def kinds_in(w: Wiring, ns: str = NS) -> set[str]:
    return {st.kind for st in w.streams() if st.namespace == ns}


def test_no_policy_no_stream_but_the_gated_pods() -> None:
    w = wiring()
    assert w.streams() == {GATED_PODS}
    assert GATED_PODS.namespace == "" and GATED_PODS.labels == "depgate.io/gated=true"
    assert not GATED_PODS.metadata_only  # depgate.gates reads the pods' scheduling gates


def test_a_policy_opens_the_streams_of_its_namespace_for_what_it_names_and_targets_only() -> None:
    w = wiring()
    seen(w, policy("a", pre=[{"name": "cfg", "configMap": {"name": "settings", "keys": ["ready"]}}]))
    assert kinds_in(w) == {"Pod", "Deployment", "ConfigMap"}
    assert {st.namespace for st in w.streams()} == {NS, ""}  # nothing in any other namespace
    seen(w, policy("b", pre=[service("db")]))
    assert kinds_in(w) == {"Pod", "Deployment", "ConfigMap", "Service", "EndpointSlice"}
    seen(w, policy("c", ns="other", target={"workloadRef": {"kind": "CronJob", "name": "nightly"}},
                   pre=[{"name": "w", "workload": {"kind": "StatefulSet", "name": "db"}}]))
    assert kinds_in(w, "other") == {"Pod", "CronJob", "Job", "StatefulSet"}
    meta = {st.kind: st.metadata_only for st in w.streams() if st.namespace == NS}
    assert meta == {"Pod": True, "ConfigMap": True, "EndpointSlice": True, "Deployment": False, "Service": False}


def test_streams_follow_the_policies_as_they_go_and_change() -> None:
    w = wiring()
    seen(w, policy("a", pre=[service("db")]), policy("b", pre=[service("db")]))
    before = w.scope_version
    w.forget((NS, "a"))
    assert kinds_in(w) == {"Pod", "Deployment", "Service", "EndpointSlice"}  # b still names them
    seen(w, policy("b", pre=[NAMES_NOTHING], generation=2, rv="11"))
    assert kinds_in(w) == {"Pod", "Deployment"} and w.scope_version > before
    w.forget((NS, "b"))
    assert w.streams() == {GATED_PODS} and w.kinds == {} and w.stream_users == {}


def test_an_invalid_policy_keeps_the_streams_of_what_it_targeted_before() -> None:
    """Its spec no longer parses; its old target is still gated until the reconcile releases it."""
    w = wiring()
    seen(w, policy("a", target={"workloadRef": {"kind": "DaemonSet", "name": "agent"}}))
    w.set_targets((NS, "a"), [("DaemonSet", "agent")])
    seen(w, policy("a", target={"selector": {}}, generation=2, rv="11"))
    assert (NS, "a") not in w.parsed
    assert kinds_in(w) == {"Pod", "DaemonSet"}


def test_after_a_gap_a_stream_wakes_the_policies_of_its_namespace() -> None:
    w = wiring()
    seen(w, policy("a"), policy("b"), policy("c", ns="other"))
    assert w.policies_naming_in(NS) == {(NS, "a"), (NS, "b")}


# ---------------------------------------------------------------------- least privilege, self-protection


def test_secrets_have_no_cluster_wide_watch_they_are_watched_per_namespace_on_a_shared_stream() -> None:
    """The operator may read Secrets only where depgate-secret-reader is bound to it: a cluster-wide
    watch would be refused; a `secret` precondition claims a shared watch of its namespace instead."""
    assert "Secret" not in {k.kind for k in WATCHED_KINDS}
    w = wiring()
    running(w, "a")
    seen(w, policy("a", pre=[{"name": "creds", "secret": {"name": "db"}}]))
    woken(w)
    claim = w.custom.claim((NS, "a"), [("v1", "Secret", NS, "db")])
    assert claim.refused == {} and ("v1", "Secret", NS) in w.custom.watched()
    assert w.custom.wants(("v1", "Secret", NS), "db") and not w.custom.wants(("v1", "Secret", NS), "other")
    assert w.custom.woken_by(("v1", "Secret", NS), {"db"}) == {(NS, "a")}


def test_the_protected_namespaces_default_to_the_operators_and_kube_system() -> None:
    assert protected((), "depgate-system") == {"depgate-system", "kube-system"}
    assert protected((), "ops") == {"ops", "kube-system"}
    assert protected(("a", " b ", ""), "ops") == {"a", "b"}  # given: exactly those


def test_policies_in_a_namespace_are_the_valid_ones_for_the_precedence_rule() -> None:
    w = wiring()
    seen(w, policy("a"), policy("b", ns="other"), policy("bad", target={"selector": {}}))
    assert [p.name for p in w.policies_in(NS)] == ["a"]


def test_a_namespaces_policies_are_indexed_by_namespace_and_each_change_moves_its_count() -> None:
    w = wiring()
    seen(w, policy("a"), policy("b", ns="other"))
    assert [p.name for p in w.policies_in("other")] == ["b"] and w.policies_in("nowhere") == []
    before, other = w.namespace_changes(NS), w.namespace_changes("other")
    seen(w, policy("c"))
    assert w.namespace_changes(NS) > before and w.namespace_changes("other") == other  # only its own moves
    assert sorted(p.name for p in w.policies_in(NS)) == ["a", "c"]
    now = w.namespace_changes(NS)
    seen(w, policy("c", target={"selector": {}}))  # an edit that makes it invalid drops it, and moves the count
    assert [p.name for p in w.policies_in(NS)] == ["a"] and w.namespace_changes(NS) > now
    now = w.namespace_changes(NS)
    w.forget((NS, "a"))
    assert w.policies_in(NS) == [] and w.namespace_changes(NS) > now
    assert NS not in w.parsed_in  # an emptied namespace keeps no index entry


def test_a_workloads_claim_is_kept_for_the_cycle_graph_and_its_change_changes_the_graph() -> None:
    w = wiring()
    body = {"metadata": {"labels": {"a": "1"}, "annotations": {POLICY_ANNOTATION: "p"}}}
    assert w.workload_seen("Deployment", NS, "web", body, deleted=False).graph_changed
    assert w.graph_inputs()[4] == {(NS, "Deployment", "web"): "p"}
    assert not w.workload_seen("Deployment", NS, "web", body, deleted=False).graph_changed
    taken = {"metadata": {"labels": {"a": "1"}, "annotations": {POLICY_ANNOTATION: "q"}}}
    assert w.workload_seen("Deployment", NS, "web", taken, deleted=False).graph_changed
    assert w.workload_seen("Deployment", NS, "web", {}, deleted=True).graph_changed
    assert w.graph_inputs()[4] == {}


def test_a_workloadref_target_created_while_the_first_reconcile_runs_wakes_the_policy() -> None:
    """One kubectl apply, policy first: the workload's ADDED event arrives before the policy's first
    reconcile has returned and learnt its targets; it must still wake the policy (else a CronJob or a
    Deployment of 0 replicas, which send no later event, would stay TargetNotFound until the resync)."""
    w = wiring()
    key = (NS, "a")
    seen(w, policy("a", target={"workloadRef": {"kind": "CronJob", "name": "nightly"}}))
    assert w.targets.get(key, set()) == set()  # no reconcile has learnt anything yet
    assert w.workload_seen("CronJob", NS, "nightly", {}, deleted=False).wake == {key}
    assert w.workload_seen("Deployment", NS, "nightly", {}, deleted=False).wake == frozenset()  # another kind
    seen(w, policy("a", target={"workloadRef": {"kind": "CronJob", "name": "weekly"}}, rv="11"))
    assert w.workload_seen("CronJob", NS, "nightly", {}, deleted=False).wake == frozenset()  # moved on
    w.forget(key)
    assert w.workload_seen("CronJob", NS, "weekly", {}, deleted=False).wake == frozenset()


# ---------------------------------------------------------------------- news and echoes of a gated workload


def gen(name: str, generation: int, **md: Any) -> dict[str, Any]:
    body = deployment(name)
    body["metadata"].update({"uid": f"uid-{name}", "generation": generation, **md})
    return body


def apply_change(w: Wiring, change: Any) -> None:
    """What Operator.apply does with a Change."""
    if change.cause is None:
        w.mark(change.wake)
    else:
        w.mark(change.wake - change.echo)
        w.mark_echo(change.echo, change.cause)


def test_a_status_only_change_of_a_gated_workload_wakes_no_policy_gating_it_but_a_workload_precondition() -> None:
    w = wiring()
    running(w, "gates", "waits")
    seen(w, policy("gates"), policy("waits", target={"workloadRef": {"name": "other"}},
                                    pre=[{"name": "web", "workload": {"kind": "Deployment", "name": "web"}}]))
    woken(w)
    apply_change(w, w.deployment_seen(NS, "web", gen("web", 1), deleted=False))
    assert woken(w) == {"gates", "waits"}  # first seen: news to both
    status_only = {**gen("web", 1), "status": {"observedGeneration": 1, "replicas": 3}}
    status_only["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    apply_change(w, w.deployment_seen(NS, "web", status_only, deleted=False))
    assert woken(w) == {"waits"}  # it reads the workload's status; the gating policy reads none of it
    apply_change(w, w.deployment_seen(NS, "web", gen("web", 2), deleted=False))
    assert woken(w) == {"gates", "waits"}  # a new generation: the spec changed
    apply_change(w, w.deployment_seen(NS, "web", gen("web", 2, labels={"tier": "web"}), deleted=False))
    assert woken(w) == {"gates", "waits"}  # labels (a selector may match now)
    apply_change(w, w.deployment_seen(NS, "web", gen("web", 2, labels={"tier": "web"},
                                                     annotations={"depgate.io/policy": "x"}), deleted=False))
    assert woken(w) == {"gates", "waits"}  # depgate's own annotations (the claim)
    apply_change(w, w.deployment_seen(NS, "web", {"metadata": {"name": "web"}}, deleted=True))
    assert woken(w) == {"gates", "waits"}


def test_the_echo_of_a_policys_own_write_needs_no_reconcile_anything_else_does() -> None:
    key = (NS, "gates")
    w = wiring()
    running(w, "gates")
    seen(w, policy("gates"))
    woken(w)
    assert not w.echo_only(key)  # woken by nothing in particular (its start, the resync): reconcile
    written = gen("web", 2, annotations={"depgate.io/applied-hash": "h"})
    w.reconciled(key, w.policies[key], Outcome(targets=[("Deployment", "web")], seen={
        ("Deployment", "web"): plan.fingerprint(written)}))
    apply_change(w, w.deployment_seen(NS, "web", written, deleted=False))  # its own write coming back
    assert woken(w) == {"gates"} and w.echo_only(key)
    apply_change(w, w.deployment_seen(NS, "web", gen("web", 3, annotations={"depgate.io/applied-hash": "h"}),
                                      deleted=False))
    assert woken(w) == {"gates"} and not w.echo_only(key)  # someone changed its spec since
    apply_change(w, w.deployment_seen(NS, "web", gen("web", 4), deleted=False))
    w.mark([key])  # and something else woke it too: a real cause wins
    assert not w.echo_only(key)
    w.forget(key)
    assert key not in w.causes and key not in w.seen


def test_a_workload_has_no_pods_only_by_a_listed_pod_stream_that_delivered_none_of_it() -> None:
    w = wiring()
    pod = {"metadata": {"name": "web-abc-1", "namespace": NS, "labels": {"pod-template-hash": "abc"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "controller": True}]}}
    assert not w.has_no_pods(NS, "Deployment", "web")  # no stream has listed: unknown, list them
    w.pod_stream(NS, running=True)
    assert w.has_no_pods(NS, "Deployment", "web")
    w.event("Pod", NS, "web-abc-1", pod, deleted=False)
    assert not w.has_no_pods(NS, "Deployment", "web") and w.has_no_pods(NS, "Deployment", "api")
    w.event("Pod", NS, "web-abc-1", pod, deleted=True)
    assert w.has_no_pods(NS, "Deployment", "web")
    w.event("Pod", NS, "web-abc-1", pod, deleted=False)
    w.pod_stream(NS, running=False)  # stopped: what it said is forgotten
    assert not w.has_no_pods(NS, "Deployment", "web") and w.pods_of == {}


def test_the_streamed_copy_of_a_workload_is_the_newest_seen_or_written_and_absent_means_absent_once_listed() -> None:
    w = wiring()
    assert w.workload(NS, "Deployment", "web") == (False, None)  # nothing listed: read it from the API server
    w.workload_stream(NS, "Deployment", running=True)
    assert w.workload(NS, "Deployment", "web") == (True, None)  # listed, none: absent
    v5 = gen("web", 1, resourceVersion="5", managedFields=[{"manager": "kubectl"}])
    w.deployment_seen(NS, "web", v5, deleted=False)
    known, body = w.workload(NS, "Deployment", "web")
    assert known and body is not None and body["metadata"]["resourceVersion"] == "5"
    assert "managedFields" not in body["metadata"] and "managedFields" in v5["metadata"]  # slimmed, a copy
    body["spec"]["replicas"] = 9  # the reconcile's copy is its own
    v5["spec"]["paused"] = True  # and so is the kept one: the streamed object changing later does not reach it
    assert not {"replicas", "paused"} & set(w.workload(NS, "Deployment", "web")[1]["spec"])
    w.remember("Deployment", gen("web", 2, resourceVersion="7"))  # the answer to depgate's own write
    w.deployment_seen(NS, "web", gen("web", 1, resourceVersion="6"), deleted=False)  # an older event after it
    assert w.workload(NS, "Deployment", "web")[1]["metadata"]["resourceVersion"] == "7"
    w.deployment_seen(NS, "web", {"metadata": {"name": "web", "namespace": NS}}, deleted=True)
    assert w.workload(NS, "Deployment", "web") == (True, None)
    w.deployment_seen(NS, "web", v5, deleted=False)
    w.workload_stream(NS, "Deployment", running=False)
    assert w.workload(NS, "Deployment", "web") == (False, None) and w.bodies == {}


def test_with_namespaces_served_the_gated_pods_are_watched_in_each_of_them_only() -> None:
    w = wiring()
    w.gated_in = ("a", "b")
    assert w.streams() == {GATED_PODS._replace(namespace="a"), GATED_PODS._replace(namespace="b")}


def test_a_stream_listed_or_stopped_is_told_to_the_cache_it_feeds() -> None:
    w = wiring()
    w.gated_in = ("a",)
    assert all(st.gated for st in w.streams()) and not Stream("Pod", NS).gated
    w.stream_running(GATED_PODS._replace(namespace="a"), running=True)  # the gated pods feed no cache
    assert w.pods_listed == set() and w.workloads_listed == set()
    w.stream_running(Stream("Pod", NS), running=True)
    w.stream_running(Stream("StatefulSet", NS), running=True)
    w.stream_running(Stream("Job", NS), running=True)  # not gateable by a write: no copies kept
    assert w.pods_listed == {NS} and w.workloads_listed == {(NS, "StatefulSet")}
    w.stream_running(Stream("Pod", NS), running=False)
    w.stream_running(Stream("StatefulSet", NS), running=False)
    assert w.pods_listed == set() and w.workloads_listed == set()


def test_the_rivals_of_some_workloads_are_those_that_name_them_and_the_selectors_and_rivals_agree() -> None:
    """A reconcile asks only for the policies that can target its workloads; plan.rivals over them is
    plan.rivals over the whole namespace."""
    w = wiring()
    seen(w,
         policy("a"),  # workloadRef web
         policy("b", target={"workloadRef": {"name": "api"}}),
         policy("c", target={"workloadRef": {"kind": "StatefulSet", "name": "web"}}),
         policy("d", target={"selector": {"matchLabels": {"tier": "front"}}}),
         policy("e", target={"selector": {"matchLabels": {"tier": "back"}}}),
         policy("f", target={"workloadRef": {"name": "web"}}, ns="other"),
         policy("g", target={"template": {"spec": {"replicas": 0}}}))
    web = {"kind": "Deployment", "metadata": {"name": "web", "namespace": NS, "labels": {"tier": "front"}}}
    api = {"kind": "Deployment", "metadata": {"name": "api", "namespace": NS, "labels": {"tier": "back"}}}
    assert [p.name for p in w.rivals_of(NS, [web])] == ["a", "d", "e"]
    assert [p.name for p in w.rivals_of(NS, [web, api])] == ["a", "b", "d", "e"]
    assert [p.name for p in w.rivals_of(NS, [])] == ["d", "e"] and w.rivals_of("nowhere", [web]) == []
    for me in w.policies_in(NS):
        for found in ([web], [api], [web, api]):
            assert plan.rivals(me, found, w.rivals_of(NS, found)) == plan.rivals(me, found, w.policies_in(NS))
    seen(w, policy("d", target={"workloadRef": {"name": "web"}}))  # a selector that becomes a workloadRef
    assert [p.name for p in w.rivals_of(NS, [api])] == ["b", "e"]
    w.forget((NS, "e"))
    assert [p.name for p in w.rivals_of(NS, [api])] == ["b"] and NS not in w.selectors_in
