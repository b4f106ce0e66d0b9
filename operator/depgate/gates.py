"""Pod scheduling gates: "workload first, policy a moment later" (issue 15), the decisions.

GitOps tools apply a Deployment before the DependencyPolicy next to it (Argo CD applies built-in kinds
before custom resources within a sync wave; Helm installs unknown kinds last), so the first pods of a
new workload exist before depgate has rendered anything into it. In a namespace that opts in (the
label OPT_IN_LABEL=OPT_IN_VALUE), every pod a workload controller creates gets the scheduling gate
GATE at admission (`gate_patch`, served by the operator's mutating webhook, from memory only): the
scheduler leaves it alone until depgate lifts the gate (`decide`):

- the pod carries depgate's init containers (it was rendered, at admission or by the reconcile): lifted
  at once;
- no policy gates its workload: lifted after a grace window (--gate-grace-seconds) that gives a policy
  applied a moment after its workload the time to arrive;
- a policy gates its workload but the pod has no init containers (it was made from a template
  rendered before the policy arrived): held. The reconcile's rollout replaces it (a Deployment, a
  DaemonSet; a StatefulSet's is deleted, `replacement`, since its controller would wait for it
  forever); a Job's template cannot change, so its pod stays held until the Job is re-created or the
  policy deleted (`held_message` says why).

`GatedPods` is the bookkeeping of the pods still gated: when each is due for a decision. Everything
here is plain data: no client, no clock (times are passed in), no I/O (handlers.py does it).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from depgate import spec
from depgate.constants import CONTAINER_PREFIX, GROUP

GATE = f"{GROUP}/render"  # the scheduling gate depgate adds and lifts
GATED_LABEL = f"{GROUP}/gated"  # on every pod that got the gate (kubectl get pods -l depgate.io/gated)
OPT_IN_LABEL = f"{GROUP}/gate"  # on a Namespace: its workloads' pods are gated at admission
OPT_IN_VALUE = "enabled"
RENDERED_PREFIX = CONTAINER_PREFIX  # a pod with init containers so named was rendered already
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"  # a static pod's mirror (the kubelet's; never gated)

# The controllers whose pods a policy can gate (plan.workload_of_pod maps them to the workload):
# a ReplicaSet (its Deployment), a StatefulSet, a DaemonSet, a Job (itself, or its CronJob).
OWNER_KINDS = ("ReplicaSet", "StatefulSet", "DaemonSet", "Job")

RETRY_FIRST_SECONDS = 1.0  # after a failed decision or lift; doubled each time
RETRY_MAX_SECONDS = 30.0


# ---------------------------------------------------------------------- reading a pod


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def scheduling_gates(pod: Mapping[str, Any]) -> list[str]:
    """The names in spec.schedulingGates, in order ('' for an entry without a name)."""
    return [str(_map(g).get("name") or "") for g in _list(_map(pod.get("spec")).get("schedulingGates"))]


def has_gate(pod: Mapping[str, Any]) -> bool:
    return GATE in scheduling_gates(pod)


def our_init_containers(pod: Mapping[str, Any]) -> list[str]:
    """The depgate-* init containers the pod carries (rendered into its template before it was made)."""
    names = [_map(c).get("name") for c in _list(_map(pod.get("spec")).get("initContainers"))]
    return [n for n in names if isinstance(n, str) and n.startswith(RENDERED_PREFIX)]


def held(pod: Mapping[str, Any]) -> bool:
    """Gated by depgate and without its init containers: made before a policy gated its workload (a
    pod of a workload a policy gates that is still held is one the rollout has not replaced yet)."""
    return has_gate(pod) and not our_init_containers(pod)


def controller_of(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the pod's controller (its ownerReference with controller: true)."""
    for o in _list(_map(pod.get("metadata")).get("ownerReferences")):
        o = _map(o)
        if o.get("controller") is True:
            return (str(o.get("kind") or ""), str(o.get("name") or "")) if o.get("kind") else None
    return None


def controller_kind(pod: Mapping[str, Any]) -> str | None:
    """The kind of the pod's controller (its ownerReference with controller: true)."""
    owner = controller_of(pod)
    return owner[0] if owner else None


def gateable(pod: Mapping[str, Any]) -> bool:
    """Made by a controller whose workload a policy can gate (bare pods, and pods of other controllers,
    are never gated: no policy could name them)."""
    return controller_kind(pod) in OWNER_KINDS


# ---------------------------------------------------------------------- admission


def gate_patch(pod: Mapping[str, Any], namespace: str, *, protected: Collection[str],
               served: Collection[str] = ()) -> dict[str, Any] | None:
    """The change to a pod being created in an opted-in namespace (the webhook's namespaceSelector has
    matched the namespace's label already): depgate's scheduling gate and the GATED_LABEL, as a merge
    of the pod's own lists; None when the pod is left alone. `served`: the namespaces this operator
    serves (empty: all); a pod elsewhere is never gated, since nobody would lift it."""
    if not isinstance(pod, Mapping):
        return None
    md, pod_spec = _map(pod.get("metadata")), _map(pod.get("spec"))
    if namespace in protected or (served and namespace not in served):
        return None
    if md.get("deletionTimestamp") or MIRROR_ANNOTATION in _map(md.get("annotations")):
        return None
    if pod_spec.get("nodeName"):  # bound already: the API server refuses gates on it
        return None
    if not gateable(pod) or our_init_containers(pod) or has_gate(pod):
        return None
    gates = pod_spec.get("schedulingGates")
    if gates is not None and not isinstance(gates, list):
        return None  # not a pod the API server would store: leave it to its validation
    return {"metadata": {"labels": {GATED_LABEL: "true"}},
            "spec": {"schedulingGates": [*_list(gates), {"name": GATE}]}}


# ---------------------------------------------------------------------- lifting


@dataclass(frozen=True)
class Lift:
    reason: str
    cause: str = "rendered"  # rendered | unowned | grace (depgate_pod_gate_lifts_total{cause})


@dataclass(frozen=True)
class Hold:
    reason: str


@dataclass(frozen=True)
class Wait:
    until: float


Decision = Lift | Hold | Wait


def decide(pod: Mapping[str, Any], policy: spec.Policy | None, now: float, grace: float, *,
           since: float, workload: tuple[str, str] | None, template_mutable: bool = True) -> Decision:
    """What to do with a gated pod. `policy`: the one that gates its workload (plan.gating_policy),
    None when none does; `workload`: (kind, name) of that workload (plan.workload_of_pod), None when the
    pod belongs to none a policy can name; `since`: when the grace window started (the operator first
    saw the pod gated); `template_mutable`: whether the workload's pod template can still change
    (registry.WorkloadKind.template_mutable; False for a Job)."""
    ours = our_init_containers(pod)
    if ours:
        # Rendered before it was made: its init containers run first. (For an older rendering of the
        # policy too: the policy's rollout replaces it, as any rollout replaces the pods before it.)
        return Lift(f"it carries depgate's init containers ({', '.join(ours)})")
    if workload is None:
        return Lift("it belongs to no workload a policy can gate", "unowned")
    kind, name = workload
    if policy is not None:
        return Hold(held_message(policy.name, kind, name, template_mutable))
    if now >= since + grace:
        return Lift(f"no policy gates {kind.lower()} {name} after the grace window of {grace:g}s", "grace")
    return Wait(since + grace)


def held_message(policy: str, kind: str, name: str, template_mutable: bool = True) -> str:
    """Why a pod of a gated workload stays held, as its policy's status and depgate's log say it."""
    what = f"{kind.lower()} {name}"
    if template_mutable:
        return (f"it was made from a pod template of {what} rendered before DependencyPolicy {policy} gated it; "
                "the rollout replaces it with a gated pod")
    return (f"{what} was created before DependencyPolicy {policy} and its pod template cannot change: its pod "
            f"stays held at the scheduling gate {GATE} until the {kind} is deleted and created again (it is "
            "rendered at admission then) or the policy is deleted")


REVISION_LABEL = "controller-revision-hash"  # a StatefulSet's pod: the revision it was made from
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"  # a StatefulSet's pod: its ordinal


def replacement(pod: Mapping[str, Any], statefulset: Mapping[str, Any], policy: str) -> str | None:
    """Why depgate deletes this held pod of a StatefulSet (None: it does not). The StatefulSet controller
    (podManagementPolicy OrderedReady, the default) waits for each pod to be Running and Ready before it
    does anything else, a rolling update included, so a held pod would stop it for good. A pod at the gate
    never ran (no container started), so deleting it loses nothing; it is deleted only when the controller
    makes it again from a revision that carries depgate's init containers: the StatefulSet's template is
    rendered and observed, the pod is of an older revision, and its ordinal is not below the partition."""
    if not held(pod):
        return None
    md, sts_md = _map(pod.get("metadata")), _map(statefulset.get("metadata"))
    sts_spec, sts_status = _map(statefulset.get("spec")), _map(statefulset.get("status"))
    template = _map(_map(sts_spec.get("template")).get("spec"))
    if not our_init_containers({"spec": template}):
        return None  # not rendered yet: the reconcile's apply comes first
    if sts_status.get("observedGeneration") != sts_md.get("generation"):
        return None  # the controller has not made the rendered revision yet
    update = sts_status.get("updateRevision")
    if not update or _map(md.get("labels")).get(REVISION_LABEL) == update:
        return None
    strategy = _map(sts_spec.get("updateStrategy"))
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        partition = _map(strategy.get("rollingUpdate")).get("partition") or 0
        index = _map(md.get("labels")).get(POD_INDEX_LABEL) or str(md.get("name") or "").rpartition("-")[2]
        if not (isinstance(partition, int) and str(index).isdigit() and int(str(index)) >= partition):
            return None  # below the partition it would be made from the old revision again
    return (f"it was made from revision {_map(md.get('labels')).get(REVISION_LABEL)} of statefulset "
            f"{sts_md.get('name')}, before DependencyPolicy {policy} gated it, and never ran; the StatefulSet "
            f"controller waits for it before anything else, so it is deleted and made again from revision {update}")


def lift_ops(pod: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The JSON patch that removes depgate's gate, and nothing else: guarded by the pod's uid and by
    the gate's position (a `test` that fails means the pod changed: read it again). None: no gate."""
    gates = scheduling_gates(pod)
    if GATE not in gates:
        return None
    i = gates.index(GATE)
    uid = _map(pod.get("metadata")).get("uid")
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/uid", "value": uid}] if uid else []
    return [*ops, {"op": "test", "path": f"/spec/schedulingGates/{i}/name", "value": GATE},
            {"op": "remove", "path": f"/spec/schedulingGates/{i}"}]


def slim(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What the decisions read of a pod, and nothing more (kept in memory for every gated pod)."""
    md = _map(pod.get("metadata"))
    keep = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
            "labels", "ownerReferences")
    return {"metadata": {k: md[k] for k in keep if k in md},
            "spec": {"schedulingGates": [{"name": n} for n in scheduling_gates(pod)],
                     "initContainers": [{"name": n} for n in our_init_containers(pod)]}}


# ---------------------------------------------------------------------- the gated pods


def _rv(pod: Mapping[str, Any]) -> int:
    try:
        return int(str(_map(pod.get("metadata")).get("resourceVersion")))
    except ValueError:
        return 0


@dataclass
class Entry:
    pod: dict[str, Any]
    since: float  # first seen gated: the grace window starts here
    due: float | None  # decide again then; None: only when something changes
    held: str | None = None  # the last Hold reason
    failures: int = 0

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"].get("namespace") or "")

    @property
    def name(self) -> str:
        return str(self.pod["metadata"].get("name") or "")


@dataclass
class GatedPods:
    """The pods still at depgate's gate, by uid, and when each is due for a decision. Fed with every
    event of a labelled pod (`seen`, `gone`) and every change of a namespace's policies
    (`policies_changed`) and of a held pod's StatefulSet (`owner_changed`); `due` says which to decide now,
    `decided` / `failed` / `lifted` what came of it."""

    entries: dict[str, Entry] = field(default_factory=dict)
    lifted_at: dict[str, int] = field(default_factory=dict)  # uid -> resourceVersion of our lift's answer

    def seen(self, pod: Mapping[str, Any], now: float) -> bool:
        """A pod's event (not a deletion). True when it is due for a decision now."""
        md = _map(pod.get("metadata"))
        uid = str(md.get("uid") or "")
        if not uid:
            return False
        lifted = self.lifted_at.get(uid)
        if lifted is not None and _rv(pod) <= lifted:
            return False  # an event from before our lift's answer
        if not has_gate(pod) or md.get("deletionTimestamp"):
            self.forget(uid)
            return False
        view = slim(pod)
        entry = self.entries.get(uid)
        if entry is None:
            self.entries[uid] = Entry(view, since=now, due=now)
            return True
        changed = _decisive(entry.pod) != _decisive(view)
        entry.pod = view
        if changed and entry.failures == 0:
            entry.due = now
        return entry.due is not None and entry.due <= now

    def gone(self, uid: str) -> None:
        self.forget(uid)
        self.lifted_at.pop(uid, None)

    def forget(self, uid: str) -> None:
        self.entries.pop(uid, None)

    def policies_changed(self, namespace: str, now: float) -> bool:
        """A policy of `namespace` appeared, changed or went: its held pods are due again."""
        woke = False
        for e in self.entries.values():
            if e.namespace == namespace and e.due is None:
                e.due, woke = now, True
        return woke

    def wake_all(self, now: float) -> bool:
        """Every entry due now (a new leader decides them all); True when there is one."""
        for e in self.entries.values():
            e.due = now if e.due is None else min(e.due, now)
        return bool(self.entries)

    def owner_changed(self, namespace: str, kind: str, name: str, now: float) -> bool:
        """The controller `kind`/`name` of `namespace` changed (a StatefulSet observed its rendered revision):
        the held pods it owns are due again (`replacement` reads it). True when one woke."""
        woke = False
        for e in self.entries.values():
            if e.namespace == namespace and e.due is None and controller_of(e.pod) == (kind, name):
                e.due, woke = now, True
        return woke

    def due(self, now: float) -> list[tuple[str, Entry]]:
        """The entries to decide now, taken (due None until decided)."""
        out = [(uid, e) for uid, e in self.entries.items() if e.due is not None and e.due <= now]
        for _, e in out:
            e.due = None
        return out

    def decided(self, uid: str, decision: Decision) -> None:
        entry = self.entries.get(uid)
        if entry is None:
            return
        entry.failures = 0
        if isinstance(decision, Wait):
            entry.due, entry.held = decision.until, None
        elif isinstance(decision, Hold):
            entry.due, entry.held = None, decision.reason
        # a Lift is followed by lifted() or failed()

    def lifted(self, uid: str, answer: Mapping[str, Any] | None) -> None:
        self.forget(uid)
        if answer is not None:
            if len(self.lifted_at) > 10_000:  # bounded: the oldest tombstones first
                for old in list(self.lifted_at)[:5_000]:
                    del self.lifted_at[old]
            self.lifted_at[uid] = _rv(answer)

    def failed(self, uid: str, now: float) -> float:
        """A decision or a lift failed: retried after a backoff (1 s doubling to 30 s); the delay."""
        entry = self.entries.get(uid)
        if entry is None:
            return 0.0
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** entry.failures)
        entry.failures += 1
        entry.due = now + delay
        return delay

    def next_due(self) -> float | None:
        times = [e.due for e in self.entries.values() if e.due is not None]
        return min(times) if times else None

    def counts(self) -> dict[str, int]:
        """The gated pods by state (depgate_gated_pods{state}): held (a policy gates their workload), waiting."""
        held = sum(1 for e in self.entries.values() if e.held is not None)
        return {"held": held, "waiting": len(self.entries) - held}

    def held_in(self, namespace: str) -> list[Entry]:
        return [e for e in self.entries.values() if e.namespace == namespace and e.held is not None]

    def __len__(self) -> int:
        return len(self.entries)


def _decisive(view: Mapping[str, Any]) -> Any:
    """The part of a pod's slim view a decision reads (not its resourceVersion)."""
    md = _map(view.get("metadata"))
    return (md.get("labels"), md.get("ownerReferences"), view.get("spec"))


def sleep_for(next_due: float | None, now: float, idle: float) -> float:
    """How long the lifting loop sleeps: until the next due entry, at most `idle`."""
    if next_due is None or not math.isfinite(next_due):
        return idle
    return max(0.0, min(idle, next_due - now))
