"""Verdicts + pods -> a policy's whole `.status` (pure: standard library only).

`compute_status` returns the full status object of docs/design.md; the caller writes it whole.
It is a pure function of its inputs and the prior status: times only move when something
changes (`since` when a state changes, `lastTransitionTime` when a condition's status changes),
so the same inputs over the same prior give an equal dict and the caller can skip the write when
`new == prior`. `transitions(prior, new)` lists the Kubernetes Events worth emitting for a change.

Where the truth comes from (depgate.registry says which type is judged where):
- types judged by the operator (the api group: service, job, secret, configMap, workload,
  resource; depgate.verdicts): the state is the verdict's, always, because `depgate wait verdict`
  in the pods waits for exactly this state. Pods only add `blockedPods`.
- types judged in the pod (network and task: tcp, redis, http, dns, download, command): the
  init container `depgate-<name>` of each pod says whether it passed (terminated with exit code
  0), blocks (running, waiting, or failed and not yet succeeded since), or is not reached yet
  (an earlier init container still runs). The waiter writes one line, `Class: detail`, into its
  termination log; that line is the reason and message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from depgate import gates as depgate_gates
from depgate.constants import (
    BLOCKING,
    BLOCKING_STATES,
    CONTAINER_PREFIX,
    FAILED,
    PENDING,
    SATISFIED,
    UNKNOWN,
    container_name,
)
from depgate.registry import WORKLOAD_KINDS, judged_by_operator, short_name
from depgate.verdicts import Verdict

CONDITION_TYPES: Final = ("Applied", "PreconditionsMet", "Ready", "Reconciling", "Stalled")

NORMAL: Final = "Normal"
WARNING: Final = "Warning"

_CAMEL = re.compile(r"[A-Z][A-Za-z0-9]*\Z")
# Waiting reasons that say nothing beyond "it is (re)starting": the last termination says more.
_QUIET_WAITING = frozenset({"", "CrashLoopBackOff", "PodInitializing", "ContainerCreating"})
_MESSAGE_LIMIT = 256


@dataclass(frozen=True)
class PreconditionInfo:
    """One declared precondition: its name and type (tcp, service, job, ...)."""

    name: str
    type: str


@dataclass(frozen=True)
class AppliedState:
    """The outcome of applying the rendered init containers to the targets."""

    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Stalled:
    """Why the policy cannot make progress: InvalidSpec, DependencyCycle, Conflict, ..."""

    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to emit on the policy: type Normal | Warning."""

    type: str
    reason: str
    message: str


# --------------------------------------------------------------------------- small helpers


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision and a 'Z' (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get(obj: Any, *path: str) -> Any:
    cur = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _clip(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_termination_message(text: str) -> tuple[str, str] | None:
    """`Timeout: Refused: connection refused after 30s` -> ("Timeout", "Refused: ... after 30s").

    The class before the first ':' is the reason when it is CamelCase; otherwise the whole
    (first) line is the message under the generic reason InitContainerFailed. None when empty."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    if not line:
        return None
    head, sep, rest = line.partition(":")
    if sep and _CAMEL.match(head.strip()):
        return head.strip(), _clip(rest.strip() or head.strip())
    return "InitContainerFailed", _clip(line)


# --------------------------------------------------------------------------- pods


@dataclass(frozen=True)
class GateDetail:
    """What the init container a pod is on says: reason (CamelCase) and message."""

    reason: str
    message: str
    informative: bool  # False for the generic "it is running" detail


@dataclass(frozen=True)
class PodGate:
    """Where one pod stands in its init containers."""

    name: str
    passed: frozenset[str]  # init containers done (exit 0; started, for native sidecars)
    blocker: str | None  # the init container the pod is on, when it has started it
    detail: GateDetail | None  # what that container says
    initializing: bool
    ready: bool
    timed_out: bool = False  # the blocker's last run exited 124 (its timeoutSeconds ran out; it is restarted)


TIMEOUT_EXIT_CODE: Final = 124  # what depgate's waiters (and timeout(1)) exit with when their time runs out


def _timed_out(cs: Mapping[str, Any]) -> bool:
    return any(isinstance(t, Mapping) and t.get("exitCode") == TIMEOUT_EXIT_CODE
               for t in (_get(cs, "state", "terminated"), _get(cs, "lastState", "terminated")))


def _terminated_ok(state: Any) -> bool:
    term = _get(state, "terminated")
    return isinstance(term, Mapping) and term.get("exitCode") == 0


def _blocker_detail(cs: Mapping[str, Any]) -> GateDetail:
    state, last = cs.get("state"), cs.get("lastState")
    waiting = _get(state, "waiting")
    if isinstance(waiting, Mapping):
        wreason = str(waiting.get("reason") or "")
        if wreason not in _QUIET_WAITING and _CAMEL.match(wreason):
            # ImagePullBackOff, CreateContainerConfigError (a missing Secret for the env), ...
            return GateDetail(wreason, _clip(str(waiting.get("message") or wreason)), True)
    for term in (_get(state, "terminated"), _get(last, "terminated")):
        if not isinstance(term, Mapping) or term.get("exitCode") == 0:
            continue  # an earlier success (before the pod restarted) says nothing about now
        parsed = parse_termination_message(str(term.get("message") or ""))
        if parsed is not None:
            return GateDetail(parsed[0], parsed[1], True)
        code, treason = term.get("exitCode"), str(term.get("reason") or "")
        if treason and treason not in ("Error", "Completed") and _CAMEL.match(treason):
            return GateDetail(treason, f"exited with code {code}", True)
        return GateDetail("InitContainerFailed", f"exited with code {code}", True)
    return GateDetail("Waiting", "", False)


def _condition_true(pod: Mapping[str, Any], ctype: str) -> bool | None:
    for cond in _list(_get(pod, "status", "conditions")):
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return str(cond.get("status")) == "True"
    return None


def live_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods that count: not being deleted, not finished (evicted pods stay listed as Failed)."""
    return [p for p in pods if not _get(p, "metadata", "deletionTimestamp")
            and _get(p, "status", "phase") not in ("Succeeded", "Failed")]


def pod_gate(pod: Mapping[str, Any]) -> PodGate:
    """Read one pod: the init containers it has passed and the one it is on."""
    name = str(_get(pod, "metadata", "name") or "")
    statuses = {str(cs.get("name")): cs for cs in _list(_get(pod, "status", "initContainerStatuses"))
                if isinstance(cs, Mapping)}
    spec_inits = [c for c in _list(_get(pod, "spec", "initContainers")) if isinstance(c, Mapping)]
    order = [str(c.get("name")) for c in spec_inits] or list(statuses)
    sidecars = {str(c.get("name")) for c in spec_inits if c.get("restartPolicy") == "Always"}
    initialized = _condition_true(pod, "Initialized")
    passed: set[str] = set()
    blocker: str | None = None
    detail: GateDetail | None = None
    initializing = False
    timed_out = False
    for cname in order:
        cs = statuses.get(cname)
        if cs is None:
            if initialized:
                passed.add(cname)
                continue
            initializing = True  # not started: the pod is not scheduled or not that far yet
            break
        if cname in sidecars:
            done = cs.get("started") is True or isinstance(_get(cs, "state", "running"), Mapping)
        else:
            done = _terminated_ok(cs.get("state"))
        if done:
            passed.add(cname)
            continue
        initializing = True
        blocker, detail, timed_out = cname, _blocker_detail(cs), _timed_out(cs)
        break
    ready = _condition_true(pod, "Ready") is True
    return PodGate(name, frozenset(passed), blocker, detail, initializing, ready, timed_out)


@dataclass(frozen=True)
class _PodSide:
    state: str
    reason: str
    message: str
    blocked: int
    timed_out: int = 0  # of the blocked pods, those whose init container timed out (exit 124) and restarts


def _pod_side(info: PreconditionInfo, gates: Sequence[PodGate],
              pods: Sequence[Mapping[str, Any]]) -> _PodSide:
    cname = container_name(info.name)
    blocked = [g for g in gates if g.blocker == cname]
    passed = [g for g in gates if cname in g.passed]
    if blocked:
        # the most telling detail wins (an error over "still running"), then the first pod by name
        best = min(blocked, key=lambda g: (not (g.detail and g.detail.informative), g.name))
        detail = best.detail or GateDetail("Waiting", "", False)
        message = detail.message or f"init container {cname} is running in {_plural(len(blocked), 'pod')}"
        return _PodSide(BLOCKING, detail.reason, message, len(blocked), sum(g.timed_out for g in blocked))
    if passed:
        message = f"init container {cname} passed in {_plural(len(passed), 'pod')}"
        return _PodSide(SATISFIED, "Passed", message, 0)
    if not gates:
        return _PodSide(UNKNOWN, "NoPods", "no pods of the targets exist", 0)
    if not any(_get(c, "name") == cname for p in pods for c in _list(_get(p, "spec", "initContainers"))):
        return _PodSide(PENDING, "NotInPods", f"no pod has init container {cname} yet", 0)
    unschedulable = [u for p in pods if (u := _unschedulable(p)) is not None]
    if unschedulable:
        # the scheduler's word, not "NotReached": nothing in the policy is in the way, the pods never
        # got a node (requests above every node's capacity, a taint, an affinity nobody meets, ...)
        first_name, why = min(unschedulable)
        more = f" (and {_plural(len(unschedulable) - 1, 'more pod')})" if len(unschedulable) > 1 else ""
        return _PodSide(PENDING, "Unschedulable", f"pod {first_name}{more} cannot be scheduled: {why}", 0)
    return _PodSide(PENDING, "NotReached", f"no pod has reached init container {cname} yet", 0)


def _unschedulable(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(pod name, the scheduler's message) when the pod's PodScheduled condition is False because it
    is Unschedulable."""
    for cond in _list(_get(pod, "status", "conditions")):
        if (isinstance(cond, Mapping) and cond.get("type") == "PodScheduled" and str(cond.get("status")) == "False"
                and cond.get("reason") == "Unschedulable"):
            return str(_get(pod, "metadata", "name") or ""), str(cond.get("message") or "no message")
    return None


# --------------------------------------------------------------------------- status


def _prior_entries(prior: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for entry in _list(prior.get("preconditions")):
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            out.setdefault(entry["name"], entry)
    return out


def _prior_conditions(prior: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for cond in _list(prior.get("conditions")):
        if isinstance(cond, Mapping) and isinstance(cond.get("type"), str):
            out.setdefault(cond["type"], cond)
    return out


def _entry(info: PreconditionInfo, state: str, reason: str, message: str, blocked: int,
           satisfied_uid: str | None, prior: Mapping[str, Any] | None, now: str, timed_out: int = 0) -> dict[str, Any]:
    if prior is not None and prior.get("type") != info.type:
        prior = None  # the precondition was redefined: nothing carries over
    prior_state = prior.get("state") if prior else None
    prior_since = prior.get("since") if prior else None
    since = prior_since if prior_state == state and isinstance(prior_since, str) else now
    entry: dict[str, Any] = {"name": info.name, "type": info.type, "state": state, "reason": reason,
                             "message": message, "blockedPods": blocked, "timedOutPods": timed_out, "since": since}
    # lastSatisfiedTime: when it last became Satisfied (kept after it is lost, with `since` telling when)
    prior_lst = prior.get("lastSatisfiedTime") if prior else None
    if state == SATISFIED and not (prior_state == SATISFIED and isinstance(prior_lst, str)):
        entry["lastSatisfiedTime"] = now
    elif isinstance(prior_lst, str):
        entry["lastSatisfiedTime"] = prior_lst
    uid = satisfied_uid or (prior.get("satisfiedUID") if prior else None)
    if isinstance(uid, str) and uid:
        entry["satisfiedUID"] = uid
    return entry


def _condition(ctype: str, status: str, reason: str, message: str, generation: int,
               prior: Mapping[str, Mapping[str, Any]], now: str) -> dict[str, Any]:
    before = prior.get(ctype)
    ltt = before.get("lastTransitionTime") if before is not None else None
    if before is None or before.get("status") != status or not isinstance(ltt, str):
        ltt = now
    return {"type": ctype, "status": status, "reason": reason, "message": _clip(message, 1024),
            "lastTransitionTime": ltt, "observedGeneration": generation}


def _describe(entry: Mapping[str, Any]) -> str:
    return f"{entry['name']} is {entry['state']}: {entry['reason']}: {entry['message']}"


def _preconditions_met(entries: Sequence[Mapping[str, Any]], blocking: Sequence[str]) -> tuple[str, str, str]:
    if not entries:
        return "Unknown", "NoPreconditions", "the policy declares no preconditions"
    if blocking:
        first = next(e for e in entries if e["name"] == blocking[0])
        more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
        return "False", "PreconditionsBlocking", f"{_describe(first)}{more}"
    waiting = [e for e in entries if e["state"] != SATISFIED]
    if not waiting:
        n = len(entries)
        return "True", "AllSatisfied", f"{_plural(n, 'precondition')} satisfied"
    first = waiting[0]
    reason = "PreconditionsUnknown" if all(e["state"] == UNKNOWN for e in waiting) else "PreconditionsPending"
    more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
    return "Unknown", reason, f"{_describe(first)}{more}"


_NOT_EVALUATED: Final = Verdict(UNKNOWN, "NotEvaluated", "the operator has not judged this precondition yet")


TargetKey = tuple[str, str]  # (kind, name)
_KIND_ORDER: Final = tuple(WORKLOAD_KINDS)
SUMMARY_TARGETS: Final = 3  # targetSummary names this many, then says how many more


def _target_key(t: str | Sequence[str]) -> TargetKey:
    return ("Deployment", t) if isinstance(t, str) else (str(t[0]), str(t[1]))


def _kind_rank(key: TargetKey) -> tuple[int, str, str]:
    return (_KIND_ORDER.index(key[0]) if key[0] in _KIND_ORDER else len(_KIND_ORDER), key[0], key[1])


def target_summary(keys: Sequence[TargetKey]) -> str:
    """"deploy/web,sts/db" (kubectl's short names), the first SUMMARY_TARGETS, then "+N"; "-" when none."""
    names = [f"{short_name(k)}/{n}" for k, n in keys]
    if not names:
        return "-"
    more = len(names) - SUMMARY_TARGETS
    return ",".join(names[:SUMMARY_TARGETS]) + (f",+{more}" if more > 0 else "")


def _target_entry(key: TargetKey, pods: Sequence[Mapping[str, Any]] | None, note: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": key[0], "name": key[1]}
    if pods is not None:
        alive = live_pods(pods)
        gates = [pod_gate(p) for p in alive]
        entry["pods"] = {"total": len(gates), "initializing": sum(g.initializing for g in gates),
                         "ready": sum(g.ready for g in gates)}
        held = sum(1 for p in alive if depgate_gates.held(p))
        if held:
            entry["pods"]["held"] = held  # at depgate's scheduling gate, made before the policy (gates.held)
        on = sorted({g.blocker for g in gates if g.blocker})
        if on:
            entry["blockedOn"] = [c[len(CONTAINER_PREFIX):] if c.startswith(CONTAINER_PREFIX) else c for c in on]
    if note:
        entry["note"] = _clip(note)
    return entry


def compute_status(*, generation: int, prior: Mapping[str, Any], preconditions: Sequence[PreconditionInfo],
                   verdicts: Mapping[str, Verdict], pods: Sequence[Mapping[str, Any]],
                   targets: Sequence[TargetKey | str], applied: AppliedState, stalled: Stalled | None,
                   reconciling: bool, now: datetime,
                   target_pods: Mapping[TargetKey, Sequence[Mapping[str, Any]]] | None = None,
                   target_notes: Mapping[TargetKey, str] | None = None) -> dict[str, Any]:
    """The whole `.status` of a policy (docs/design.md, "Status").

    generation: the policy's metadata.generation (becomes observedGeneration everywhere).
    prior: the current .status ({} for a new policy); only times, states and satisfiedUID are read.
    verdicts: by precondition name, for the api types (absent -> Unknown NotEvaluated).
    pods: the pods of the targets as the API returns them; target_pods: the same, by target (each
    target's entry in status.targets counts its own); target_notes: what to say about a target.
    targets: (kind, name) of each workload the policy targets (a plain name: a Deployment).
    """
    stamp = rfc3339(now)
    prior = prior if isinstance(prior, Mapping) else {}
    prior_entries = _prior_entries(prior)
    alive = live_pods(pods)
    gates = sorted((pod_gate(p) for p in alive), key=lambda g: g.name)

    entries: list[dict[str, Any]] = []
    for info in preconditions:
        side = _pod_side(info, gates, alive)
        uid: str | None = None
        if judged_by_operator(info.type):
            verdict = verdicts.get(info.name) or _NOT_EVALUATED
            state, reason, message = verdict.state, verdict.reason, verdict.message
            uid = verdict.satisfied_uid
        else:
            state, reason, message = side.state, side.reason, side.message
        entries.append(_entry(info, state, reason, _clip(message), side.blocked, uid,
                              prior_entries.get(info.name), stamp, side.timed_out))

    blocking = [e["name"] for e in entries if e["state"] in BLOCKING_STATES]
    prior_conds = _prior_conditions(prior)

    applied_status = "True" if applied.ok else "False"
    met_status, met_reason, met_message = _preconditions_met(entries, blocking)
    if stalled is not None:
        ready = ("False", stalled.reason, stalled.message)
    elif applied_status != "True":
        ready = (applied_status, applied.reason, applied.message)
    elif met_status != "True":
        ready = (met_status, met_reason, met_message)
    else:
        ready = ("True", "Ready", f"applied to {_plural(len(set(targets)), 'target')}; {met_message}")
    keys = sorted({_target_key(t) for t in targets}, key=_kind_rank)
    tpods, tnotes = target_pods or {}, target_notes or {}
    if reconciling:
        rec = ("True", "Progressing", f"reconciling generation {generation}")
    else:
        rec = ("False", "Reconciled", f"generation {generation} reconciled")
    stall = ("True", stalled.reason, stalled.message) if stalled is not None else ("False", "NotStalled", "")

    rows = {"Applied": (applied_status, applied.reason, applied.message),
            "PreconditionsMet": (met_status, met_reason, met_message),
            "Ready": ready, "Reconciling": rec, "Stalled": stall}
    conditions = [_condition(ctype, *rows[ctype], generation, prior_conds, stamp)
                  for ctype in CONDITION_TYPES]
    return {
        "observedGeneration": generation,
        "targets": [_target_entry(k, tpods.get(k), tnotes.get(k)) for k in keys],
        "targetSummary": target_summary(keys),
        "blocking": blocking,
        "blockingSummary": ",".join(blocking) or "-",
        "pods": {"total": len(gates), "initializing": sum(g.initializing for g in gates),
                 "ready": sum(g.ready for g in gates)},
        "podSummary": f"{sum(g.ready for g in gates)}/{len(gates)} ready"
                      + (f", {sum(g.initializing for g in gates)} initializing"
                         if any(g.initializing for g in gates) else ""),
        "preconditions": entries,
        "conditions": conditions,
    }


# --------------------------------------------------------------------------- events


def transitions(prior: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """The Events a change from `prior` to `new` status deserves, in a stable order:
    Stalled, Applied, each precondition whose state changed (declared order), then Ready."""
    events: list[Event] = []
    before = _prior_conditions(prior if isinstance(prior, Mapping) else {})
    after = _prior_conditions(new)

    def changed(ctype: str) -> tuple[Mapping[str, Any], str | None] | None:
        cond = after.get(ctype)
        if cond is None:
            return None
        was = before.get(ctype)
        was_status = str(was.get("status")) if was is not None else None
        return cond, was_status

    stall = changed("Stalled")
    if stall is not None:
        cond, was = stall
        was_reason = before.get("Stalled", {}).get("reason")
        if cond.get("status") == "True" and (was != "True" or was_reason != cond.get("reason")):
            events.append(Event(WARNING, str(cond.get("reason")), str(cond.get("message"))))
        elif cond.get("status") != "True" and was == "True":
            events.append(Event(NORMAL, "Recovered", "the policy is no longer stalled"))

    app = changed("Applied")
    if app is not None and app[0].get("status") != app[1]:
        cond = app[0]
        if cond.get("status") == "True":
            events.append(Event(NORMAL, "Applied", str(cond.get("message"))))
        else:
            events.append(Event(WARNING, str(cond.get("reason")), str(cond.get("message"))))

    prior_entries = _prior_entries(prior if isinstance(prior, Mapping) else {})
    for entry in _list(new.get("preconditions")):
        if not isinstance(entry, Mapping):
            continue
        old = prior_entries.get(str(entry.get("name")))
        old_state = old.get("state") if old is not None and old.get("type") == entry.get("type") else None
        state = entry.get("state")
        if state == old_state:
            continue
        name, reason, message = entry.get("name"), entry.get("reason"), entry.get("message")
        if state == SATISFIED:
            events.append(Event(NORMAL, "PreconditionSatisfied", f"{name} satisfied: {message}"))
        elif state == BLOCKING:
            events.append(Event(WARNING, "PreconditionBlocking", f"{name} blocking: {reason}: {message}"))
        elif state == FAILED:
            events.append(Event(WARNING, "PreconditionFailed", f"{name} failed: {reason}: {message}"))

    ready = changed("Ready")
    if ready is not None:
        cond, was = ready
        if cond.get("status") == "True" and was != "True":
            events.append(Event(NORMAL, "Ready", str(cond.get("message"))))
        elif cond.get("status") != "True" and was == "True":
            events.append(Event(WARNING, "NotReady", f"{cond.get('reason')}: {cond.get('message')}"))
    return events
