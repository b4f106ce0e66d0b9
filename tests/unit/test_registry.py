"""depgate.registry: every module that has a piece of a precondition type or a kind has it for every
entry of the registry, and nothing the registry does not name (adding a type misses no piece)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from depgate import constants, registry, render, spec, status, verdicts
from depgate.graph import dependencies
from depgate.waiter import config as waiter_config

ONE_OF_EACH: dict[str, dict[str, Any]] = {
    "tcp": {"host": "db", "port": 5432},
    "redis": {"host": "cache", "passwordSecretRef": {"name": "redis", "key": "password"}},
    "http": {"url": "https://api/healthz", "caConfigMap": {"name": "ca", "key": "ca.crt"},
             "headers": [{"name": "X-Probe", "value": "1"}]},
    "dns": {"name": "api.example.org"},
    "service": {"name": "db"},
    "job": {"name": "migrate"},
    "secret": {"name": "creds", "keys": ["password"]},
    "configMap": {"name": "cfg"},
    "workload": {"kind": "StatefulSet", "name": "db"},
    "resource": {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "name": "tls"},
    "download": {"url": "https://files/model.bin", "sha256": "0" * 64, "path": "model.bin"},
    "command": {"image": "busybox", "command": ["true"]},
}
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"template": {"spec": {"automountServiceAccountToken": False,
                                   "containers": [{"name": "app", "image": "app:1"}]}}},
}


def policy_of_every_type() -> spec.Policy:
    return spec.parse_policy({
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"workloadRef": {"name": "web"},
                 "preconditions": [{"name": f"p-{t.lower()}", t: body} for t, body in ONE_OF_EACH.items()]},
    })


def test_the_example_covers_every_registered_type() -> None:
    assert list(ONE_OF_EACH) == list(registry.TYPES)


def test_spec_parses_exactly_the_registered_types_in_their_order() -> None:
    assert list(spec.BODY_TYPES) == list(registry.TYPES) == list(spec.TYPES)
    assert [p.type for p in policy_of_every_type().preconditions] == list(registry.TYPES)
    assert set(registry.GROUPS.values()) == {constants.NETWORK, constants.TASK, constants.API}


def test_every_waiter_subcommand_is_rendered_and_known_to_the_waiter() -> None:
    waiters = {t.waiter for t in registry.PRECONDITION_TYPES.values() if t.waiter is not None}
    assert waiters == set(render._WAITER_ARGS) == set(waiter_config._SUBCOMMANDS)
    for t in registry.PRECONDITION_TYPES.values():
        if t.judged_by_operator:
            assert t.group == constants.API and t.waiter == registry.VERDICT_WAITER, t
        else:
            assert t.group != constants.API and not t.watches and not t.custom_kind, t


def test_rendered_init_containers_are_what_the_waiter_parses() -> None:
    policy = policy_of_every_type()
    containers = render.init_containers(policy, DEPLOYMENT, render.RenderConfig())
    assert [c["name"] for c in containers] == [constants.container_name(p.name) for p in policy.preconditions]
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    for pre, container in zip(policy.preconditions, containers, strict=True):
        waiter = registry.PRECONDITION_TYPES[pre.type].waiter
        if waiter is None:  # the user's own container
            assert container["command"] == ["true"] and container["image"] == "busybox"
            continue
        assert container["command"] == ["depgate", "wait", waiter]
        parsed = waiter_config.parse([waiter, *container["args"]], env)
        assert parsed.kind == waiter, pre.type


def test_operator_judged_bodies_name_an_object_and_network_bodies_a_host() -> None:
    for pre in policy_of_every_type().preconditions:
        kind = registry.PRECONDITION_TYPES[pre.type]
        assert hasattr(pre.body, "named_object") == kind.judged_by_operator, pre.type
        assert hasattr(pre.body, "host") == (kind.group == constants.NETWORK or pre.type == "download"), pre.type
    deps = dependencies(policy_of_every_type(), "shop", {("shop", "db"), ("shop", "cache"), ("shop", "api")})
    assert [d.precondition for d in deps] == [
        "p-tcp", "p-redis", "p-http", "p-service", "p-job", "p-secret", "p-configmap", "p-workload", "p-resource"
    ]
    assert {d.kind for d in deps} == {"Service", "Job", "Secret", "ConfigMap", "StatefulSet",
                                      "Certificate.cert-manager.io"}


def test_status_takes_the_verdict_exactly_for_the_types_the_operator_judges() -> None:
    policy = policy_of_every_type()
    satisfied = verdicts.Verdict(constants.SATISFIED, "Judged", "by the operator")
    new = status.compute_status(
        generation=1, prior={}, preconditions=[status.PreconditionInfo(p.name, p.type) for p in policy.preconditions],
        verdicts={p.name: satisfied for p in policy.preconditions}, pods=[], targets=["web"],
        applied=status.AppliedState(True, "Applied", ""), stalled=None, reconciling=False,
        now=datetime(2026, 1, 1, tzinfo=UTC))
    judged = {e["type"]: e["state"] for e in new["preconditions"]}
    assert judged == {t: constants.SATISFIED if registry.judged_by_operator(t) else constants.UNKNOWN
                      for t in registry.TYPES}


def test_workload_kinds() -> None:
    assert spec.WORKLOAD_KINDS == registry.AWAITABLE_KINDS == ("Deployment", "StatefulSet", "DaemonSet")
    assert registry.TARGET_KINDS == tuple(registry.WORKLOAD_KINDS) == (
        "Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job")
    assert spec.WorkloadRef("web").kind == registry.TARGET_KINDS[0] == "Deployment"
    workload = registry.PRECONDITION_TYPES["workload"]
    assert workload.watches == tuple(registry.WORKLOAD_KINDS[k].api for k in registry.AWAITABLE_KINDS)
    for name in registry.AWAITABLE_KINDS:
        assert spec.WorkloadCheck(name, "x").named_object() == ("apps/v1", name, "x")
    # only a Job's template cannot change after it is created; a CronJob's lives in its jobTemplate
    assert [k for k, w in registry.WORKLOAD_KINDS.items() if not w.template_mutable] == ["Job"]
    cron = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}}
    assert registry.pod_template(cron) == {"spec": {"containers": []}}
    assert registry.pod_template({"kind": "Job", "spec": {"template": {"spec": {"x": 1}}}}) == {"spec": {"x": 1}}
    assert registry.pod_template({"kind": "Job"}) == {}
    assert registry.pod_template({"spec": {"template": {"spec": {"x": 1}}}}) == {"spec": {"x": 1}}  # no kind
    with pytest.raises(spec.SpecError, match=r"spec\.workloadRef\.kind: must be one of Deployment"):
        spec.parse_policy({"metadata": {"name": "p"}, "spec": {"workloadRef": {"kind": "ReplicaSet", "name": "db"},
                                                               "preconditions": [{"name": "a", "dns": {"name": "x"}}]}})


def test_api_kinds() -> None:
    assert registry.DEPLOYMENT.group == "apps" and registry.DEPLOYMENT.version == "v1"
    assert registry.SERVICE.group == "" and registry.SERVICE.version == "v1"
    assert registry.ApiKind("depgate.io/v1alpha1", "DependencyPolicy",
                                                          "dependencypolicies") == registry.DEPENDENCY_POLICY
    assert registry.API_KINDS["EndpointSlice"] == registry.ENDPOINT_SLICE
    # not SECRET: Secrets are watched per namespace, where the operator may read them (plan.custom_resources)
    assert registry.watched_kinds() == (registry.SERVICE, registry.ENDPOINT_SLICE, registry.JOB,
                                        registry.CONFIG_MAP, registry.DEPLOYMENT, registry.STATEFUL_SET,
                                        registry.DAEMON_SET)


def test_label_selector_requirement_with_an_unknown_operator_matches_nothing() -> None:
    assert not spec.LabelSelectorRequirement("tier", "Gt", ("1",)).matches({"tier": "2"})
    assert not spec.LabelSelectorRequirement("tier", "Gt").matches({})
    assert spec.Selector(match_labels={"app": "a"}).matches({"app": "a", "x": "y"})
    assert not spec.Selector(match_labels={"app": "a"}).matches(None)
