"""One reconcile of one policy: read what it names, decide with the pure core, write what changed.

Level-triggered: every call starts from the live objects, so it is safe to call any number of
times, after any crash, in any order. A reconcile with nothing to change sends no write.

    policy YAML --spec.parse_policy--> Policy
    Policy + live Deployment --render.rendered / apply_body--> server-side apply (field manager depgate)
    dependency objects --verdicts.judge_*--> Verdict per api precondition
    verdicts + pods --status.compute_status--> .status (written whole, only when it changed)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from depgate import render, spec, status, verdicts
from depgate.kube import ApiError, Forbidden, Gone, Kube, NamespaceTerminating, Rejected, describe

log = logging.getLogger("depgate.controller")

APPLY_ERROR_RETRY_SECONDS = 30.0  # an apply the API server failed (5xx, 429, ...) is tried again this often

APPLIED_HASH = "depgate.io/applied"
WAIT_ROLE_PREFIX = "depgate-wait-"
Dep = tuple[str, str, str]  # (kind or apiVersion/kind, namespace, name): what a policy watches
CustomKey = tuple[str, str, str, str]  # (apiVersion, kind, namespace, name) of a custom resource
# Claims a policy's custom-resource watches; answers {(apiVersion, kind, namespace): why not} for
# those over a cap (handlers.CustomWatches.claim).
ClaimCustom = Callable[[tuple[str, str], Sequence[CustomKey]], Mapping[tuple[str, str, str], str]]


@dataclass
class Outcome:
    """What one reconcile learned, for the event wiring (which objects should wake this policy)."""

    targets: list[str] = field(default_factory=list)
    wanted: set[str] = field(default_factory=set)  # Deployment names whose appearance matters
    deps: set[Dep] = field(default_factory=set)
    custom: list[CustomKey] = field(default_factory=list)  # what `resource` preconditions name, in declared order
    selector: spec.Selector | None = None
    requeue_after: float | None = None
    writes: int = 0
    status_written: bool = False
    result: str = "ok"  # ok | invalid | conflict | error
    status: dict[str, Any] | None = None  # the policy's status after this reconcile
    written: dict[str, Any] | None = None  # the policy as the status write returned it (newest known copy)


class ReleaseFailed(RuntimeError):
    """A Deployment could not be released (it kept changing): try again later, never give up silently."""


def body_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _subset(want: Any, have: Any) -> bool:
    """True when every field of `want` is in `have` with the same value (server defaults ignored)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(_subset(w, h) for w, h in zip(want, have, strict=True)))
    return bool(want == have)


def _pod(dep: Mapping[str, Any]) -> Mapping[str, Any]:
    return ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}


def _names(items: Sequence[Any] | None) -> list[str]:
    return [str(i.get("name")) for i in items or [] if isinstance(i, Mapping)]


def up_to_date(live: Mapping[str, Any], desired: Mapping[str, Any], applied_hash: str) -> bool:
    """Nothing to write: our last apply is the one we would send now, and nobody undid it."""
    ann = (live.get("metadata") or {}).get("annotations") or {}
    if ann.get(APPLIED_HASH) != applied_hash or ann.get(render.ANNOTATION) != desired["metadata"]["annotations"][
        render.ANNOTATION
    ]:
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


def _ordered_body(body: dict[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The apply body with the user's init containers named (key only) where placement wants them:
    structured-merge-diff then orders the whole list by it in the same write."""
    ordered = copy.deepcopy(body)
    ours = {c["name"]: c for c in ordered["spec"]["template"]["spec"]["initContainers"]}
    ordered["spec"]["template"]["spec"]["initContainers"] = [
        ours.get(n) or {"name": n} for n in _names(_pod(desired).get("initContainers"))
    ]
    return ordered


class Reconciler:
    def __init__(self, kube: Kube, config: render.RenderConfig,
                 policy_exists: Callable[[str, str], bool] | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 claim_custom: ClaimCustom | None = None) -> None:
        self.kube = kube
        self.claim_custom = claim_custom
        self.config = config
        self.policy_exists = policy_exists or self._policy_exists_live
        self.now = now

    def _policy_exists_live(self, namespace: str, name: str) -> bool:
        return self.kube.get(spec.API_VERSION, spec.KIND, namespace, name) is not None

    # ------------------------------------------------------------------ the reconcile

    def reconcile(self, obj: Mapping[str, Any], *, cycle: str | None = None) -> Outcome:
        out = Outcome()
        md = obj.get("metadata") or {}
        ns, name = md["namespace"], md["name"]
        prior = obj.get("status") or {}
        generation = int(md.get("generation") or 0)
        try:
            policy = spec.parse_policy(obj)
        except spec.SpecError as e:
            out.result = "invalid"
            self._write_status(obj, out, generation, prior, [], {}, [], list(prior.get("targets") or []),
                               status.AppliedState(False, "InvalidSpec", "the spec is invalid; nothing was applied"),
                               status.Stalled("InvalidSpec", str(e)))
            return out

        out.deps = self._deps(policy, ns)
        infos = [status.PreconditionInfo(p.name, p.type) for p in policy.preconditions]
        stalled: status.Stalled | None = None
        problems: list[tuple[str, str]] = []  # (reason, message) that keep Applied False
        deployments: list[dict[str, Any]] = []
        claimed: set[str] = set()  # Deployments that carry this policy's claim, whatever status.targets says

        target = policy.target
        if isinstance(target, spec.WorkloadRef):
            out.wanted.add(target.name)
            dep = self.kube.get("apps/v1", "Deployment", ns, target.name)
            if dep is None:
                problems.append(("TargetNotFound", f"deployment {target.name} not found; depgate applies as soon "
                                                   "as it appears"))
            else:
                deployments.append(dep)
        elif isinstance(target, spec.Selector):
            out.selector = target
            listed = self.kube.items("apps/v1", "Deployment", ns)
            deployments = [d for d in listed if target.matches((d.get("metadata") or {}).get("labels"))]
            # The namespace's list is at hand: a Deployment gated by a reconcile whose status write never
            # happened (the operator killed in between) is released too, not only those status.targets names.
            claimed = {d["metadata"]["name"] for d in listed
                       if ((d["metadata"].get("annotations") or {}).get(render.ANNOTATION)) == name}
            if not deployments:
                problems.append(("TargetNotFound", "no Deployment in the namespace matches spec.selector"))
        else:
            try:
                dep = self._reconcile_template(policy, obj, out, problems)
            except (Rejected, render.RenderProblem) as e:
                msg = f"spec.template: the Deployment it describes is refused: {e}"
                problems.append(("InvalidTemplate", msg))
                stalled = status.Stalled("InvalidSpec", msg)
                dep = None
            if dep is not None:
                deployments.append(dep)
            elif problems and problems[-1][0] == "Conflict":
                out.result = "conflict"
                stalled = stalled or status.Stalled("Conflict", problems[-1][1])

        applied_to: list[dict[str, Any]] = []
        for dep in deployments:
            dname = dep["metadata"]["name"]
            out.targets.append(dname)
            claim = ((dep["metadata"].get("annotations") or {}).get(render.ANNOTATION))
            if claim and claim != name and self.policy_exists(ns, claim):
                out.result = "conflict"
                msg = f"deployment {dname} is already gated by DependencyPolicy {claim}; this policy leaves it alone"
                problems.append(("Conflict", msg))
                stalled = stalled or status.Stalled("Conflict", msg)
                continue
            if isinstance(target, spec.Template):
                applied_to.append(dep)
                continue
            errors = render.render_errors(policy, dep, self.config)
            if errors:
                problems.append((errors[0].reason, "; ".join(str(e) for e in errors)))
                continue
            live = None
            refused = False
            for _ in range(3):  # the Deployment controller writes status often: re-read and re-render
                try:
                    live = self._apply_to(policy, dep, out)
                    break
                except Gone as e:
                    log.info("%s/%s: %s; reading it again", ns, name, e)
                    fresh = self.kube.get("apps/v1", "Deployment", ns, dname)
                    if fresh is None:
                        break
                    dep = fresh
                except Rejected as e:  # the rendered Deployment itself is refused: a person must change the spec
                    msg = f"deployment {dname}: the API server refused the rendered init containers: {e}"
                    problems.append(("Refused", msg))
                    stalled = stalled or status.Stalled("Refused", msg)
                    refused = True
                    break
                except ApiError as e:  # any other class (500 included): said in status, tried again later
                    reason, msg = describe(e)
                    problems.append((reason, f"deployment {dname}: applying the init containers failed: {msg}"))
                    out.requeue_after = APPLY_ERROR_RETRY_SECONDS
                    refused = True
                    break
            if refused:
                continue
            if live is None:
                out.requeue_after = 0.2
                problems.append(("Retrying", f"deployment {dname} kept changing while depgate applied; retrying"))
                continue
            applied_to.append(live)

        self._release_dropped(ns, name, set(prior.get("targets") or []) | claimed, set(out.targets), out)
        if any(p.group == "api" for p in policy.preconditions) and applied_to:
            self._ensure_wait_rbac(obj, policy, applied_to, out)

        verdict_map = self._verdicts(policy, ns, prior, out)
        pods = self._pods(ns, applied_to)
        if cycle and stalled is None:
            stalled = status.Stalled("DependencyCycle", cycle)
        if problems:
            reason, message = problems[0]
            applied = status.AppliedState(False, reason, message)
        else:
            n = len(applied_to)
            applied = status.AppliedState(True, "Applied", f"init containers in place on {n} Deployment"
                                          + ("s" if n != 1 else ""))
        self._write_status(obj, out, generation, prior, infos, verdict_map, pods, out.targets, applied, stalled)
        return out

    # ------------------------------------------------------------------ targets

    def _apply_to(self, policy: spec.Policy, dep: dict[str, Any], out: Outcome) -> dict[str, Any]:
        desired = render.rendered(policy, dep, self.config)
        body = render.apply_body(policy, dep, self.config)
        h = body_hash(body)
        if up_to_date(dep, desired, h):
            return dep
        body["metadata"]["annotations"][APPLIED_HASH] = h
        body["metadata"]["resourceVersion"] = dep["metadata"]["resourceVersion"]
        theirs = [n for n in _names(_pod(dep).get("initContainers")) if not render.is_ours(n)]
        want = _names(_pod(desired).get("initContainers"))
        predicted = render.ssa_merged_order(_names(_pod(dep).get("initContainers")),
                                            _names(body["spec"]["template"]["spec"]["initContainers"]))
        if theirs and predicted != want:
            ordering = _ordered_body(body, desired)
            # Not the final hash: should we die before the second apply, the next reconcile must not
            # take this state (the user's entries co-owned) for done.
            ordering["metadata"]["annotations"][APPLIED_HASH] = "ordering"
            live = self.kube.apply(ordering)
            out.writes += 1
            body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        live = self.kube.apply(body)  # (again) with ours only: the user's entries stay theirs alone
        out.writes += 1
        patch = render.placement_patch(policy, live)
        if patch:
            live = self.kube.json_patch("apps/v1", "Deployment", live["metadata"]["namespace"],
                                        live["metadata"]["name"], patch) or live
            out.writes += 1
        return live

    def _reconcile_template(self, policy: spec.Policy, obj: Mapping[str, Any], out: Outcome,
                            problems: list[tuple[str, str]]) -> dict[str, Any] | None:
        ns = obj["metadata"]["namespace"]
        want = render.rendered_template(policy, self.config, render.owner_reference(policy))
        dname = want["metadata"]["name"]
        live = self.kube.get("apps/v1", "Deployment", ns, dname)
        if live is not None:
            owners = (live.get("metadata") or {}).get("ownerReferences") or []
            if not any(o.get("uid") == obj["metadata"].get("uid") for o in owners):
                problems.append(("Conflict", f"deployment {dname} exists and is not owned by this policy; "
                                             "depgate never takes over a Deployment it did not create"))
                return None
        h = body_hash(want)
        if live is not None and up_to_date(live, want, h) and _subset(want["spec"], live.get("spec")):
            return live
        want["metadata"].setdefault("annotations", {})[APPLIED_HASH] = h
        want["metadata"]["namespace"] = ns
        live = self.kube.apply(want)
        out.writes += 1
        return live

    def _release_dropped(self, ns: str, name: str, before: set[str], current: set[str], out: Outcome) -> None:
        # A release that fails raises (ReleaseFailed): the status is not written, so the next attempt
        # still finds the Deployment among the prior targets.
        for dname in sorted(before):
            if dname not in current and self.release(ns, name, dname):
                out.writes += 1

    def release(self, ns: str, policy_name: str, dname: str, attempts: int = 5) -> bool:
        """Remove everything depgate applied to one Deployment (only if this policy claims it).

        True when something was released, False when there was nothing to release; raises
        ReleaseFailed when the Deployment kept changing under every attempt (the caller retries later)."""
        for _ in range(attempts):
            dep = self.kube.get("apps/v1", "Deployment", ns, dname)
            if dep is None:
                return False
            if ((dep["metadata"].get("annotations") or {}).get(render.ANNOTATION)) != policy_name:
                return False
            owners = dep["metadata"].get("ownerReferences") or []
            if any(o.get("kind") == spec.KIND for o in owners):
                return False  # template mode: garbage collection removes it
            # An apply that names nothing gives up every field depgate owned: our init containers,
            # volumes, mounts and annotations go; the user's fields stay. The resourceVersion guard
            # keeps it from recreating a Deployment deleted meanwhile.
            try:
                self.kube.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                                 "metadata": {"name": dname, "namespace": ns,
                                              "resourceVersion": dep["metadata"]["resourceVersion"]}})
            except Gone:
                continue  # written meanwhile: read it again
            except NamespaceTerminating:  # going away with its namespace
                return False
            return True
        raise ReleaseFailed(f"deployment {ns}/{dname} changed under each of {attempts} attempts to release it")

    def _ensure_wait_rbac(self, obj: Mapping[str, Any], policy: spec.Policy, deployments: list[dict[str, Any]],
                          out: Outcome) -> None:
        """A Role that can read this one policy, bound to the targets' ServiceAccounts, owned by the policy."""
        md = obj["metadata"]
        ns, name = md["namespace"], md["name"]
        rname = render.wait_role_name(name)
        owner = [{"apiVersion": spec.API_VERSION, "kind": spec.KIND, "name": name, "uid": md.get("uid"),
                  "controller": True, "blockOwnerDeletion": True}]
        rules = [{"apiGroups": ["depgate.io"], "resources": ["dependencypolicies"], "resourceNames": [name],
                  "verbs": ["get", "list", "watch"]}]
        sas = sorted({_pod(d).get("serviceAccountName") or "default" for d in deployments})
        subjects = [{"kind": "ServiceAccount", "name": sa, "namespace": ns} for sa in sas]
        role: dict[str, Any] = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": rname, "namespace": ns, "ownerReferences": owner,
                             "labels": {"app.kubernetes.io/managed-by": "depgate"}},
                "rules": rules}
        binding: dict[str, Any] = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": rname, "namespace": ns, "ownerReferences": owner,
                                "labels": {"app.kubernetes.io/managed-by": "depgate"}},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": rname},
                   "subjects": subjects}
        for want in (role, binding):
            live = self.kube.get(want["apiVersion"], want["kind"], ns, rname)
            if live is not None and _subset({k: v for k, v in want.items() if k != "metadata"}, live) \
                    and _subset(want["metadata"], live.get("metadata")):
                continue
            self.kube.apply(want)
            out.writes += 1

    # ------------------------------------------------------------------ verdicts and pods

    @staticmethod
    def _deps(policy: spec.Policy, ns: str) -> set[Dep]:
        deps: set[Dep] = set()
        for p in policy.preconditions:
            b = p.body
            if isinstance(b, spec.ServiceCheck):
                deps.add(("Service", ns, b.name))
            elif isinstance(b, spec.JobCheck):
                deps.add(("Job", ns, b.name))
            elif isinstance(b, spec.SecretCheck):
                deps.add(("Secret", ns, b.name))
            elif isinstance(b, spec.ConfigMapCheck):
                deps.add(("ConfigMap", ns, b.name))
            elif isinstance(b, spec.WorkloadCheck):
                deps.add((b.kind, ns, b.name))
            elif isinstance(b, spec.ResourceCheck):
                deps.add((f"{b.api_version}/{b.kind}", ns, b.name))
        return deps

    def _verdicts(self, policy: spec.Policy, ns: str, prior: Mapping[str, Any],
                  out: Outcome) -> dict[str, verdicts.Verdict]:
        prior_entries = {e.get("name"): e for e in prior.get("preconditions") or [] if isinstance(e, Mapping)}
        result: dict[str, verdicts.Verdict] = {}
        # Claimed before anything is read: an event from then on wakes this policy again.
        out.custom = list(dict.fromkeys((p.body.api_version, p.body.kind, ns, p.body.name)
                                        for p in policy.preconditions if isinstance(p.body, spec.ResourceCheck)))
        refused = self.claim_custom((ns, policy.name), out.custom) if self.claim_custom else {}
        for p in policy.preconditions:
            try:
                v = self._judge(p, ns, (prior_entries.get(p.name) or {}).get("satisfiedUID"), out, refused)
            except Forbidden as e:
                v = verdicts.Verdict(
                    verdicts.BLOCKING, "Forbidden",
                    f"depgate may not read what this precondition names ({e}); grant it with a ClusterRole "
                    'labelled depgate.io/aggregate-to-operator: "true"')
            if v is not None:
                result[p.name] = v
        return result

    def _judge(self, p: spec.Precondition, ns: str, remembered_uid: str | None, out: Outcome,
               refused: Mapping[tuple[str, str, str], str]) -> verdicts.Verdict | None:
        """The operator's verdict on one api-group precondition (None for the types judged in pods)."""
        b = p.body
        if isinstance(b, spec.ServiceCheck):
            svc = self.kube.get("v1", "Service", ns, b.name)
            slices = self.kube.items("discovery.k8s.io/v1", "EndpointSlice", ns,
                                     label_selector=f"{verdicts.SERVICE_NAME_LABEL}={b.name}") if svc else []
            return verdicts.judge_service(b.name, svc, slices, b.min_ready_endpoints)
        if isinstance(b, spec.JobCheck):
            return verdicts.judge_job(b.name, self.kube.get("batch/v1", "Job", ns, b.name), remembered_uid)
        if isinstance(b, spec.SecretCheck):
            return verdicts.judge_keys("Secret", b.name, self.kube.get("v1", "Secret", ns, b.name), b.keys)
        if isinstance(b, spec.ConfigMapCheck):
            return verdicts.judge_keys("ConfigMap", b.name, self.kube.get("v1", "ConfigMap", ns, b.name), b.keys)
        if isinstance(b, spec.WorkloadCheck):
            return verdicts.judge_workload(b.kind, b.name, self.kube.get("apps/v1", b.kind, ns, b.name),
                                           b.min_available)
        if isinstance(b, spec.ResourceCheck):
            try:
                cr = self.kube.get(b.api_version, b.kind, ns, b.name)
            except LookupError as e:
                return verdicts.Verdict(verdicts.BLOCKING, "KindNotServed", str(e))
            v = verdicts.judge_resource(b.api_version, b.kind, b.name, cr, b.condition, b.status)
            why = refused.get((b.api_version, b.kind, ns))
            if why:  # over a cap: not watched, so never Satisfied on a reading that may go stale unheard
                return verdicts.Verdict(verdicts.BLOCKING, "TooManyWatches",
                                        f"{why}. As read now: {v.state}: {v.message}")
            return v
        return None

    def _pods(self, ns: str, deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = []
        for dep in deployments:
            sel = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not sel:
                continue
            label_selector = ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
            owned = {dep["metadata"]["name"]}
            for pod in self.kube.items("v1", "Pod", ns, label_selector=label_selector):
                if deployment_of_pod(pod) in owned:
                    pods.append(pod)
        return pods

    # ------------------------------------------------------------------ status

    def _write_status(self, obj: Mapping[str, Any], out: Outcome, generation: int, prior: Mapping[str, Any],
                      infos: list[status.PreconditionInfo], verdict_map: Mapping[str, verdicts.Verdict],
                      pods: list[dict[str, Any]], targets: list[str], applied: status.AppliedState,
                      stalled: status.Stalled | None) -> None:
        new = status.compute_status(generation=generation, prior=prior, preconditions=infos, verdicts=verdict_map,
                                    pods=pods, targets=targets, applied=applied, stalled=stalled,
                                    reconciling=out.requeue_after is not None, now=self.now())
        out.status = new
        if new == prior:
            return
        md = obj["metadata"]
        out.written = self.kube.replace_status(md["namespace"], md["name"], new)
        out.status_written = True
        out.writes += 1
        for ev in status.transitions(prior, new):
            self.kube.event(obj, ev.type, ev.reason, ev.message)


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
