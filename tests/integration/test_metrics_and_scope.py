"""Prometheus metrics move when a precondition flips; a policy never reaches outside its namespace."""

from __future__ import annotations

import re
import uuid

from tests.conftest import wait_for
from tests.integration.kubehelp import (
    apply,
    condition,
    deployment,
    entry,
    get,
    init_names,
    policy,
    wait_deployment,
    wait_policy,
)

POLICY = policy("app", "app", "- name: settings\n  configMap: {name: app-config, keys: [a]}")


def _series(operator, name: str, **labels: str) -> float | None:
    for key, value in operator.metrics().items():
        if key.startswith(name + "{") and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return value
    return None


def test_metrics_show_a_precondition_flipping(plane, operator, namespace):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, POLICY)
    wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("state") == "Blocking")
    blocking = dict(namespace=namespace, policy="app", state="Blocking")
    satisfied = dict(namespace=namespace, policy="app", state="Satisfied")
    wait_for(lambda: _series(operator, "depgate_preconditions", **blocking) == 1.0, 10, what="gauge Blocking=1")
    assert _series(operator, "depgate_preconditions", **satisfied) == 0.0
    blocked = dict(namespace=namespace, policy="app", precondition="settings")
    assert _series(operator, "depgate_precondition_blocked_seconds_total", **blocked) is not None
    status_writes = operator.counter("depgate_status_writes_total")
    reconciles_ok = _series(operator, "depgate_reconciles_total", result="ok")
    assert reconciles_ok and reconciles_ok >= 1
    assert operator.counter("depgate_reconcile_duration_seconds_count") >= 1

    apply(plane, namespace, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config}\ndata: {a: '1'}\n")
    wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("state") == "Satisfied")
    wait_for(lambda: _series(operator, "depgate_preconditions", **satisfied) == 1.0, 10, what="gauge Satisfied=1")
    assert _series(operator, "depgate_preconditions", **blocking) == 0.0
    assert operator.counter("depgate_status_writes_total") > status_writes
    # the time it blocked was counted (it blocked from creation until the ConfigMap appeared)
    assert _series(operator, "depgate_precondition_blocked_seconds_total", **blocked) > 0.0

    # the release on deletion is a write depgate sends, and counted as one
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == ["depgate-settings"])
    writes = operator.counter("depgate_api_writes_total")
    plane.run_kubectl("delete", "-n", namespace, "dependencypolicy", "app", "--timeout=60s")
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == [], what="released")
    wait_for(lambda: operator.counter("depgate_api_writes_total") >= writes + 1, 10, what="the release counted")


def test_a_policy_leaves_other_namespaces_alone(plane, operator, namespace):
    other = f"other-{uuid.uuid4().hex[:6]}"
    plane.run_kubectl("create", "namespace", other)
    try:
        # the same Deployment name in both namespaces, the same labels for the selector
        apply(plane, other, deployment("app", labels=", tier: app"))
        apply(plane, namespace, deployment("app", labels=", tier: app"))
        apply(plane, namespace, POLICY)
        apply(plane, namespace, POLICY.replace("metadata: {name: app}", "metadata: {name: tier}").replace(
            "workloadRef: {name: app}", "selector: {matchLabels: {tier: app}}"))
        wait_deployment(plane, namespace, "app", lambda d: init_names(d) == ["depgate-settings"])
        # the second policy (a selector) leaves it to the workloadRef, and says so, in its own namespace only
        wait_policy(plane, namespace, "tier", lambda p: "left to DependencyPolicy app" in condition(
            p, "Applied").get("message", ""), what="the selector says it leaves app to the workloadRef")
        dep = get(plane, other, "deployment", "app")
        assert init_names(dep) == []
        assert "depgate.io/policy" not in (dep["metadata"].get("annotations") or {})
        assert get(plane, other, "rolebinding", "depgate-verdict-app") is None
        assert get(plane, other, "rolebinding", "depgate-verdict-tier") is None
    finally:
        plane.run_kubectl("delete", "namespace", other, "--wait=false")


# ---------------------------------------------------------------------- watches scoped to what the policies name


def test_a_dependency_created_in_a_namespace_that_had_no_policy_a_moment_before_wakes_its_policy(
        plane, operator, namespace):
    """The operator watches no namespace without a policy; a policy's arrival opens its namespace's streams.
    Neither the ConfigMap created right after the first policy there (while its streams are being opened)
    nor one created once the policy has said Blocking (the streams run: only their event can wake it before
    the 300 s resync) may be missed."""
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, POLICY)
    apply(plane, namespace, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config}\ndata: {a: '1'}\n")
    wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("state") == "Satisfied", timeout=30,
                what="the ConfigMap created a moment after the namespace's first policy counted")

    later = f"later-{uuid.uuid4().hex[:6]}"
    plane.run_kubectl("create", "namespace", later)
    try:
        apply(plane, later, deployment("app"))
        apply(plane, later, POLICY)
        wait_policy(plane, later, "app", lambda p: entry(p, "settings").get("state") == "Blocking")
        apply(plane, later, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config}\ndata: {a: '1'}\n")
        wait_policy(plane, later, "app", lambda p: entry(p, "settings").get("state") == "Satisfied", timeout=30,
                    what="the ConfigMap's event woke the policy")
    finally:
        plane.run_kubectl("delete", "namespace", later, "--wait=false")


def test_the_operator_watches_a_namespace_for_the_kinds_its_policies_name_and_stops_when_they_go(
        plane, operator, namespace):
    """Its first policy opens exactly the streams of what it targets (Deployments, their Pods) and names (a
    ConfigMap); a Service precondition adds Services and EndpointSlices; deleting the policies closes them.
    The operator says each change of its watches in its log, per namespace."""
    def kinds(verb: str) -> set[str]:
        """The kinds of every '<verb> K1, K2 in namespace <namespace>' line so far."""
        pat = re.compile(rf" depgate: {verb} (.+) in namespace {re.escape(namespace)}$", re.M)
        return {k for m in pat.finditer(operator.log_text()) for k in m.group(1).split(", ")}

    assert operator.counter("depgate_watch_streams") >= 1  # the gated pods', at least
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, POLICY)
    wait_for(lambda: kinds("watching") == {"ConfigMap", "Deployment", "Pod"}, 20,
             what="its first policy's streams, and only those")
    apply(plane, namespace, policy("db", "app", "- name: db\n  service: {name: db}"))
    wait_for(lambda: kinds("watching") == {"ConfigMap", "Deployment", "Pod", "EndpointSlice", "Service"}, 20,
             what="a Service precondition's streams")
    assert kinds("stopped watching") == set()
    plane.run_kubectl("delete", "-n", namespace, "dependencypolicy", "app", "db", "--timeout=60s")
    wait_for(lambda: kinds("stopped watching") == {"ConfigMap", "Deployment", "Pod", "EndpointSlice", "Service"},
             30, what="the namespace's streams closed with its last policy")
