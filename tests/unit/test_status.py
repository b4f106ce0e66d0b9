"""Unit tests for depgate.status: verdicts + pods -> the whole policy status, and its events."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from depgate.status import (
    CONDITION_TYPES,
    AppliedState,
    Event,
    PreconditionInfo,
    Stalled,
    compute_status,
    live_pods,
    parse_termination_message,
    pod_gate,
    rfc3339,
    target_summary,
    transitions,
)
from depgate.verdicts import Verdict

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
S0, S1 = "2026-01-02T03:04:05Z", "2026-01-02T03:09:05Z"
OK = AppliedState(True, "Applied", "applied to deployment app")

# --------------------------------------------------------------------------- pod builders


def running() -> dict[str, Any]:
    return {"running": {"startedAt": S0}}


def waiting(reason: str = "PodInitializing", message: str | None = None) -> dict[str, Any]:
    w: dict[str, Any] = {"reason": reason}
    if message is not None:
        w["message"] = message
    return {"waiting": w}


def terminated(code: int = 0, message: str | None = None, reason: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error")}
    if message is not None:
        t["message"] = message
    return {"terminated": t}


def pod(
    name: str,
    *inits: tuple[str, dict[str, Any] | None] | tuple[str, dict[str, Any] | None, dict[str, Any]],
    ready: bool = False,
    initialized: bool | None = None,
    phase: str = "Pending",
    deleting: bool = False,
    sidecars: tuple[str, ...] = (),
) -> dict[str, Any]:
    """inits: (container name, state or None for no status yet[, lastState])."""
    spec_inits = [{"name": i[0], **({"restartPolicy": "Always"} if i[0] in sidecars else {})} for i in inits]
    statuses = []
    for item in inits:
        if item[1] is None:
            continue
        cs: dict[str, Any] = {
            "name": item[0],
            "state": item[1],
            "lastState": item[2] if len(item) > 2 else {},
            "ready": False,
            "restartCount": 0,
            "image": "w",
            "imageID": "",
        }
        if item[0] in sidecars:
            cs["started"] = "running" in item[1]
        statuses.append(cs)
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if initialized is not None:
        conds.append({"type": "Initialized", "status": "True" if initialized else "False"})
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if deleting:
        meta["deletionTimestamp"] = S0
    return {
        "metadata": meta,
        "spec": {"initContainers": spec_inits, "containers": [{"name": "app"}]},
        "status": {"phase": phase, "conditions": conds, "initContainerStatuses": statuses},
    }


def done(name: str) -> tuple[str, dict[str, Any]]:
    return (name, terminated(0))


def ready_pod(name: str, *cnames: str) -> dict[str, Any]:
    return pod(name, *(done(c) for c in cnames), ready=True, initialized=True, phase="Running")


DB = PreconditionInfo("db", "tcp")
CACHE = PreconditionInfo("cache", "redis")
SVC = PreconditionInfo("data-tier", "service")
JOB = PreconditionInfo("migrate", "job")


def status(
    *,
    prior: dict[str, Any] | None = None,
    pre: list[PreconditionInfo] | None = None,
    verdicts: dict[str, Verdict] | None = None,
    pods: list[dict[str, Any]] | None = None,
    applied: AppliedState = OK,
    stalled: Stalled | None = None,
    reconciling: bool = False,
    now: datetime = T0,
    generation: int = 3,
    targets: list[Any] | None = None,
) -> dict[str, Any]:
    return compute_status(
        generation=generation,
        prior=prior or {},
        preconditions=pre if pre is not None else [DB],
        verdicts=verdicts or {},
        pods=pods or [],
        targets=targets or ["app"],
        applied=applied,
        stalled=stalled,
        reconciling=reconciling,
        now=now,
    )


def entry(st_: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in st_["preconditions"] if e["name"] == name)


def cond(st_: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in st_["conditions"] if c["type"] == ctype)


# --------------------------------------------------------------------------- helpers


def test_rfc3339_second_precision_utc_z() -> None:
    assert rfc3339(T0) == S0
    assert rfc3339(datetime(2026, 1, 2, 3, 4, 5, 999999)) == S0  # naive taken as UTC
    assert rfc3339(datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))) == S0


def test_parse_termination_message() -> None:
    assert parse_termination_message("Timeout: Refused: connection refused after 30s") == (
        "Timeout",
        "Refused: connection refused after 30s",
    )
    assert parse_termination_message("connection refused: db:5432") == (
        "InitContainerFailed",
        "connection refused: db:5432",
    )
    assert parse_termination_message("\n  Refused:   x\ny\n") == ("Refused", "x")
    assert parse_termination_message("NoColonHere") == ("InitContainerFailed", "NoColonHere")
    assert parse_termination_message("Timeout:") == ("Timeout", "Timeout")
    assert parse_termination_message("  \n") is None
    assert len(parse_termination_message("Timeout: " + "x" * 5000)[1]) <= 256  # type: ignore[index]


# --------------------------------------------------------------------------- pod gates


def test_pod_gate_first_unfinished_init_container_blocks_later_are_pending() -> None:
    p = pod("p", done("user-init"), ("depgate-db", running()), ("depgate-cache", waiting()))
    g = pod_gate(p)
    assert g.passed == frozenset({"user-init"})
    assert g.blocker == "depgate-db"
    assert g.initializing and not g.ready


def test_pod_gate_waiting_pod_initializing_on_later_container_is_not_blocking() -> None:
    p = pod(
        "p",
        ("depgate-db", waiting("CrashLoopBackOff"), terminated(1, "Timeout: x")),
        ("depgate-cache", waiting("PodInitializing")),
    )
    assert pod_gate(p).blocker == "depgate-db"


def test_pod_gate_unscheduled_pod_is_initializing_without_blocker() -> None:
    g = pod_gate(pod("p", ("depgate-db", None)))
    assert (g.blocker, g.initializing, g.passed) == (None, True, frozenset())


def test_pod_gate_initialized_condition_covers_missing_statuses() -> None:
    g = pod_gate(pod("p", ("depgate-db", None), initialized=True))
    assert g.passed == {"depgate-db"} and not g.initializing


def test_pod_gate_native_sidecar_counts_as_done_once_started() -> None:
    p = pod("p", ("mesh", running()), ("depgate-db", running()), sidecars=("mesh",))
    g = pod_gate(p)
    assert "mesh" in g.passed and g.blocker == "depgate-db"


def test_pod_gate_no_init_containers() -> None:
    g = pod_gate({"metadata": {"name": "p"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert (g.blocker, g.initializing, g.ready) == (None, False, True)


def test_pod_gate_uses_status_order_without_spec() -> None:
    p = pod("p", done("a"), ("depgate-db", running()))
    del p["spec"]
    assert pod_gate(p).blocker == "depgate-db"


def test_live_pods_skip_deleting_and_finished() -> None:
    pods = [pod("a"), pod("b", deleting=True), pod("c", phase="Failed"), pod("d", phase="Succeeded")]
    assert [p["metadata"]["name"] for p in live_pods(pods)] == ["a"]


# --------------------------------------------------------------------------- network / task types


def test_network_blocked_reason_from_last_termination_message() -> None:
    pods = [
        pod(
            "p1",
            (
                "depgate-db",
                waiting("CrashLoopBackOff"),
                terminated(124, "Timeout: Refused: connection refused after 30s"),
            ),
        )
    ]
    e = entry(status(pods=pods), "db")
    assert (e["state"], e["reason"], e["message"], e["blockedPods"]) == (
        "Blocking",
        "Timeout",
        "Refused: connection refused after 30s",
        1,
    )
    # exit 124 and restarted: counted apart, for what only a person can fix (issue 16 item 8)
    assert e["timedOutPods"] == 1


def test_timed_out_pods_count_only_exit_124_of_the_blocker() -> None:
    pods = [pod("p1", ("depgate-db", waiting("CrashLoopBackOff"), terminated(124, "Timeout: x"))),
            pod("p2", ("depgate-db", running())),
            pod("p3", ("depgate-db", terminated(1, "Refused: connection refused")))]
    e = entry(status(pods=pods), "db")
    assert (e["blockedPods"], e["timedOutPods"]) == (3, 1)
    assert entry(status(pods=[pod("p4", ("depgate-db", running()))]), "db")["timedOutPods"] == 0


def test_network_blocked_current_termination_non_zero() -> None:
    pods = [pod("p1", ("depgate-db", terminated(1, "Refused: connection refused")))]
    e = entry(status(pods=pods), "db")
    assert (e["reason"], e["message"]) == ("Refused", "connection refused")


def test_network_running_first_attempt_is_generic_waiting() -> None:
    pods = [pod("p1", ("depgate-db", running())), pod("p2", ("depgate-db", running()))]
    e = entry(status(pods=pods), "db")
    assert (e["state"], e["reason"], e["blockedPods"]) == ("Blocking", "Waiting", 2)
    assert e["message"] == "init container depgate-db is running in 2 pods"


def test_running_after_failure_reports_the_last_failure() -> None:
    pods = [pod("p1", ("depgate-db", running(), terminated(124, "Timeout: DNS: no such host db")))]
    assert entry(status(pods=pods), "db")["reason"] == "Timeout"


def test_informative_detail_wins_over_plain_running() -> None:
    pods = [
        pod("a", ("depgate-db", running())),
        pod("b", ("depgate-db", waiting("CrashLoopBackOff"), terminated(1, "Refused: nope"))),
    ]
    assert entry(status(pods=pods), "db")["reason"] == "Refused"


def test_earlier_success_is_not_a_failure_message() -> None:
    pods = [pod("p", ("depgate-db", running(), terminated(0, "Satisfied: db:5432 accepted")))]
    e = entry(status(pods=pods), "db")
    assert (e["state"], e["reason"]) == ("Blocking", "Waiting")


def test_waiting_errors_are_reported() -> None:
    pods = [pod("p", ("depgate-cache", waiting("CreateContainerConfigError", 'secret "redis" not found')))]
    e = entry(status(pre=[CACHE], pods=pods), "cache")
    assert (e["state"], e["reason"], e["message"]) == (
        "Blocking",
        "CreateContainerConfigError",
        'secret "redis" not found',
    )


def test_termination_without_message() -> None:
    pods = [pod("p", ("depgate-db", waiting("CrashLoopBackOff"), terminated(137, reason="OOMKilled")))]
    assert (entry(status(pods=pods), "db")["reason"], entry(status(pods=pods), "db")["message"]) == (
        "OOMKilled",
        "exited with code 137",
    )
    pods = [pod("p", ("depgate-db", terminated(2)))]
    assert entry(status(pods=pods), "db")["reason"] == "InitContainerFailed"


def test_network_satisfied_when_a_pod_passed_it() -> None:
    pods = [pod("p1", done("depgate-db"), ("depgate-cache", running()))]
    st_ = status(pre=[DB, CACHE], pods=pods)
    assert entry(st_, "db")["state"] == "Satisfied"
    assert entry(st_, "db")["reason"] == "Passed"
    assert entry(st_, "cache")["state"] == "Blocking"
    assert st_["blocking"] == ["cache"]


def test_blocked_anywhere_wins_over_passed_elsewhere() -> None:
    pods = [ready_pod("old", "depgate-db"), pod("new", ("depgate-db", running()))]
    e = entry(status(pods=pods), "db")
    assert (e["state"], e["blockedPods"]) == ("Blocking", 1)


def test_network_no_pods_is_unknown() -> None:
    e = entry(status(pods=[]), "db")
    assert (e["state"], e["reason"]) == ("Unknown", "NoPods")
    assert cond(status(pods=[]), "PreconditionsMet")["status"] == "Unknown"


def test_network_not_reached_is_pending() -> None:
    pods = [pod("p", ("depgate-db", running()), ("depgate-cache", waiting()))]
    e = entry(status(pre=[DB, CACHE], pods=pods), "cache")
    assert (e["state"], e["reason"], e["blockedPods"]) == ("Pending", "NotReached", 0)


def test_unschedulable_pods_say_the_schedulers_message_instead_of_not_reached() -> None:
    msg = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available"
    pods = []
    for name in ("b", "a"):
        p = pod(name, ("depgate-db", None))
        p["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": msg})
        pods.append(p)
    e = entry(status(pods=pods), "db")
    assert (e["state"], e["reason"], e["blockedPods"]) == ("Pending", "Unschedulable", 0)
    assert e["message"] == f"pod a (and 1 more pod) cannot be scheduled: {msg}"
    pods[0]["status"]["conditions"][-1]["reason"] = "SchedulingGated"  # not the scheduler refusing
    pods.pop()
    assert entry(status(pods=pods), "db")["reason"] == "NotReached"


def test_pods_without_our_container_yet() -> None:
    e = entry(status(pods=[ready_pod("old", "user-init")]), "db")
    assert (e["state"], e["reason"]) == ("Pending", "NotInPods")


def test_deleting_pods_do_not_count() -> None:
    pods = [pod("gone", ("depgate-db", running()), deleting=True), ready_pod("p", "depgate-db")]
    st_ = status(pods=pods)
    assert entry(st_, "db")["state"] == "Satisfied"
    assert st_["pods"] == {"total": 1, "initializing": 0, "ready": 1}


def test_task_types_read_from_pods() -> None:
    dl = PreconditionInfo("model", "download")
    pods = [
        pod("p", ("depgate-model", waiting("CrashLoopBackOff"), terminated(1, "ChecksumMismatch: got ab")))
    ]
    e = entry(status(pre=[dl], pods=pods), "model")
    assert (e["state"], e["reason"], e["message"]) == ("Blocking", "ChecksumMismatch", "got ab")
    cmd = PreconditionInfo("schema", "command")
    e = entry(
        status(pre=[cmd], pods=[pod("p", ("depgate-schema", waiting("ImagePullBackOff", "back-off")))]),
        "schema",
    )
    assert (e["state"], e["reason"]) == ("Blocking", "ImagePullBackOff")


# --------------------------------------------------------------------------- api types


def test_api_state_is_the_verdict_pods_add_blocked_count() -> None:
    v = Verdict("Blocking", "NoReadyEndpoints", "service data-tier has 0 ready endpoints, wants 1")
    pods = [pod("p1", ("depgate-data-tier", running())), pod("p2", ("depgate-data-tier", running()))]
    st_ = status(pre=[SVC], verdicts={"data-tier": v}, pods=pods)
    e = entry(st_, "data-tier")
    assert (e["state"], e["reason"], e["message"], e["blockedPods"]) == (
        "Blocking",
        "NoReadyEndpoints",
        v.message,
        2,
    )


def test_api_satisfied_verdict_stays_satisfied_while_pods_catch_up() -> None:
    # the waiter in the pods waits for exactly this state: pods still waiting must not flip it
    v = Verdict("Satisfied", "EndpointsReady", "service data-tier has 1 ready endpoint, wants 1")
    st_ = status(pre=[SVC], verdicts={"data-tier": v}, pods=[pod("p", ("depgate-data-tier", running()))])
    assert entry(st_, "data-tier")["state"] == "Satisfied"
    assert entry(st_, "data-tier")["blockedPods"] == 1
    assert st_["blocking"] == []


def test_api_without_verdict_is_unknown() -> None:
    e = entry(status(pre=[SVC]), "data-tier")
    assert (e["state"], e["reason"]) == ("Unknown", "NotEvaluated")


def test_api_blocking_even_if_pods_passed_before() -> None:
    v = Verdict("Blocking", "JobRerunning", "job migrate was recreated")
    e = entry(status(pre=[JOB], verdicts={"migrate": v}, pods=[ready_pod("p", "depgate-migrate")]), "migrate")
    assert e["state"] == "Blocking"


def test_satisfied_uid_from_verdict_then_carried_from_prior() -> None:
    st1 = status(pre=[JOB], verdicts={"migrate": Verdict("Satisfied", "JobComplete", "done", "u1")})
    assert entry(st1, "migrate")["satisfiedUID"] == "u1"
    st2 = status(prior=st1, pre=[JOB], verdicts={"migrate": Verdict("Blocking", "JobRerunning", "m")}, now=T1)
    assert entry(st2, "migrate")["satisfiedUID"] == "u1"
    assert "satisfiedUID" not in entry(status(pre=[SVC]), "data-tier")


def test_failed_counts_as_blocking() -> None:
    st_ = status(
        pre=[JOB, DB],
        verdicts={"migrate": Verdict("Failed", "JobFailed", "job migrate failed")},
        pods=[ready_pod("p", "depgate-migrate", "depgate-db")],
    )
    assert st_["blocking"] == ["migrate"]
    assert cond(st_, "PreconditionsMet")["status"] == "False"


# --------------------------------------------------------------------------- shape


BLOCKED_MSG = "data-tier is Blocking: NoReadyEndpoints: service data-tier has 0 ready endpoints, wants 1"


def test_full_shape() -> None:
    v = Verdict("Blocking", "NoReadyEndpoints", "service data-tier has 0 ready endpoints, wants 1")
    pods = [pod("p1", ("depgate-data-tier", running())), pod("p2", ("depgate-data-tier", running()))]
    st_ = status(pre=[SVC], verdicts={"data-tier": v}, pods=pods, targets=["app-tier"])
    assert st_ == {
        "observedGeneration": 3,
        "targets": [{"kind": "Deployment", "name": "app-tier"}],
        "targetSummary": "deploy/app-tier",
        "blocking": ["data-tier"],
        "blockingSummary": "data-tier",
        "pods": {"total": 2, "initializing": 2, "ready": 0},
        "podSummary": "0/2 ready, 2 initializing",
        "preconditions": [
            {
                "name": "data-tier",
                "type": "service",
                "state": "Blocking",
                "reason": "NoReadyEndpoints",
                "message": "service data-tier has 0 ready endpoints, wants 1",
                "blockedPods": 2,
                "timedOutPods": 0,
                "since": S0,
            }
        ],
        "conditions": [
            {
                "type": "Applied",
                "status": "True",
                "reason": "Applied",
                "message": "applied to deployment app",
                "lastTransitionTime": S0,
                "observedGeneration": 3,
            },
            {
                "type": "PreconditionsMet",
                "status": "False",
                "reason": "PreconditionsBlocking",
                "message": BLOCKED_MSG,
                "lastTransitionTime": S0,
                "observedGeneration": 3,
            },
            {
                "type": "Ready",
                "status": "False",
                "reason": "PreconditionsBlocking",
                "message": BLOCKED_MSG,
                "lastTransitionTime": S0,
                "observedGeneration": 3,
            },
            {
                "type": "Reconciling",
                "status": "False",
                "reason": "Reconciled",
                "message": "generation 3 reconciled",
                "lastTransitionTime": S0,
                "observedGeneration": 3,
            },
            {
                "type": "Stalled",
                "status": "False",
                "reason": "NotStalled",
                "message": "",
                "lastTransitionTime": S0,
                "observedGeneration": 3,
            },
        ],
    }


def test_blocking_in_declared_order_and_summary() -> None:
    pre = [PreconditionInfo("z", "tcp"), PreconditionInfo("a", "service"), PreconditionInfo("m", "job")]
    verdicts = {
        "a": Verdict("Blocking", "ServiceNotFound", "x"),
        "m": Verdict("Satisfied", "JobComplete", "y"),
    }
    pods = [pod("p", ("depgate-z", running()))]
    st_ = status(pre=pre, verdicts=verdicts, pods=pods)
    assert st_["blocking"] == ["z", "a"]
    assert st_["blockingSummary"] == "z,a"
    assert cond(st_, "PreconditionsMet")["message"].startswith("z is Blocking: Waiting: ")
    assert cond(st_, "PreconditionsMet")["message"].endswith("(and 1 more)")
    assert [e["name"] for e in st_["preconditions"]] == ["z", "a", "m"]


def test_all_satisfied_ready() -> None:
    st_ = status(
        pre=[DB, SVC],
        verdicts={"data-tier": Verdict("Satisfied", "EndpointsReady", "ok")},
        pods=[ready_pod("p", "depgate-db", "depgate-data-tier")],
    )
    assert st_["blocking"] == [] and st_["blockingSummary"] == "-"
    assert [(c["type"], c["status"]) for c in st_["conditions"]] == [
        ("Applied", "True"),
        ("PreconditionsMet", "True"),
        ("Ready", "True"),
        ("Reconciling", "False"),
        ("Stalled", "False"),
    ]
    assert cond(st_, "PreconditionsMet")["reason"] == "AllSatisfied"
    assert st_["pods"] == {"total": 1, "initializing": 0, "ready": 1}
    assert entry(st_, "db")["lastSatisfiedTime"] == S0


def test_targets_sorted_and_deduplicated() -> None:
    assert status(targets=["b", "a", "b"])["targets"] == [{"kind": "Deployment", "name": "a"},
                                                         {"kind": "Deployment", "name": "b"}]


def test_targets_of_every_kind_count_their_own_pods_and_say_what_holds_them() -> None:
    web, db, nightly = ("Deployment", "web"), ("StatefulSet", "db"), ("CronJob", "nightly")
    held = pod("db-0", ("depgate-cache", running()))
    up = pod("web-1", ("depgate-cache", terminated(0)), ready=True)
    st_ = compute_status(generation=1, prior={}, preconditions=[PreconditionInfo("cache", "tcp")], verdicts={},
                         pods=[held, up], targets=[nightly, db, web, web], applied=OK, stalled=None,
                         reconciling=False, now=T0, target_pods={web: [up], db: [held], nightly: []},
                         target_notes={nightly: "cronjob nightly: its Jobs created before keep running ungated"})
    assert st_["targets"] == [
        {"kind": "Deployment", "name": "web", "pods": {"total": 1, "initializing": 0, "ready": 1}},
        {"kind": "StatefulSet", "name": "db", "pods": {"total": 1, "initializing": 1, "ready": 0},
         "blockedOn": ["cache"]},
        {"kind": "CronJob", "name": "nightly", "pods": {"total": 0, "initializing": 0, "ready": 0},
         "note": "cronjob nightly: its Jobs created before keep running ungated"},
    ]
    assert st_["targetSummary"] == "deploy/web,sts/db,cj/nightly"
    assert st_["podSummary"] == "1/2 ready, 1 initializing"
    many = [("Deployment", f"d{i}") for i in range(5)]
    assert status(targets=many)["targetSummary"] == "deploy/d0,deploy/d1,deploy/d2,+2"
    assert target_summary([]) == "-" and status(pods=[])["podSummary"] == "0/0 ready"


def test_condition_order_is_stable_and_complete() -> None:
    st_ = status(
        stalled=Stalled("InvalidSpec", "bad"), reconciling=True, applied=AppliedState(False, "X", "y")
    )
    assert tuple(c["type"] for c in st_["conditions"]) == CONDITION_TYPES


def test_pending_only_gives_unknown_preconditions_met() -> None:
    pods = [pod("p", ("user", running()), ("depgate-db", waiting()))]
    c = cond(status(pods=pods), "PreconditionsMet")
    assert (c["status"], c["reason"]) == ("Unknown", "PreconditionsPending")
    c = cond(status(pods=[]), "PreconditionsMet")
    assert (c["status"], c["reason"]) == ("Unknown", "PreconditionsUnknown")
    c = cond(status(pre=[]), "PreconditionsMet")
    assert (c["status"], c["reason"]) == ("Unknown", "NoPreconditions")


# --------------------------------------------------------------------------- Ready / Reconciling / Stalled


def test_ready_follows_applied_first() -> None:
    st_ = status(
        applied=AppliedState(False, "ApplyFailed", "deployment app: 422 invalid"),
        pods=[ready_pod("p", "depgate-db")],
    )
    r = cond(st_, "Ready")
    assert (r["status"], r["reason"], r["message"]) == ("False", "ApplyFailed", "deployment app: 422 invalid")


def test_ready_unknown_when_preconditions_unknown() -> None:
    r = cond(status(pods=[]), "Ready")
    assert (r["status"], r["reason"]) == ("Unknown", "PreconditionsUnknown")


def test_stalled() -> None:
    stalled = Stalled(
        "DependencyCycle", "deployment/a -> service/b -> deployment/b -> service/a -> deployment/a"
    )
    st_ = status(stalled=stalled, pods=[ready_pod("p", "depgate-db")])
    s = cond(st_, "Stalled")
    assert (s["status"], s["reason"], s["message"]) == ("True", "DependencyCycle", stalled.message)
    r = cond(st_, "Ready")
    assert (r["status"], r["reason"]) == ("False", "DependencyCycle")


def test_reconciling() -> None:
    r = cond(status(reconciling=True, generation=7), "Reconciling")
    assert (r["status"], r["reason"], r["observedGeneration"]) == ("True", "Progressing", 7)


# --------------------------------------------------------------------------- time keeping


def test_identical_inputs_give_identical_status_later() -> None:
    kw: dict[str, Any] = {
        "pre": [DB, SVC],
        "verdicts": {"data-tier": Verdict("Blocking", "ServiceNotFound", "m")},
        "pods": [pod("p", ("depgate-db", running()))],
    }
    st1 = status(**kw)
    st2 = status(prior=copy.deepcopy(st1), now=T1, **kw)
    assert st2 == st1


def test_since_moves_only_when_state_changes() -> None:
    st1 = status(pods=[pod("p", ("depgate-db", running()))])
    # same state, another reason: since stays
    st2 = status(prior=st1, now=T1, pods=[pod("p", ("depgate-db", terminated(1, "Refused: x")))])
    assert entry(st2, "db")["since"] == S0
    assert entry(st2, "db")["reason"] == "Refused"
    st3 = status(prior=st2, now=T1, pods=[ready_pod("p", "depgate-db")])
    assert entry(st3, "db")["since"] == S1
    assert entry(st3, "db")["lastSatisfiedTime"] == S1


def test_last_satisfied_time_kept_after_loss_and_while_satisfied() -> None:
    st1 = status(pods=[ready_pod("p", "depgate-db")])
    st2 = status(prior=st1, now=T1, pods=[ready_pod("p", "depgate-db"), ready_pod("q", "depgate-db")])
    assert entry(st2, "db")["lastSatisfiedTime"] == S0
    st3 = status(prior=st2, now=T1, pods=[pod("p", ("depgate-db", running()))])
    e = entry(st3, "db")
    assert (e["state"], e["since"], e["lastSatisfiedTime"]) == ("Blocking", S1, S0)


def test_redefined_precondition_carries_nothing() -> None:
    st1 = status(pre=[JOB], verdicts={"migrate": Verdict("Satisfied", "JobComplete", "done", "u1")})
    st2 = status(
        prior=st1, now=T1, pre=[PreconditionInfo("migrate", "tcp")], pods=[ready_pod("p", "depgate-migrate")]
    )
    e = entry(st2, "migrate")
    assert e["since"] == S1 and "satisfiedUID" not in e and e["lastSatisfiedTime"] == S1


def test_removed_precondition_is_dropped() -> None:
    st1 = status(pre=[DB, CACHE])
    assert [e["name"] for e in status(prior=st1, pre=[CACHE])["preconditions"]] == ["cache"]


def test_last_transition_time_moves_only_on_status_change() -> None:
    st1 = status(pods=[pod("p", ("depgate-db", running()))])
    # reason/message change, status stays False
    st2 = status(
        prior=st1, now=T1, pods=[pod("p", ("depgate-db", terminated(1, "Refused: x")))], generation=4
    )
    pm = cond(st2, "PreconditionsMet")
    assert (pm["status"], pm["lastTransitionTime"], pm["observedGeneration"]) == ("False", S0, 4)
    assert cond(st2, "PreconditionsMet")["message"] != cond(st1, "PreconditionsMet")["message"]
    st3 = status(prior=st2, now=T1, pods=[ready_pod("p", "depgate-db")])
    assert cond(st3, "PreconditionsMet")["lastTransitionTime"] == S1
    assert cond(st3, "Ready")["lastTransitionTime"] == S1
    assert cond(st3, "Applied")["lastTransitionTime"] == S0


def test_malformed_prior_is_tolerated() -> None:
    prior = {
        "preconditions": [None, {"name": 3}, {"name": "db", "type": "tcp", "state": "Blocking", "since": 5}],
        "conditions": "nope",
    }
    st_ = status(prior=prior, pods=[pod("p", ("depgate-db", running()))])
    assert entry(st_, "db")["since"] == S0


states = st.sampled_from(["Satisfied", "Blocking", "Pending", "Failed", "Unknown"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(states, st.sampled_from(["A", "B"])), min_size=1, max_size=4),
    st.lists(st.tuples(states, st.sampled_from(["A", "B"])), min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
)
def test_fixpoint_and_time_monotonic(
    first: list[tuple[str, str]], second: list[tuple[str, str]], ok: bool, stalled: bool
) -> None:
    pre = [PreconditionInfo(f"p{i}", "service") for i in range(max(len(first), len(second)))]

    def vs(rows: list[tuple[str, str]]) -> dict[str, Verdict]:
        return {f"p{i}": Verdict(s, r, f"{s} {r}") for i, (s, r) in enumerate(rows)}

    kw: dict[str, Any] = {
        "applied": AppliedState(ok, "Applied" if ok else "ApplyFailed", "m"),
        "stalled": Stalled("Conflict", "c") if stalled else None,
    }
    st1 = status(pre=pre, verdicts=vs(first), **kw)
    assert status(prior=st1, now=T1, pre=pre, verdicts=vs(first), **kw) == st1
    st2 = status(prior=st1, now=T1, pre=pre, verdicts=vs(second), **kw)
    for e1, e2 in zip(st1["preconditions"], st2["preconditions"], strict=True):
        assert e2["since"] == (S0 if e1["state"] == e2["state"] else S1)
    for c1, c2 in zip(st1["conditions"], st2["conditions"], strict=True):
        assert c2["lastTransitionTime"] == (S0 if c1["status"] == c2["status"] else S1)
    assert st2["blocking"] == [
        e["name"] for e in st2["preconditions"] if e["state"] in ("Blocking", "Failed")
    ]
    ready = cond(st2, "Ready")["status"]
    assert (ready == "True") == (
        ok and not stalled and all(e["state"] == "Satisfied" for e in st2["preconditions"])
    )


# --------------------------------------------------------------------------- events


def test_events_on_first_status() -> None:
    st_ = status(
        pre=[DB, SVC],
        verdicts={"data-tier": Verdict("Blocking", "ServiceNotFound", "service gone")},
        pods=[pod("p", done("depgate-db"), ("depgate-data-tier", running()))],
    )
    assert transitions({}, st_) == [
        Event("Normal", "Applied", "applied to deployment app"),
        Event("Normal", "PreconditionSatisfied", "db satisfied: init container depgate-db passed in 1 pod"),
        Event("Warning", "PreconditionBlocking", "data-tier blocking: ServiceNotFound: service gone"),
    ]


def test_no_events_without_change() -> None:
    st_ = status(pods=[pod("p", ("depgate-db", running()))])
    assert transitions(st_, status(prior=st_, now=T1, pods=[pod("p", ("depgate-db", running()))])) == []


def test_events_ready_and_not_ready() -> None:
    st1 = status(pods=[pod("p", ("depgate-db", running()))])
    st2 = status(prior=st1, now=T1, pods=[ready_pod("p", "depgate-db")])
    ev = transitions(st1, st2)
    assert [e.reason for e in ev] == ["PreconditionSatisfied", "Ready"]
    st3 = status(prior=st2, now=T1, pods=[pod("p", ("depgate-db", running(), terminated(1, "Refused: x")))])
    ev = transitions(st2, st3)
    assert [(e.type, e.reason) for e in ev] == [("Warning", "PreconditionBlocking"), ("Warning", "NotReady")]
    assert ev[0].message == "db blocking: Refused: x"


def test_events_failed_and_stalled_and_recovered() -> None:
    st1 = status(pre=[JOB], verdicts={"migrate": Verdict("Blocking", "JobNotComplete", "m")})
    st2 = status(
        prior=st1,
        pre=[JOB],
        verdicts={"migrate": Verdict("Failed", "JobFailed", "job migrate failed")},
        stalled=Stalled("DependencyCycle", "deployment/a -> deployment/a"),
    )
    ev = transitions(st1, st2)
    assert ev[0] == Event("Warning", "DependencyCycle", "deployment/a -> deployment/a")
    assert Event("Warning", "PreconditionFailed", "migrate failed: JobFailed: job migrate failed") in ev
    st3 = status(
        prior=st2,
        pre=[JOB],
        verdicts={"migrate": Verdict("Failed", "JobFailed", "job migrate failed")},
        stalled=Stalled("Conflict", "policy other claims deployment app"),
    )
    assert transitions(st2, st3) == [Event("Warning", "Conflict", "policy other claims deployment app")]
    st4 = status(
        prior=st3, pre=[JOB], verdicts={"migrate": Verdict("Failed", "JobFailed", "job migrate failed")}
    )
    assert transitions(st3, st4) == [Event("Normal", "Recovered", "the policy is no longer stalled")]


def test_events_apply_failure() -> None:
    st1 = status()
    st2 = status(prior=st1, applied=AppliedState(False, "ApplyFailed", "422"))
    assert transitions(st1, st2)[0] == Event("Warning", "ApplyFailed", "422")


def test_a_target_counts_its_pods_held_at_depgates_scheduling_gate() -> None:
    """Made before the policy in a namespace that opted in: at the gate depgate.io/render, without
    depgate's init containers (depgate.gates.held)."""
    from depgate import gates

    old = {"metadata": {"name": "web-old"}, "spec": {"schedulingGates": [{"name": gates.GATE}],
                                                      "containers": [{"name": "app"}]}, "status": {"phase": "Pending"}}
    new = pod("web-new", ("depgate-cache", running()))
    web = ("Deployment", "web")
    st_ = compute_status(generation=1, prior={}, preconditions=[PreconditionInfo("cache", "tcp")], verdicts={},
                         pods=[old, new], targets=[web], applied=OK, stalled=None, reconciling=False, now=T0,
                         target_pods={web: [old, new]})
    assert st_["targets"][0]["pods"] == {"total": 2, "initializing": 1, "ready": 0, "held": 1}
