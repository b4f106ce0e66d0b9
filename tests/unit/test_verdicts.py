"""Unit tests for depgate.verdicts: pure judges over API objects as the API server returns them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depgate.verdicts import (
    BLOCKING,
    FAILED,
    PENDING,
    SATISFIED,
    UNKNOWN,
    Verdict,
    count_ready_endpoints,
    judge_job,
    judge_keys,
    judge_resource,
    judge_service,
    judge_workload,
)

# --------------------------------------------------------------------------- builders


def service(name: str = "db", ns: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name}, **spec}}


def endpoint(addr: str, uid: str | None = None, **conditions: Any) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [addr]}
    if conditions:
        ep["conditions"] = conditions
    if uid is not None:
        ep["targetRef"] = {"kind": "Pod", "name": f"pod-{uid}", "namespace": "default", "uid": uid}
    return ep


def eps(svc: str, *endpoints: dict[str, Any], family: str = "IPv4", name: str | None = None,
        ns: str = "default", mirrored: bool = False) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": svc}
    if mirrored:
        labels["endpointslice.kubernetes.io/managed-by"] = "endpointslicemirroring-controller.k8s.io"
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
            "metadata": {"name": name or f"{svc}-{family.lower()}", "namespace": ns, "labels": labels},
            "endpoints": list(endpoints), "ports": [{"port": 5432, "protocol": "TCP"}]}


def job(uid: str = "u1", *conditions: tuple[str, str], **status: Any) -> dict[str, Any]:
    conds = [{"type": t, "status": s, "reason": f"{t}Reason", "message": f"{t} msg"} for t, s in conditions]
    meta = {"name": "migrate", "uid": uid}
    return {"metadata": meta, "spec": {}, "status": {"conditions": conds, **status}}


# --------------------------------------------------------------------------- Verdict


def test_verdict_is_frozen_with_default_uid() -> None:
    v = Verdict(SATISFIED, "X", "m")
    assert v.satisfied_uid is None
    with pytest.raises(AttributeError):
        v.state = BLOCKING  # type: ignore[misc]


# --------------------------------------------------------------------------- service


def test_service_not_found() -> None:
    v = judge_service("db", None, [eps("db", endpoint("10.0.0.1"))], 1)
    assert (v.state, v.reason) == (BLOCKING, "ServiceNotFound")
    assert "db" in v.message


def test_service_no_slices_blocks() -> None:
    v = judge_service("db", service(), [], 1)
    assert (v.state, v.reason) == (BLOCKING, "NoReadyEndpoints")
    assert v.message == "service db has 0 ready endpoints, wants 1"


def test_service_ready_endpoint_satisfies_with_counts() -> None:
    v = judge_service("db", service(), [eps("db", endpoint("10.0.0.1", "p1", ready=True))], 1)
    assert (v.state, v.reason) == (SATISFIED, "EndpointsReady")
    assert v.message == "service db has 1 ready endpoint, wants 1"


def test_absent_ready_condition_means_ready() -> None:
    assert count_ready_endpoints("db", [eps("db", endpoint("10.0.0.1"))]) == 1
    assert count_ready_endpoints("db", [eps("db", endpoint("10.0.0.1", serving=True))]) == 1


def test_not_ready_endpoints_do_not_count() -> None:
    slices = [eps("db", endpoint("10.0.0.1", "p1", ready=False), endpoint("10.0.0.2", "p2", ready=True))]
    assert count_ready_endpoints("db", slices) == 1
    v = judge_service("db", service(), slices, 2)
    assert (v.state, v.reason) == (BLOCKING, "NoReadyEndpoints")
    assert "1 ready endpoint, wants 2" in v.message


def test_terminating_endpoints_do_not_count_even_if_ready() -> None:
    # publishNotReadyAddresses makes a terminating endpoint ready=true: still not a backend to wait for
    slices = [eps("db", endpoint("10.0.0.1", "p1", ready=True, serving=True, terminating=True))]
    assert count_ready_endpoints("db", slices) == 0


def test_dual_stack_slices_count_a_pod_once() -> None:
    slices = [
        eps("db", endpoint("10.0.0.1", "p1"), endpoint("10.0.0.2", "p2"), family="IPv4"),
        eps("db", endpoint("fd00::1", "p1"), endpoint("fd00::2", "p2"), family="IPv6"),
    ]
    assert count_ready_endpoints("db", slices) == 2


def test_mirrored_slice_does_not_double_count() -> None:
    slices = [
        eps("db", endpoint("10.0.0.9"), name="db-manual"),
        eps("db", endpoint("10.0.0.9"), name="db-mirror", mirrored=True),
    ]
    assert count_ready_endpoints("db", slices) == 1


def test_identity_links_across_uid_and_address() -> None:
    # A (uid u, addr 1), B (addr 2, no uid), C (uid u, addr 2): all one backend
    slices = [eps("db", endpoint("10.0.0.1", "u"), endpoint("10.0.0.2"), endpoint("10.0.0.2", "u"))]
    assert count_ready_endpoints("db", slices) == 1


def test_slices_of_other_services_and_namespaces_are_ignored() -> None:
    slices = [eps("other", endpoint("10.0.0.1")), eps("db", endpoint("10.0.0.2"), ns="elsewhere"),
              {"metadata": {"name": "nolabels"}, "endpoints": [{"addresses": ["10.0.0.3"]}]}]
    assert count_ready_endpoints("db", slices, "default") == 0
    assert judge_service("db", service(), slices, 1).state == BLOCKING


def test_slice_with_null_endpoints() -> None:
    assert count_ready_endpoints("db", [{**eps("db"), "endpoints": None}]) == 0


def test_min_ready_zero_satisfied_by_existence() -> None:
    assert judge_service("db", service(), [], 0).state == SATISFIED


def test_external_name_service_blocks_with_hint() -> None:
    v = judge_service("db", service(type="ExternalName", externalName="db.example.com"), [], 1)
    assert (v.state, v.reason) == (BLOCKING, "ExternalNameService")


addr = st.sampled_from([f"10.0.0.{i}" for i in range(5)] + [f"fd00::{i}" for i in range(5)])
uid = st.one_of(st.none(), st.sampled_from(["p0", "p1", "p2", "p3"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(addr, uid, st.sampled_from([None, True, False]),
                                   st.sampled_from([None, False, True])), max_size=5), max_size=4))
def test_count_never_exceeds_distinct_identities(raw: list[list[tuple[str, str | None, Any, Any]]]) -> None:
    slices = []
    for i, endpoints in enumerate(raw):
        built = []
        for a, u, ready, term in endpoints:
            conds = {k: v for k, v in (("ready", ready), ("terminating", term)) if v is not None}
            built.append(endpoint(a, u, **conds))
        slices.append(eps("db", *built, name=f"s{i}"))
    n = count_ready_endpoints("db", slices)
    counted = [(a, u) for es in raw for a, u, r, t in es if r is not False and t is not True]
    assert n <= len({a for a, _ in counted})
    assert n <= len(counted)
    assert (n == 0) == (not counted)
    # order of slices never changes the count
    assert count_ready_endpoints("db", list(reversed(slices))) == n


# --------------------------------------------------------------------------- job


def test_job_complete_remembers_uid() -> None:
    v = judge_job("migrate", job("u1", ("Complete", "True")), None)
    assert v == Verdict(SATISFIED, "JobComplete", "job migrate completed", satisfied_uid="u1")


def test_job_deleted_after_completion_stays_satisfied() -> None:
    v = judge_job("migrate", None, "u1")
    assert (v.state, v.reason, v.satisfied_uid) == (SATISFIED, "CompletedAndDeleted", "u1")


def test_job_never_seen() -> None:
    v = judge_job("migrate", None, None)
    assert (v.state, v.reason) == (BLOCKING, "JobNotFound")


def test_job_failed() -> None:
    v = judge_job("migrate", job("u1", ("Failed", "True")), None)
    assert (v.state, v.reason) == (FAILED, "JobFailed")
    assert "FailedReason" in v.message


def test_job_failure_target_is_failed() -> None:
    v = judge_job("migrate", job("u1", ("FailureTarget", "True")), None)
    assert v.state == FAILED


def test_job_running_blocks_with_counts() -> None:
    v = judge_job("migrate", job("u1", active=1, failed=2), None)
    assert (v.state, v.reason) == (BLOCKING, "JobNotComplete")
    assert v.message == "job migrate has not completed yet (1 active, 0 succeeded, 2 failed)"


def test_job_rerun_with_new_uid_blocks() -> None:
    v = judge_job("migrate", job("u2", active=1), "u1")
    assert (v.state, v.reason, v.satisfied_uid) == (BLOCKING, "JobRerunning", None)
    assert "u2" in v.message


def test_job_rerun_completed_moves_uid() -> None:
    v = judge_job("migrate", job("u2", ("Complete", "True")), "u1")
    assert (v.state, v.satisfied_uid) == (SATISFIED, "u2")


def test_job_false_conditions_do_not_count() -> None:
    v = judge_job("migrate", job("u1", ("Complete", "False"), ("Failed", "False")), None)
    assert v.state == BLOCKING


def test_job_suspended() -> None:
    j = job("u1")
    j["spec"]["suspend"] = True
    assert judge_job("migrate", j, None).reason == "JobSuspended"


def test_job_without_status() -> None:
    v = judge_job("migrate", {"metadata": {"name": "migrate", "uid": "u1"}}, None)
    assert (v.state, v.reason) == (BLOCKING, "JobNotComplete")


# --------------------------------------------------------------------------- secret / configMap


def test_secret_not_found() -> None:
    v = judge_keys("Secret", "creds", None, ["password"])
    assert (v.state, v.reason, v.message) == (BLOCKING, "NotFound", "secret creds not found")


def test_secret_missing_keys_lists_names_never_values() -> None:
    secret = {"metadata": {"name": "creds"}, "data": {"username": "c2VjcmV0dmFsdWU="}}
    v = judge_keys("Secret", "creds", secret, ["username", "password", "host"])
    assert (v.state, v.reason) == (BLOCKING, "MissingKeys")
    assert v.message == "secret creds is missing 2 keys: password, host"
    assert "c2VjcmV0dmFsdWU=" not in v.message


def test_secret_binary_data_does_not_count_and_string_data_ignored() -> None:
    secret = {"data": {}, "binaryData": {"password": "eA=="}, "stringData": {"password": "x"}}
    assert judge_keys("Secret", "creds", secret, ["password"]).state == BLOCKING


def test_secret_all_keys_present() -> None:
    secret = {"data": {"username": "dQ==", "password": ""}}
    v = judge_keys("Secret", "creds", secret, ["username", "password"])
    assert (v.state, v.reason) == (SATISFIED, "KeysPresent")


def test_configmap_binary_data_counts() -> None:
    cm = {"data": {"a": "1"}, "binaryData": {"b": "AA=="}}
    assert judge_keys("ConfigMap", "cfg", cm, ["a", "b"]).state == SATISFIED
    v = judge_keys("ConfigMap", "cfg", {"data": None}, ["a", "a"])
    assert v.message == "configmap cfg is missing 1 key: a"


def test_keys_empty_list_needs_only_existence() -> None:
    assert judge_keys("ConfigMap", "cfg", {}, []).reason == "Exists"


def test_keys_unsupported_kind() -> None:
    assert judge_keys("Pod", "x", {}, []).state == UNKNOWN


# --------------------------------------------------------------------------- workload


def workload(kind: str, gen: int = 2, observed: int | None = 2, replicas: int | None = 3,
             **status: Any) -> dict[str, Any]:
    st_: dict[str, Any] = dict(status)
    if observed is not None:
        st_["observedGeneration"] = observed
    spec = {} if replicas is None else {"replicas": replicas}
    return {"kind": kind, "metadata": {"name": "w", "generation": gen}, "spec": spec, "status": st_}


def test_workload_not_found() -> None:
    v = judge_workload("Deployment", "db", None, 1)
    assert (v.state, v.reason, v.message) == (BLOCKING, "NotFound", "deployment db not found")


def test_deployment_available() -> None:
    v = judge_workload("Deployment", "db", workload("Deployment", availableReplicas=2), 2)
    assert (v.state, v.reason) == (SATISFIED, "Available")
    assert v.message == "deployment db has 2 of 3 available replicas, wants 2"


def test_deployment_unavailable() -> None:
    v = judge_workload("Deployment", "db", workload("Deployment", readyReplicas=3), 1)
    assert (v.state, v.reason) == (BLOCKING, "Unavailable")
    assert v.message == "deployment db has 0 of 3 available replicas, wants 1"


def test_stale_generation_is_pending() -> None:
    v = judge_workload("Deployment", "db", workload("Deployment", gen=3, observed=2, availableReplicas=3), 1)
    assert (v.state, v.reason) == (PENDING, "Progressing")
    v = judge_workload("Deployment", "db", workload("Deployment", gen=1, observed=None), 1)
    assert v.state == PENDING


def test_statefulset_falls_back_to_ready_replicas() -> None:
    v = judge_workload("StatefulSet", "db", workload("StatefulSet", readyReplicas=1), 1)
    assert v.state == SATISFIED
    v = judge_workload("StatefulSet", "db", workload("StatefulSet", readyReplicas=3, availableReplicas=0), 1)
    assert v.state == BLOCKING  # availableReplicas is authoritative when reported


def test_daemonset_number_available() -> None:
    ds = workload("DaemonSet", replicas=None, numberAvailable=1, desiredNumberScheduled=4)
    v = judge_workload("DaemonSet", "agent", ds, 1)
    assert (v.state, v.message) == (SATISFIED, "daemonset agent has 1 of 4 available pods, wants 1")
    assert judge_workload("DaemonSet", "agent", ds, 2).state == BLOCKING


def test_workload_without_generation_is_trusted() -> None:
    obj = {"metadata": {}, "status": {"availableReplicas": 1}}
    assert judge_workload("Deployment", "db", obj, 1).state == SATISFIED


def test_workload_unsupported_kind() -> None:
    assert judge_workload("ReplicaSet", "x", {}, 1).reason == "UnsupportedKind"


# --------------------------------------------------------------------------- resource


def resource(*conds: dict[str, Any], gen: int | None = 4) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "c"}
    if gen is not None:
        meta["generation"] = gen
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta,
            "status": {"conditions": list(conds)}}


def test_resource_not_found() -> None:
    v = judge_resource("cert-manager.io/v1", "Certificate", "tls", None, "Ready", "True")
    assert (v.state, v.reason) == (BLOCKING, "NotFound")
    assert v.message == "certificate tls (cert-manager.io/v1) not found"


def test_resource_condition_met() -> None:
    obj = resource({"type": "Ready", "status": "True", "observedGeneration": 4})
    v = judge_resource("cert-manager.io/v1", "Certificate", "tls", obj, "Ready", "True")
    assert (v.state, v.reason) == (SATISFIED, "ConditionMet")


def test_resource_condition_not_met_carries_reason() -> None:
    obj = resource({"type": "Ready", "status": "False", "reason": "Issuing", "message": "waiting on\norder"})
    v = judge_resource("cert-manager.io/v1", "Certificate", "tls", obj, "Ready", "True")
    assert (v.state, v.reason) == (BLOCKING, "ConditionNotMet")
    assert v.message == "certificate tls has Ready=False, wants True (Issuing: waiting on order)"


def test_resource_condition_missing() -> None:
    v = judge_resource("v1", "Thing", "t", resource({"type": "Other", "status": "True"}), "Ready", "True")
    assert (v.state, v.reason) == (BLOCKING, "ConditionMissing")
    v = judge_resource("v1", "Thing", "t", {"metadata": {}}, "Ready", "True")
    assert v.reason == "ConditionMissing"


def test_resource_stale_condition_is_pending() -> None:
    obj = resource({"type": "Ready", "status": "True", "observedGeneration": 3})
    v = judge_resource("v1", "Thing", "t", obj, "Ready", "True")
    assert (v.state, v.reason) == (PENDING, "Progressing")


def test_resource_wants_false() -> None:
    obj = resource({"type": "Degraded", "status": "False"}, gen=None)
    assert judge_resource("v1", "Thing", "t", obj, "Degraded", "False").state == SATISFIED


def test_resource_long_foreign_message_is_clipped() -> None:
    obj = resource({"type": "Ready", "status": "False", "message": "x" * 5000})
    assert len(judge_resource("v1", "Thing", "t", obj).message) < 300


def test_a_secret_the_operator_may_not_read_says_which_rolebinding_enables_it() -> None:
    from depgate.verdicts import forbidden

    v = forbidden("Secret", "db", "shop", 'secrets "db" is forbidden: User cannot get resource "secrets"')
    assert (v.state, v.reason) == ("Blocking", "Forbidden")
    assert v.message.startswith("run `kubectl create rolebinding depgate-secret-reader -n shop "
                                "--clusterrole=depgate-secret-reader --serviceaccount=depgate-system:depgate`")
    # it survives the status's 256-character clip, whatever the names (namespaces are DNS labels)
    long = forbidden("Secret", "s" * 253, "n" * 63, "x" * 500, operator_namespace="o" * 63)
    assert long.message[:256].count("`") == 2
    other = forbidden("Widget", "w", "shop", "widgets is forbidden")
    assert "depgate.io/aggregate-to-operator" in other.message and "rolebinding" not in other.message
