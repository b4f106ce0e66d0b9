"""What one reconcile writes, decided from what it read (pure: spec, render, status and the vocabulary).

    plan(policy, Live, RenderConfig) -> Plan
      Live: the Deployments read for the policy's target, status.targets as last written, and
            whether each other policy that claims one of them exists
      Plan: per target Deployment, either the problem that keeps it unwritten or the server-side
            applies that gate it (none when it is up to date); template mode's one apply; the
            Deployments to release (dropped from the target, or still carrying this policy's claim)

The executor (controller.Reconciler) sends the writes in order and records what they achieved in a
Progress, from which the Applied/Stalled state of the status follows (Progress.applied/.stalled).

Three decisions depend on what a write answered, not on what was read. They are not placeholders in
the plan but pure functions here, which the executor calls with the answer:
- the resourceVersion guard. Every apply to a target is conditional (it can neither recreate a
  Deployment deleted meanwhile nor overwrite a change it did not see): the first on the version
  read, the second of the two-step ordering apply on the version the first one returned.
  TargetWrite.applies holds the bodies without it; `guarded(body, version)` adds it when sending.
- the placement patch. Structured-merge-diff decides where merged init containers land, so
  `reorder(policy, applied)` looks at the Deployment the last apply returned.
- the wait RBAC. Its RoleBinding names the ServiceAccounts of the Deployments actually gated (an
  apply the server refused gates nothing): `wait_rbac(policy, gated)`, each body sent unless the
  live object already `holds` it. It binds the shipped ClusterRole VERDICT_READER: depgate writes
  no Role (see wait_rbac).

Two decisions come before any write, from what was read: a policy in a protected namespace
(`--protected-namespaces`) changes nothing (`Live.protected`); and who gates a Deployment two
policies target (`Live.rivals`): an explicit workloadRef wins over a selector, whatever came first;
among equals (two workloadRefs, two selectors) the first claim wins and the other reports Conflict.
Why not plan the whole reconcile again on each answer instead: the answer of the first of two
applies is not up to date by design (its hash says "ordering"), and a misordered answer would be
planned as another apply where one JSON patch is what is meant; the sequence decided would not be
the sequence sent.

A write refused because the object changed meanwhile (kube.Gone, kube.Changed) is not patched up:
the executor reads that Deployment again and plans it again with `target_writes`, at most
APPLY_ATTEMPTS times.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from depgate import gates, registry, render, spec, status, verdicts
from depgate.constants import API_VERSION, APPLIED_HASH_ANNOTATION, GROUP, KIND, POLICY_ANNOTATION
from depgate.graph import DEPENDENCY_CYCLE

Obj = dict[str, Any]
CustomKey = tuple[str, str, str, str]  # (apiVersion, kind, namespace, name) of a custom resource
TargetKey = tuple[str, str]  # (kind, name) of a workload a policy targets, in the policy's namespace

APPLY_ATTEMPTS: Final = 3  # applies to one target that may meet a Deployment changed meanwhile (then read again)
RELEASE_ATTEMPTS: Final = 5
APPLY_ERROR_RETRY_SECONDS: Final = 30.0  # an apply the API server failed (5xx, 429, ...) is tried again this often
KEPT_CHANGING_RETRY_SECONDS: Final = 0.2  # a target that changed under every attempt is tried again this soon
ORDERING_HASH: Final = "ordering"  # the applied hash of the first of two applies: never taken for done
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "depgate"}

# The reasons a reconcile gives for Applied (and Stalled); render errors and API errors bring their own.
APPLIED: Final = "Applied"
TARGET_NOT_FOUND: Final = "TargetNotFound"
CONFLICT: Final = "Conflict"  # another policy gates the Deployment, or template mode's name is taken
INVALID_SPEC: Final = "InvalidSpec"
INVALID_TEMPLATE: Final = "InvalidTemplate"
REFUSED: Final = "Refused"  # the API server refused the rendered Deployment (400/422)
RETRYING: Final = "Retrying"
PROTECTED: Final = "ProtectedNamespace"  # the policy's namespace is in --protected-namespaces
PREEMPTED: Final = "Preempted"  # note: a Deployment a selector matches is left to a workloadRef naming it
PRECEDENCE: Final = "TakesPrecedence"  # note: this workloadRef gates a Deployment a selector also matches
FORBIDDEN: Final = "Forbidden"  # RBAC refused a write (template mode where it is not enabled)

# How a rival policy targets a Deployment (Live.rivals).
WORKLOAD_REF: Final = "workloadRef"
SELECTOR: Final = "selector"
# The ClusterRole the verdict waiters' RoleBindings grant (manifests/base/operator-role.yaml) and the
# one that enables template mode in a namespace (the operator holds no `create` on Deployments otherwise).
VERDICT_READER: Final = "depgate-verdict-reader"
TEMPLATE_CREATOR: Final = "depgate-template-creator"
VERDICT_BINDING_PREFIX: Final = "depgate-verdict-"


# --------------------------------------------------------------------------- what was read, what to write


@dataclass(frozen=True)
class Live:
    """What the reconcile read before writing anything."""

    # workloadRef and template: the workload the target names, if it exists; selector: every workload
    # of the kinds it names in the namespace (the claims on the unselected ones matter too). Each
    # object carries its `kind` (kube.items sets it).
    deployments: Sequence[Mapping[str, Any]]
    prior_targets: Sequence[TargetKey] = ()  # status.targets as last written (prior_targets())
    claimants: Mapping[str, bool] = field(default_factory=dict)  # see claimants(): does that policy exist?
    # (kind, name) -> {other policy of the namespace: WORKLOAD_REF | SELECTOR} for every other live,
    # valid policy whose workloadRef names it or whose selector matches it (see rivals()).
    rivals: Mapping[TargetKey, Mapping[str, str]] = field(default_factory=dict)
    # The namespaces depgate never gates (settings.protected_namespaces, resolved: wiring.protected).
    protected: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Problem:
    """What keeps Applied False: reason (CamelCase) and message; `stalls` is the Stalled reason when a
    person must act; `retry_after` the seconds after which trying again may help by itself."""

    reason: str
    message: str
    stalls: str | None = None
    retry_after: float | None = None
    note: bool = False  # only said (in the Applied message): it keeps nothing from being applied


@dataclass(frozen=True)
class TargetWrite:
    """One workload a workloadRef or selector targets: the problem that keeps it unwritten, or the
    applies (in order, unguarded: see `guarded`) that gate it; neither when it is up to date.
    `note`: what the status says about it although nothing is wrong with the policy (a Job created
    before its policy ran ungated; a StatefulSet's OnDelete strategy keeps its old pods)."""

    name: str
    read: Mapping[str, Any]  # the workload as read
    applies: tuple[Obj, ...] = ()
    problem: Problem | None = None
    note: str | None = None

    @property
    def resource_version(self) -> str:
        return str(self.read["metadata"]["resourceVersion"])

    @property
    def key(self) -> TargetKey:
        return key_of(self.read)


@dataclass(frozen=True)
class TemplateWrite:
    """Template mode's Deployment: the apply that creates or updates it (None: it is up to date)."""

    name: str
    read: Mapping[str, Any] | None
    apply: Obj | None


@dataclass(frozen=True)
class Plan:
    wanted: tuple[TargetKey, ...]  # workloads whose appearance matters (a workloadRef's, found or not)
    problems: tuple[Problem, ...]  # known before any write: they come first in the status
    targets: tuple[TargetWrite, ...]
    template: TemplateWrite | None
    releases: tuple[TargetKey, ...]  # workloads to give back, in this order (see Reconciler.release)

    @property
    def applies(self) -> list[Obj]:
        """Every apply body of the plan (releases aside), in order: empty when nothing is to change."""
        bodies = [b for t in self.targets for b in t.applies]
        return bodies + ([self.template.apply] if self.template and self.template.apply else [])


@dataclass
class Progress:
    """What the writes achieved, in the order they met it."""

    problems: list[Problem]
    targets: list[TargetKey] = field(default_factory=list)  # every workload the target names (status.targets)
    gated: list[Mapping[str, Any]] = field(default_factory=list)  # as the last write (or read) returned them
    notes: dict[TargetKey, str] = field(default_factory=dict)  # TargetWrite.note, by target

    @property
    def result(self) -> str:
        return "conflict" if any(p.stalls == CONFLICT for p in self.problems) else "ok"

    @property
    def requeue_after(self) -> float | None:
        """The latest problem's word on when to try again (None: only an event or the resync)."""
        later = [p.retry_after for p in self.problems if p.retry_after is not None]
        return later[-1] if later else None

    def applied(self) -> status.AppliedState:
        real = [p for p in self.problems if not p.note]
        notes = "".join(f"; {p.message}" for p in self.problems if p.note)
        if real:
            return status.AppliedState(False, real[0].reason, real[0].message + notes)
        return status.AppliedState(True, APPLIED, f"init containers in place on {_count_kinds(self.gated)}"
                                   + notes)

    def stalled(self, cycle: str | None) -> status.Stalled | None:
        """The first problem a person must act on; else the dependency cycle the policy is in, if any."""
        for p in self.problems:
            if p.stalls:
                return status.Stalled(p.stalls, p.message)
        return status.Stalled(DEPENDENCY_CYCLE, cycle) if cycle else None


def invalid_spec(error: spec.SpecError) -> tuple[status.AppliedState, status.Stalled]:
    return (status.AppliedState(False, INVALID_SPEC, "the spec is invalid; nothing was applied"),
            status.Stalled(INVALID_SPEC, str(error)))


# --------------------------------------------------------------------------- the plan


def _count_kinds(objs: Sequence[Mapping[str, Any]]) -> str:
    """"1 Deployment", "2 Deployments and 1 StatefulSet" (0 Deployments when none)."""
    counts: dict[str, int] = {}
    for o in objs:
        counts[str(o.get("kind") or registry.DEPLOYMENT.kind)] = counts.get(str(o.get("kind") or
                                                                                registry.DEPLOYMENT.kind), 0) + 1
    if not counts:
        return "0 Deployments"
    parts = [f"{n} {k}" + ("s" if n != 1 else "") for k, n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def key_of(obj: Mapping[str, Any]) -> TargetKey:
    """(kind, name) of a workload object (a Deployment's when it names no kind)."""
    return str(obj.get("kind") or registry.DEPLOYMENT.kind), _name(obj)


def label(key: TargetKey) -> str:
    """"deployment web": how messages name a target."""
    return f"{key[0].lower()} {key[1]}"


def prior_targets(prior_status: Mapping[str, Any] | None) -> list[TargetKey]:
    """status.targets as a previous reconcile wrote it: {kind, name} entries, or plain names (the format
    before other kinds than Deployment could be targeted: Deployments)."""
    out: list[TargetKey] = []
    for entry in (prior_status or {}).get("targets") or []:
        if isinstance(entry, str) and entry:
            out.append((registry.DEPLOYMENT.kind, entry))
        elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry.get("name"):
            kind = entry.get("kind")
            out.append((str(kind) if isinstance(kind, str) and kind else registry.DEPLOYMENT.kind, entry["name"]))
    return list(dict.fromkeys(out))


def target_kinds(policy: spec.Policy) -> tuple[str, ...]:
    """The kinds of workload the policy's target can name: a workloadRef's kind, a selector's kinds,
    template mode's Deployment."""
    if isinstance(policy.target, spec.WorkloadRef):
        return (policy.target.kind,)
    if isinstance(policy.target, spec.Selector):
        return tuple(policy.target.kinds)
    return (registry.DEPLOYMENT.kind,)


def target_ref(policy: spec.Policy) -> TargetKey | None:
    """The one workload a workloadRef or template names (None for a selector: it lists them)."""
    if isinstance(policy.target, spec.WorkloadRef):
        return policy.target.kind, policy.target.name
    if isinstance(policy.target, spec.Template):
        return registry.DEPLOYMENT.kind, spec.template_name(policy)
    return None


def target_name(policy: spec.Policy) -> str | None:
    """The name of the one workload a workloadRef or template names (None for a selector)."""
    ref = target_ref(policy)
    return ref[1] if ref else None


def selects(policy: spec.Policy, workload: Mapping[str, Any]) -> bool:
    """Does the policy's target name this workload (same namespace; its kind and name, or its labels)?
    A template-mode policy selects only the Deployment it owns."""
    md = _meta(workload)
    if policy.namespace is not None and md.get("namespace") not in (None, policy.namespace):
        return False
    kind, name = key_of(workload)
    if isinstance(policy.target, spec.WorkloadRef):
        return (policy.target.kind, policy.target.name) == (kind, name)
    if isinstance(policy.target, spec.Selector):
        return kind in policy.target.kinds and policy.target.matches(md.get("labels"))
    return (kind, name) == (registry.DEPLOYMENT.kind, spec.template_name(policy)) and (
        policy.uid is None or any(o.get("uid") == policy.uid for o in md.get("ownerReferences") or []))


def gating_policy(policies: Iterable[spec.Policy], workload: Mapping[str, Any]) -> spec.Policy | None:
    """Which of a namespace's valid policies gates this workload, by the reconcile's precedence: a
    template-mode policy its own Deployment; a workloadRef over a selector; among equals the one whose
    claim (depgate.io/policy) the workload carries, else the first by name (what the first reconcile's
    apply would claim). Used at admission, where no reconcile has run yet."""
    matching = [p for p in policies if selects(p, workload)]
    if not matching:
        return None
    claim = claim_of(workload)

    def rank(p: spec.Policy) -> tuple[int, int, str]:
        how = 0 if isinstance(p.target, spec.Template) else 1 if isinstance(p.target, spec.WorkloadRef) else 2
        return how, 0 if p.name == claim else 1, p.name

    return min(matching, key=rank)


CRON_JOB_SUFFIX = re.compile(r"-[0-9]+\Z")  # the CronJob controller names its Jobs <cronjob>-<minutes>


def workload_of_pod(pod: Mapping[str, Any]) -> TargetKey | None:
    """The gated kind of workload a pod belongs to, from its controller's ownerReference: a
    ReplicaSet's (<deployment>-<pod-template-hash>) Deployment, a StatefulSet, a DaemonSet, a Job. A
    Job a CronJob made is ("Job", its name): see cron_job_of."""
    md = _meta(pod)
    for o in md.get("ownerReferences") or []:
        if not isinstance(o, Mapping) or not o.get("controller", True):
            continue
        kind, name = str(o.get("kind") or ""), str(o.get("name") or "")
        if kind == "ReplicaSet":
            dname = deployment_of_pod(pod)
            return (registry.DEPLOYMENT.kind, dname) if dname else None
        if kind in (registry.STATEFUL_SET.kind, registry.DAEMON_SET.kind, registry.JOB.kind) and name:
            return kind, name
    return None


def cron_job_of(job_name: str) -> str | None:
    """The CronJob whose controller would have named a Job so (<cronjob>-<scheduled minutes>), if any."""
    m = CRON_JOB_SUFFIX.search(job_name)
    return job_name[: m.start()] if m and m.start() > 0 else None


def claimants(policy: spec.Policy, deployments: Sequence[Mapping[str, Any]]) -> set[str]:
    """The other policies whose claim a target Deployment carries: the reconcile asks which exist
    (a claim of a deleted policy is stale and taken over)."""
    if isinstance(policy.target, spec.Template):
        return set()  # its Deployment is its own or a Conflict already, whatever it carries
    return {c for d in _targeted(policy, deployments) if (c := claim_of(d)) and c != policy.name}


def plan(policy: spec.Policy, live: Live, config: render.RenderConfig) -> Plan:
    """Every write one reconcile of `policy` makes, given what it read (see the module docstring)."""
    if policy.namespace in live.protected:
        return Plan((), (protected(policy.namespace, live.protected),), (), None, ())
    if isinstance(policy.target, spec.Template):
        return _plan_template(policy, live, config)
    targeted = _targeted(policy, live.deployments)
    problems: list[Problem] = []
    left: set[TargetKey] = set()
    if isinstance(policy.target, spec.Selector):
        # a workload a workloadRef names is that policy's, whoever claimed it first: not targeted,
        # not released (the workloadRef's apply takes it over in one write), said in a note
        for d in targeted:
            refs = sorted(p for p, how in (live.rivals.get(key_of(d)) or {}).items() if how == WORKLOAD_REF)
            if refs:
                left.add(key_of(d))
                problems.append(Problem(PREEMPTED, f"{label(key_of(d))} is left to DependencyPolicy {refs[0]}, "
                                                   "whose workloadRef takes precedence over this selector",
                                        note=True))
        targeted = [d for d in targeted if key_of(d) not in left]
    elif isinstance(policy.target, spec.WorkloadRef) and targeted:
        ref = (policy.target.kind, policy.target.name)
        sels = sorted(p for p, how in (live.rivals.get(ref) or {}).items() if how == SELECTOR)
        if sels:
            problems.append(Problem(PRECEDENCE, f"the selector of DependencyPolicy {', '.join(sels)} also matches "
                                                f"{label(ref)}; this workloadRef takes precedence", note=True))
    if not targeted and left:
        pass  # every match is left to a workloadRef: said in the notes
    elif not targeted and isinstance(policy.target, spec.WorkloadRef):
        problems.append(Problem(TARGET_NOT_FOUND, f"{label((policy.target.kind, policy.target.name))} not found; "
                                                  "depgate applies as soon as it appears"))
    elif not targeted:
        kinds = target_kinds(policy)
        what = kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]
        problems.append(Problem(TARGET_NOT_FOUND, f"no {what} in the namespace matches spec.selector"))
    writes = tuple(_target_write(policy, d, config, live) for d in targeted)
    # The namespace's list is at hand: a workload gated by a reconcile whose status write never
    # happened (the operator killed in between) is released too, not only those status.targets names.
    claimed = {key_of(d) for d in live.deployments if claim_of(d) == policy.name} \
        if isinstance(policy.target, spec.Selector) else set()
    return Plan(wanted=((policy.target.kind, policy.target.name),) if isinstance(policy.target, spec.WorkloadRef)
                else (),
                problems=tuple(problems), targets=writes, template=None,
                releases=_releases(live.prior_targets, claimed, [w.key for w in writes], keep=left))


def target_writes(policy: spec.Policy, dep: Mapping[str, Any], config: render.RenderConfig) -> TargetWrite:
    """What gates one Deployment: nothing when up to date; else our apply, preceded by an ordering
    apply when the user's own init containers would otherwise end up where placement does not want them."""
    name = _name(dep)
    kind = registry.WORKLOAD_KINDS.get(key_of(dep)[0])
    errors = render.render_errors(policy, dep, config)
    if errors:
        # a fromContainer the Deployment lacks, a mount over an app's: only a person can fix it (Stalled)
        return TargetWrite(name, dep, problem=Problem(errors[0].reason, "; ".join(str(e) for e in errors),
                                                      stalls=errors[0].reason))
    desired = render.rendered(policy, dep, config)
    body = render.apply_body(policy, dep, config)
    h = body_hash(body)
    if up_to_date(dep, desired, h):
        return TargetWrite(name, dep, note=strategy_note(dep))
    if kind is not None and not kind.template_mutable:
        # rendered at admission: claimed, depgate's entries as rendered now (not by the hash: a Job made
        # with generateName had no name when the webhook hashed its apply body)
        if up_to_date(dep, desired, str((_meta(dep).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION))):
            return TargetWrite(name, dep)
        # A Job's pod template cannot change once it exists: it is gated at admission or not at all.
        return TargetWrite(name, dep, note=f"{label(key_of(dep))} was created without depgate's init containers "
                                           "(before this policy, or while depgate's admission webhook did not "
                                           "answer) and a Job's pod template cannot change: its pods run "
                                           "ungated; delete and recreate it to gate it")
    body["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = h
    live_names = _names(_pod(dep).get("initContainers"))
    theirs = [n for n in live_names if not render.is_ours(n)]
    predicted = render.ssa_merged_order(live_names, _names(_pod(body).get("initContainers")))
    if not theirs or predicted == _names(_pod(desired).get("initContainers")):
        return TargetWrite(name, dep, applies=(body,), note=strategy_note(dep))
    # Naming the user's entries (key only) where placement wants them orders the whole list in one
    # write; the second apply, with ours only, gives their entries back to them alone. Not the final
    # hash on the first: should we die between the two, the next reconcile must not take this state
    # (the user's entries co-owned) for done.
    ordering = _ordered_body(body, desired)
    ordering["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = ORDERING_HASH
    return TargetWrite(name, dep, applies=(ordering, body), note=strategy_note(dep))


def guarded(body: Mapping[str, Any], resource_version: str) -> Obj:
    """The apply body made conditional on the Deployment still being at `resource_version`."""
    out = copy.deepcopy(dict(body))
    out["metadata"]["resourceVersion"] = resource_version
    return out


def reorder(policy: spec.Policy, applied: Mapping[str, Any]) -> list[Obj] | None:
    """The JSON patch that puts the applied Deployment's init containers where spec.placement wants
    them (None: they are), guarded by its resourceVersion."""
    return render.placement_patch(policy, applied)


def _plan_template(policy: spec.Policy, live: Live, config: render.RenderConfig) -> Plan:
    dname = spec.template_name(policy)
    found = live.deployments[0] if live.deployments else None
    # its own Deployment is not released (release_body would find it owned by the policy, or absent)
    releases = _releases(live.prior_targets, set(), [(registry.DEPLOYMENT.kind, dname)])
    try:
        want = render.rendered_template(policy, config, render.owner_reference(policy))
    except render.RenderProblem as e:
        return Plan((), (invalid_template(str(e)),), (), None, _releases(live.prior_targets, set(), []))
    if found is not None and not any(o.get("uid") == policy.uid for o in _meta(found).get("ownerReferences") or []):
        conflict = Problem(CONFLICT, f"deployment {dname} exists and is not owned by this policy; depgate never "
                                     "takes over a Deployment it did not create", stalls=CONFLICT)
        return Plan((), (conflict,), (), None, _releases(live.prior_targets, set(), []))
    h = body_hash(want)
    if found is not None and up_to_date(found, want, h) and _subset(want["spec"], found.get("spec")):
        return Plan((), (), (), TemplateWrite(dname, found, None), releases)
    want["metadata"].setdefault("annotations", {})[APPLIED_HASH_ANNOTATION] = h
    want["metadata"]["namespace"] = policy.namespace
    return Plan((), (), (), TemplateWrite(dname, found, want), releases)


def _target_write(policy: spec.Policy, dep: Mapping[str, Any], config: render.RenderConfig,
                  live: Live) -> TargetWrite:
    claim = claim_of(dep)
    if claim and claim != policy.name and live.claimants.get(claim) and not _takes_over(policy, dep, claim, live):
        msg = f"{label(key_of(dep))} is already gated by DependencyPolicy {claim}; this policy leaves it alone"
        return TargetWrite(_name(dep), dep, problem=Problem(CONFLICT, msg, stalls=CONFLICT))
    return target_writes(policy, dep, config)


def _takes_over(policy: spec.Policy, dep: Mapping[str, Any], claim: str, live: Live) -> bool:
    """A workloadRef takes a Deployment over from the selector policy that claimed it first (never
    from another workloadRef naming it, nor a template-mode policy's own Deployment)."""
    if not isinstance(policy.target, spec.WorkloadRef):
        return False
    if any(o.get("kind") == KIND for o in _meta(dep).get("ownerReferences") or []):
        return False
    return (live.rivals.get(key_of(dep)) or {}).get(claim) == SELECTOR


def rivals(policy: spec.Policy, deployments: Sequence[Mapping[str, Any]],
           others: Iterable[spec.Policy]) -> dict[TargetKey, dict[str, str]]:
    """Live.rivals: for each of `deployments` (workloads), the other policies (of the same namespace,
    valid) that target it, and how (WORKLOAD_REF or SELECTOR). Template-mode policies target only
    their own."""
    out: dict[TargetKey, dict[str, str]] = {}
    for other in others:
        if other.name == policy.name or other.namespace != policy.namespace:
            continue
        for d in deployments:
            if isinstance(other.target, spec.Template) or not selects(other, d):
                continue
            how = WORKLOAD_REF if isinstance(other.target, spec.WorkloadRef) else SELECTOR
            out.setdefault(key_of(d), {})[other.name] = how
    return out


def _targeted(policy: spec.Policy, deployments: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(policy.target, spec.Selector | spec.WorkloadRef):
        return [d for d in deployments if selects(policy, d)]
    return list(deployments)


def held_notes(policy: spec.Policy, pods: Mapping[TargetKey, Sequence[Mapping[str, Any]]]) -> dict[TargetKey, str]:
    """For a target whose pod template cannot change (a Job), with pods held at depgate's scheduling
    gate (made before the policy, in a namespace that opted in): why they stay held (gates.held_message),
    in place of the "runs ungated" note (in such a namespace it does not run)."""
    out: dict[TargetKey, str] = {}
    for key, items in pods.items():
        kind = registry.WORKLOAD_KINDS.get(key[0])
        if kind is not None and not kind.template_mutable and any(gates.held(p) for p in items):
            out[key] = gates.held_message(policy.name, key[0], key[1], template_mutable=False)
    return out


def strategy_note(workload: Mapping[str, Any]) -> str | None:
    """What a gated workload's update strategy means for pods that predate depgate's init containers."""
    kind = key_of(workload)[0]
    strategy = ((workload.get("spec") or {}).get("updateStrategy") or {}).get("type")
    if kind in (registry.STATEFUL_SET.kind, registry.DAEMON_SET.kind) and strategy == "OnDelete":
        return (f"{label(key_of(workload))} has updateStrategy OnDelete: its pods created before depgate's init "
                "containers keep running ungated until they are deleted")
    return None


def _releases(prior: Iterable[TargetKey], claimed: set[TargetKey], current: Sequence[TargetKey],
              keep: Iterable[TargetKey] = ()) -> tuple[TargetKey, ...]:
    return tuple(sorted((set(prior) | claimed) - set(current) - set(keep)))


# --------------------------------------------------------------------------- problems met while writing


def refused(dname: str | TargetKey, message: str) -> Problem:
    msg = f"{_label(dname)}: the API server refused the rendered init containers: {message}"
    return Problem(REFUSED, msg, stalls=REFUSED)  # a person must change the spec


def apply_failed(dname: str | TargetKey, reason: str, message: str) -> Problem:
    """Any other error class (500 included): said in status, tried again later."""
    return Problem(reason, f"{_label(dname)}: applying the init containers failed: {message}",
                   retry_after=APPLY_ERROR_RETRY_SECONDS)


def _label(target: str | TargetKey) -> str:
    return label((registry.DEPLOYMENT.kind, target) if isinstance(target, str) else target)


def kept_changing(dname: str | TargetKey) -> Problem:
    return Problem(RETRYING, f"{_label(dname)} kept changing while depgate applied; retrying",
                   retry_after=KEPT_CHANGING_RETRY_SECONDS)


def protected(namespace: str, protected_namespaces: Iterable[str]) -> Problem:
    return Problem(PROTECTED, f"namespace {namespace} is protected (--protected-namespaces: "
                              f"{', '.join(sorted(protected_namespaces))}): depgate gates nothing here, so that "
                              "it can never hold back itself or the cluster's system components; nothing was "
                              "applied", stalls=PROTECTED)


def template_forbidden(namespace: str, dname: str, message: str,
                       operator_namespace: str = verdicts.DEFAULT_OPERATOR_NAMESPACE) -> Problem:
    """Template mode in a namespace where the operator may not create Deployments (not enabled)."""
    return Problem(FORBIDDEN, f"deployment {dname}: depgate may not create Deployments in namespace {namespace} "
                              f"({message}); template mode is enabled per namespace: kubectl create rolebinding "
                              f"{TEMPLATE_CREATOR} -n {namespace} --clusterrole={TEMPLATE_CREATOR} "
                              f"--serviceaccount={operator_namespace}:depgate", stalls=FORBIDDEN,
                   retry_after=APPLY_ERROR_RETRY_SECONDS)  # a RoleBinding is not watched: picked up by the retry


def invalid_template(message: str) -> Problem:
    return Problem(INVALID_TEMPLATE, f"spec.template: the Deployment it describes is refused: {message}",
                   stalls=INVALID_SPEC)


# --------------------------------------------------------------------------- releases and the wait RBAC


def release_body(policy_name: str, dep: Mapping[str, Any] | None) -> Obj | None:
    """The apply that gives back one Deployment, or None when there is nothing to give back (gone,
    not claimed by this policy, or template mode's own: garbage collection removes it).

    An apply that names nothing gives up every field depgate owned: our init containers, volumes,
    mounts and annotations go; the user's fields stay. The resourceVersion guard keeps it from
    recreating a Deployment deleted meanwhile."""
    if dep is None or claim_of(dep) != policy_name:
        return None
    md = _meta(dep)
    if any(o.get("kind") == KIND for o in md.get("ownerReferences") or []):
        return None
    kind = registry.WORKLOAD_KINDS.get(key_of(dep)[0])
    if kind is not None and not kind.template_mutable:
        return None  # a Job's pod template cannot change: its pods keep what they were created with
    api_version = kind.api.api_version if kind is not None else registry.DEPLOYMENT.api_version
    return {"apiVersion": api_version, "kind": key_of(dep)[0],
            "metadata": {"name": md["name"], "namespace": md["namespace"], "resourceVersion": md["resourceVersion"]}}


def leftovers_patch(dep: Mapping[str, Any] | None) -> list[Obj] | None:
    """After a release: a JSON patch removing depgate's entries (init containers, volumes, mounts) that
    are still in the workload because another field manager co-owns them (a user applied depgate's
    render output). None when none are left. Guarded by the resourceVersion read."""
    return _without_patch(dep, keep=frozenset())


def stale_patch(policy: spec.Policy, dep: Mapping[str, Any] | None,
                config: render.RenderConfig) -> list[Obj] | None:
    """After an apply: a JSON patch removing the depgate-* entries the policy no longer renders (a
    precondition removed, a CA dropped) that stay because another field manager co-owns them (a
    Deployment file copied from a gated one, applied by its user). None when there are none."""
    if dep is None:
        return None
    try:
        want = render.rendered(policy, dep, config)
    except render.RenderProblem:
        return None
    pod = _pod(want)
    keep = {str(i.get("name")) for key in ("initContainers", "volumes") for i in pod.get(key) or []
            if isinstance(i, Mapping) and render.is_ours(i.get("name"))}
    return _without_patch(dep, keep=frozenset(keep))


def _without_patch(dep: Mapping[str, Any] | None, keep: frozenset[str]) -> list[Obj] | None:
    """The guarded JSON patch that drops every depgate-* init container, volume and mount of `dep`
    whose name is not in `keep` (None: nothing to drop; a Job's template cannot change)."""
    if dep is None:
        return None
    kind = registry.WORKLOAD_KINDS.get(key_of(dep)[0])
    if kind is not None and not kind.template_mutable:
        return None

    def drop(item: Any) -> bool:
        return isinstance(item, Mapping) and render.is_ours(item.get("name")) and str(item.get("name")) not in keep

    pod = _pod(dep)
    base = "/" + "/".join((*render.template_path(dep), "spec"))
    ops: list[Obj] = []
    for key in ("initContainers", "volumes"):
        items = pod.get(key)
        if isinstance(items, list) and any(drop(i) for i in items):
            left = [copy.deepcopy(i) for i in items if not drop(i)]
            ops.append({"op": "replace", "path": f"{base}/{key}", "value": left} if left
                       else {"op": "remove", "path": f"{base}/{key}"})
    for key in ("containers", "initContainers"):
        for i, c in enumerate(pod.get(key) or []):
            if not isinstance(c, Mapping) or (key == "initContainers" and drop(c)):
                continue
            mounts = c.get("volumeMounts")
            if isinstance(mounts, list) and any(drop(m) for m in mounts):
                # the index in the list as it stands after the initContainers op above
                at = i if key == "containers" else [x for x in pod.get(key) or [] if not drop(x)].index(c)
                left = [copy.deepcopy(m) for m in mounts if not drop(m)]
                ops.append({"op": "replace", "path": f"{base}/{key}/{at}/volumeMounts", "value": left} if left
                           else {"op": "remove", "path": f"{base}/{key}/{at}/volumeMounts"})
    if not ops:
        return None
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": _meta(dep)["resourceVersion"]}, *ops]


def verdict_binding_name(policy_name: str) -> str:
    """The RoleBinding that lets the targets' pods read their policy's verdicts: `depgate-verdict-<policy>`
    (a hash-suffixed truncation over 253 characters). Not the `depgate-wait-<policy>` of the Role and
    RoleBinding depgate wrote before: a RoleBinding's roleRef cannot change, so the new one is a new object."""
    return render.derived_name(VERDICT_BINDING_PREFIX, policy_name)


def wait_rbac(policy: spec.Policy, gated: Sequence[Mapping[str, Any]]) -> list[Obj]:
    """A RoleBinding of the ClusterRole VERDICT_READER (get and watch DependencyPolicies) for the gated
    Deployments' ServiceAccounts, in the policy's namespace, owned by the policy: what `depgate wait
    verdict` needs. None without an operator-judged precondition.

    depgate writes no Role: it may create and patch RoleBindings only, and the API server's escalation
    prevention lets it bind a role only when it holds every right in it itself (it holds get/watch on
    DependencyPolicies). The price: a shared ClusterRole cannot name one policy, so those
    ServiceAccounts may read every DependencyPolicy of their namespace (specs and statuses, which hold
    no Secret's value), where the per-policy Role named the one policy (resourceNames)."""
    if not gated or not any(p.judged_by_operator for p in policy.preconditions):
        return []
    ns = policy.namespace
    owner = [{"apiVersion": API_VERSION, "kind": KIND, "name": policy.name, "uid": policy.uid,
              "controller": True, "blockOwnerDeletion": True}]
    metadata = {"name": verdict_binding_name(policy.name), "namespace": ns, "ownerReferences": owner,
                "labels": dict(MANAGED_BY)}
    accounts = sorted({_pod(d).get("serviceAccountName") or "default" for d in gated})
    binding: Obj = {"apiVersion": registry.ROLE_BINDING.api_version, "kind": registry.ROLE_BINDING.kind,
                    "metadata": metadata,
                    "roleRef": {"apiGroup": registry.ROLE_BINDING.group, "kind": "ClusterRole",
                                "name": VERDICT_READER},
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns} for sa in accounts]}
    return [binding]


def holds(live: Mapping[str, Any] | None, want: Mapping[str, Any]) -> bool:
    """The live object already has every field of `want`, with the same values (nothing to write)."""
    return _subset(want, live)


# --------------------------------------------------------------------------- up to date?


def body_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def up_to_date(live: Mapping[str, Any], desired: Mapping[str, Any], applied_hash: str) -> bool:
    """Nothing to write: our last apply is the one we would send now, and nobody undid it."""
    ann = _meta(live).get("annotations") or {}
    if ann.get(APPLIED_HASH_ANNOTATION) != applied_hash \
            or ann.get(POLICY_ANNOTATION) != desired["metadata"]["annotations"][POLICY_ANNOTATION]:
        return False
    lp, dp = _pod(live), _pod(desired)
    if _names(lp.get("initContainers")) != _names(dp.get("initContainers")):
        return False
    live_inits = {c["name"]: c for c in lp.get("initContainers") or []}
    for c in dp.get("initContainers") or []:
        if render.is_ours(c.get("name")) and not _subset(c, live_inits.get(c["name"])):
            return False
    live_vols = {v["name"]: v for v in lp.get("volumes") or []}
    for v in dp.get("volumes") or []:
        if render.is_ours(v.get("name")) and not _subset(v, live_vols.get(v["name"])):
            return False
    for v in lp.get("volumes") or []:
        if render.is_ours(v.get("name")) and v["name"] not in {x["name"] for x in dp.get("volumes") or []}:
            return False
    live_containers = {c["name"]: c for c in lp.get("containers") or []}
    for c in dp.get("containers") or []:
        have = {m.get("mountPath"): m for m in (live_containers.get(c["name"]) or {}).get("volumeMounts") or []}
        for m in c.get("volumeMounts") or []:
            if render.is_ours(m.get("name")) and not _subset(m, have.get(m.get("mountPath"))):
                return False
    return True


def _subset(want: Any, have: Any) -> bool:
    """True when every field of `want` is in `have` with the same value (server defaults ignored)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(_subset(w, h) for w, h in zip(want, have, strict=True)))
    return bool(want == have)


def _ordered_body(body: Obj, desired: Mapping[str, Any]) -> Obj:
    """The apply body with the user's init containers named (key only) where placement wants them:
    structured-merge-diff then orders the whole list by it in the same write."""
    ordered = copy.deepcopy(body)
    pod = _pod(ordered)
    assert isinstance(pod, dict)
    ours = {c["name"]: c for c in pod["initContainers"]}
    pod["initContainers"] = [ours.get(n) or {"name": n} for n in _names(_pod(desired).get("initContainers"))]
    return ordered


# --------------------------------------------------------------------------- reading objects


def fingerprint(obj: Mapping[str, Any] | None) -> int:
    """What of a workload the reconcile of a policy that gates it reads, in one number: its uid, its
    metadata.generation (the spec: the API server bumps it for every spec change, never for a status
    write), its labels and depgate's own annotations (the claim, the applied hash). Two copies with the
    same fingerprint gate alike: a status-only change (its controller observed a generation, counted
    replicas, set a revision annotation) and the echo of depgate's own write are no news to that policy."""
    md = _meta(obj or {})
    labels = md.get("labels") if isinstance(md.get("labels"), Mapping) else {}
    ann = md.get("annotations") if isinstance(md.get("annotations"), Mapping) else {}
    ours = tuple(sorted((str(k), str(v)) for k, v in (ann or {}).items() if str(k).startswith(f"{GROUP}/")))
    return hash((str(md.get("uid") or ""), str(md.get("generation") or ""),
                 tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items())), ours))


def claim_of(dep: Mapping[str, Any]) -> str | None:
    """The policy whose claim (annotation) a Deployment carries."""
    claim = (_meta(dep).get("annotations") or {}).get(POLICY_ANNOTATION)
    return str(claim) if claim else None


def custom_resources(policy: spec.Policy, namespace: str) -> list[CustomKey]:
    """The objects the policy's `resource` and `secret` preconditions name, in declared order, once
    each: what its shared per-namespace watches must hear.

    Secrets are watched like custom resources, one watch per namespace where a policy needs one,
    not by a cluster-wide watch: the operator may read Secrets only in the namespaces where
    depgate-secret-reader is bound to it (a refused watch is retried; the precondition says Forbidden
    meanwhile, naming the RoleBinding to create)."""
    out: list[CustomKey] = []
    for p in policy.preconditions:
        if isinstance(p.body, spec.ResourceCheck):
            out.append((p.body.api_version, p.body.kind, namespace, p.body.name))
        elif registry.PRECONDITION_TYPES[p.type].shared_watch and hasattr(p.body, "named_object"):
            api_version, kind, name = p.body.named_object()
            out.append((api_version, kind, namespace, name))
    return list(dict.fromkeys(out))


def fresher(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    """Is copy `a` of an object newer than copy `b` (same object: same uid)?

    resourceVersions are opaque by the API's contract, but every etcd-backed server hands out
    increasing integers; where either is not one, `a` is not called fresher (trust the watch)."""
    if a is None:
        return False
    ma, mb = a.get("metadata") or {}, b.get("metadata") or {}
    if ma.get("uid") != mb.get("uid"):
        return False
    try:
        return int(str(ma.get("resourceVersion"))) > int(str(mb.get("resourceVersion")))
    except (TypeError, ValueError):
        return False


def deployment_of_pod(pod: Mapping[str, Any]) -> str | None:
    """The Deployment a pod belongs to: its ReplicaSet owner is named <deployment>-<pod-template-hash>."""
    md = pod.get("metadata") or {}
    h = (md.get("labels") or {}).get("pod-template-hash")
    for o in md.get("ownerReferences") or []:
        if o.get("kind") == "ReplicaSet" and h and o.get("name", "").endswith(f"-{h}"):
            return str(o["name"][: -len(h) - 1])
    return None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    md = obj.get("metadata")
    return md if isinstance(md, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj)["name"])


def _pod(dep: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod spec of a workload's template (by its kind: a CronJob's is in its jobTemplate)."""
    pod = registry.pod_template(dep).get("spec")
    return pod if isinstance(pod, Mapping) else {}


def _names(items: Sequence[Any] | None) -> list[str]:
    return [str(i.get("name")) for i in items or [] if isinstance(i, Mapping)]
