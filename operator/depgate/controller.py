"""One reconcile of one policy: read what it names, plan the writes with the pure core, make them,
then write the status.

Level-triggered: every call starts from the live objects, so it is safe to call any number of
times, after any crash, in any order. A reconcile with nothing to change sends no write.

    policy YAML --spec.parse_policy--> Policy
    Policy + live Deployments --plan.plan--> the writes (server-side applies, field manager depgate)
    dependency objects --verdicts.judge_*--> Verdict per api precondition
    verdicts + pods --status.compute_status--> .status (written whole, only when it changed)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from depgate import graph, plan, registry, render, spec, status, verdicts
from depgate.kube import ApiError, Changed, Forbidden, Gone, Kube, NamespaceTerminating, Rejected, describe
from depgate.plan import CustomKey, TargetKey

__all__ = ["ClaimCustom", "CustomKey", "Dep", "Outcome", "Reconciler", "ReleaseFailed"]

log = logging.getLogger("depgate.controller")

Dep = graph.ObjectKey  # (kind, namespace, name) of an object a policy waits on (graph.dependencies)
# Claims a policy's custom-resource watches; answers {(apiVersion, kind, namespace): why not} for
# those over a cap (handlers.CustomWatches.claim).
ClaimCustom = Callable[[tuple[str, str], Sequence[CustomKey]], Mapping[tuple[str, str, str], str]]
DEPLOYMENT = (registry.DEPLOYMENT.api_version, registry.DEPLOYMENT.kind)  # template mode's kind


def _api(kind: str) -> tuple[str, str]:
    """(apiVersion, kind) of a workload kind a policy can target."""
    return registry.WORKLOAD_KINDS[kind].api.api_version, kind


UNAUTHORIZED = "Unauthorized"  # Applied/Stalled reason: the author lacks a right (depgate.authority)


@dataclass
class Outcome:
    """What one reconcile learned, for the event wiring (which objects should wake this policy)."""

    targets: list[TargetKey] = field(default_factory=list)
    wanted: set[TargetKey] = field(default_factory=set)  # workloads whose appearance matters
    custom: list[CustomKey] = field(default_factory=list)  # what `resource` preconditions name, in declared order
    requeue_after: float | None = None
    writes: int = 0
    status_written: bool = False
    result: str = "ok"  # ok | invalid | conflict
    status: dict[str, Any] | None = None  # the policy's status after this reconcile
    written: dict[str, Any] | None = None  # the policy as the status write returned it (newest known copy)
    # (kind, name) -> plan.fingerprint of each gated workload as this reconcile last read or wrote it: its
    # event with that fingerprint (the echo of depgate's own write) need not wake this policy again
    seen: dict[TargetKey, int] = field(default_factory=dict)


class ReleaseFailed(RuntimeError):
    """A Deployment could not be released (it kept changing): try again later, never give up silently."""


class Reconciler:
    def __init__(self, kube: Kube, config: render.RenderConfig,
                 policy_exists: Callable[[str, str], bool] | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 claim_custom: ClaimCustom | None = None,
                 authorize: Callable[[Mapping[str, Any], spec.Policy], str | None] | None = None,
                 protected: frozenset[str] = frozenset(),
                 namespace_policies: Callable[[str, Sequence[Mapping[str, Any]]], Sequence[spec.Policy]] | None = None,
                 operator_namespace: str = verdicts.DEFAULT_OPERATOR_NAMESPACE,
                 has_no_pods: Callable[[str, str, str], bool] | None = None,
                 cached: Callable[[str, str, str], tuple[bool, dict[str, Any] | None]] | None = None,
                 wrote: Callable[[str, Mapping[str, Any]], None] | None = None) -> None:
        self.kube = kube
        # (namespace, kind, name) -> (known, the operator's streamed copy of that workload): no read when known;
        # wrote(kind, answer): the API server's answer to a write of one, kept as that copy
        self.cached = cached
        self.wrote = wrote
        # (namespace, kind, name) -> the operator's pod stream there knows of no pod of that workload: no list
        self.has_no_pods = has_no_pods
        self.protected = protected  # namespaces where a policy changes nothing (plan.Live.protected)
        # (namespace, workloads) -> the other (trusted, valid) policies there that may target one of those
        # workloads (a superset: plan.rivals decides), for plan.rivals; default: the namespace's, listed live
        self.namespace_policies = namespace_policies or self._policies_live
        self.operator_namespace = operator_namespace
        self.authorize = authorize
        self.claim_custom = claim_custom
        self.config = config
        self.policy_exists = policy_exists or self._policy_exists_live
        self.now = now

    def _policy_exists_live(self, namespace: str, name: str) -> bool:
        return self.kube.get(spec.API_VERSION, spec.KIND, namespace, name) is not None

    def _policies_live(self, namespace: str, workloads: Sequence[Mapping[str, Any]] = ()) -> list[spec.Policy]:
        out = []
        for obj in self.kube.items(spec.API_VERSION, spec.KIND, namespace):
            try:
                out.append(spec.parse_policy(obj))
            except spec.SpecError:
                continue  # an invalid policy targets nothing
        return out

    # ------------------------------------------------------------------ the reconcile

    def reconcile(self, obj: Mapping[str, Any], *, cycle: str | None = None) -> Outcome:
        """Read what the policy names, plan the writes (pure), make them, judge, write the status."""
        out, prior, ns = Outcome(), obj.get("status") or {}, obj["metadata"]["namespace"]
        try:
            policy = spec.parse_policy(obj)
        except spec.SpecError as e:
            out.result = "invalid"
            self._write_status(obj, out, [], {}, {}, plan.prior_targets(prior), *plan.invalid_spec(e))
            return out
        refused = self.authorize(obj, policy) if self.authorize is not None else None
        if refused is not None:
            # Not trusted (no verified author) or no longer allowed: depgate changes nothing for it,
            # neither applying nor releasing, until someone with the rights it needs changes it.
            out.result = "unauthorized"
            self._write_status(obj, out, [], {}, {}, plan.prior_targets(prior),
                               status.AppliedState(False, UNAUTHORIZED, "the policy's author may not do what it "
                                                   "asks; nothing was applied"),
                               status.Stalled(UNAUTHORIZED, refused))
            return out
        writes = plan.plan(policy, self._read(policy, ns, prior), self.config)
        done = plan.Progress(problems=list(writes.problems))
        if writes.template is not None:
            self._apply_template(writes.template, done, out)
        for target in writes.targets:
            self._apply_target(policy, target, done, out)
        # A release that fails raises (ReleaseFailed): the status is not written, so the next attempt
        # still finds the Deployment among the prior targets.
        for key in writes.releases:
            out.writes += self.release(ns, policy.name, key)
        for want in plan.wait_rbac(policy, done.gated):
            self._ensure(want, out)
        verdict_map = self._verdicts(policy, ns, prior, out)
        out.seen = {plan.key_of({**w, "kind": w.get("kind") or registry.DEPLOYMENT.kind}): plan.fingerprint(w)
                    for w in done.gated}
        pods = self._pods(ns, done.gated)
        done.notes.update(plan.held_notes(policy, pods))
        out.targets, out.wanted, out.result = done.targets, set(writes.wanted), done.result
        out.requeue_after = done.requeue_after
        infos = [status.PreconditionInfo(p.name, p.type) for p in policy.preconditions]
        self._write_status(obj, out, infos, verdict_map, pods, done.targets, done.applied(), done.stalled(cycle),
                           done.notes)
        return out

    # ------------------------------------------------------------------ read and write

    def _read(self, policy: spec.Policy, ns: str, prior: Mapping[str, Any]) -> plan.Live:
        """The workloads the target names (a selector's: the namespace's of its kinds), and whether
        each other policy that claims one of them exists."""
        ref = plan.target_ref(policy)
        found: list[dict[str, Any]] = []
        if ref is None:
            for kind in plan.target_kinds(policy):
                found += self.kube.items(*_api(kind), ns)
        else:
            known, dep = self.cached(ns, *ref) if self.cached is not None else (False, None)
            if not known:
                dep = self.kube.get(*_api(ref[0]), ns, ref[1])
            if dep is not None:
                dep.setdefault("kind", ref[0])
                found.append(dep)
        prior_targets = tuple(plan.prior_targets(prior))
        exists = {c: self.policy_exists(ns, c) for c in sorted(plan.claimants(policy, found))}
        if ns in self.protected:  # nothing is written there: who else targets what does not matter
            return plan.Live(found, prior_targets, exists, protected=self.protected)
        rivals = plan.rivals(policy, found, self.namespace_policies(ns, found)) if found else {}
        return plan.Live(found, prior_targets, exists, rivals=rivals, protected=self.protected)

    def _apply_target(self, policy: spec.Policy, target: plan.TargetWrite, done: plan.Progress, out: Outcome) -> None:
        """Gate one workload; when it changed meanwhile, read it and plan it again (its controller
        writes its status often)."""
        key = target.key
        if target.problem is not None and target.problem.reason == plan.CONFLICT:
            done.problems.append(target.problem)  # another policy's: not listed among this one's targets
            return
        done.targets.append(key)
        for _ in range(plan.APPLY_ATTEMPTS):
            if target.problem is not None:
                done.problems.append(target.problem)
                return
            if target.note:
                done.notes[key] = target.note
            try:
                live = self._send(policy, target, out)
                done.gated.append(live)
                if self.wrote is not None and target.applies:
                    self.wrote(key[0], live)
                return
            except (Gone, Changed) as e:
                log.info("%s/%s: %s; reading it again", policy.namespace, policy.name, e)
                fresh = self.kube.get(*_api(key[0]), policy.namespace, key[1])
                if fresh is None:
                    break
                fresh.setdefault("kind", key[0])
                done.notes.pop(key, None)
                target = plan.target_writes(policy, fresh, self.config)
            except Rejected as e:  # the rendered workload itself is refused: a person must change the spec
                done.problems.append(plan.refused(key, str(e)))
                return
            except ApiError as e:  # any other class (500 included): said in status, tried again later
                done.problems.append(plan.apply_failed(key, *describe(e)))
                return
        done.problems.append(plan.kept_changing(key))

    def _send(self, policy: spec.Policy, target: plan.TargetWrite, out: Outcome) -> dict[str, Any]:
        """The target's applies, each guarded by the resourceVersion the previous write answered, then
        the placement patch the last answer still needs; the Deployment as the last write returned it."""
        live, version = dict(target.read), target.resource_version
        for body in target.applies:
            live = self.kube.apply(plan.guarded(body, version))
            out.writes += 1
            version = live["metadata"]["resourceVersion"]
        patch = plan.reorder(policy, live) if target.applies else None
        if patch:
            live = self.kube.json_patch(*_api(target.key[0]), policy.namespace, target.name, patch) or live
            out.writes += 1
        # depgate-* entries the policy no longer renders, kept by another manager's co-ownership: out
        stale = plan.stale_patch(policy, {**live, "kind": target.key[0]}, self.config) if target.applies else None
        if stale:
            live = self.kube.json_patch(*_api(target.key[0]), policy.namespace, target.name, stale) or live
            out.writes += 1
        return live

    def _apply_template(self, template: plan.TemplateWrite, done: plan.Progress, out: Outcome) -> None:
        live = template.read
        if template.apply is not None:
            try:
                live = self.kube.apply(template.apply)
                out.writes += 1
            except Rejected as e:
                done.problems.append(plan.invalid_template(str(e)))
                return
            except Forbidden as e:  # template mode is not enabled in this namespace (depgate-template-creator)
                done.problems.append(plan.template_forbidden(template.apply["metadata"]["namespace"], template.name,
                                                             str(e), self.operator_namespace))
                return
        if live is not None:
            done.targets.append((registry.DEPLOYMENT.kind, template.name))
            done.gated.append(live)

    def release(self, ns: str, policy_name: str, target: str | TargetKey) -> bool:
        """Remove everything depgate applied to one workload (only if this policy claims it).

        The apply that names nothing gives up depgate's fields; entries another field manager co-owns
        stay after it (a user's apply of `depgate render` output; an admission-time render, owned by
        whoever created the object), so they are then removed by a JSON patch (plan.leftovers_patch).
        True when something was released, False when there was nothing to release; raises
        ReleaseFailed when the workload kept changing under every attempt (the caller retries later)."""
        kind, name = (registry.DEPLOYMENT.kind, target) if isinstance(target, str) else target
        api = _api(kind) if kind in registry.WORKLOAD_KINDS else DEPLOYMENT
        for _ in range(plan.RELEASE_ATTEMPTS):
            live = self.kube.get(*api, ns, name)
            if live is not None:
                live.setdefault("kind", kind)
            body = plan.release_body(policy_name, live)
            if body is None:
                return False
            try:
                after = self.kube.apply(body)
                after.setdefault("kind", kind)
                patch = plan.leftovers_patch(after)
                if patch:
                    self.kube.json_patch(*api, ns, name, patch)
            except (Gone, Changed):
                continue  # written meanwhile: read it again (our claim is gone: then nothing to release)
            except NamespaceTerminating:  # going away with its namespace
                return False
            return True
        raise ReleaseFailed(f"{kind.lower()} {ns}/{name} changed under each of {plan.RELEASE_ATTEMPTS} attempts "
                            "to release it")

    def _ensure(self, want: Mapping[str, Any], out: Outcome) -> None:
        """Apply `want` unless the live object already holds it."""
        md = want["metadata"]
        if not plan.holds(self.kube.get(want["apiVersion"], want["kind"], md["namespace"], md["name"]), want):
            self.kube.apply(want)
            out.writes += 1

    # ------------------------------------------------------------------ verdicts and pods

    def _verdicts(self, policy: spec.Policy, ns: str, prior: Mapping[str, Any],
                  out: Outcome) -> dict[str, verdicts.Verdict]:
        prior_entries = {e.get("name"): e for e in prior.get("preconditions") or [] if isinstance(e, Mapping)}
        result: dict[str, verdicts.Verdict] = {}
        # Claimed before anything is read: an event from then on wakes this policy again.
        out.custom = plan.custom_resources(policy, ns)
        refused = self.claim_custom((ns, policy.name), out.custom) if self.claim_custom else {}
        for p in policy.preconditions:
            try:
                v = self._judge(p, ns, (prior_entries.get(p.name) or {}).get("satisfiedUID"), refused)
            except Forbidden as e:
                _, kind, name = p.body.named_object() if hasattr(p.body, "named_object") else ("", "", "")
                v = verdicts.forbidden(kind, name, ns, str(e), self.operator_namespace)
            if v is not None:
                result[p.name] = v
        return result

    def _judge(self, p: spec.Precondition, ns: str, remembered_uid: str | None,
               refused: Mapping[tuple[str, str, str], str]) -> verdicts.Verdict | None:
        """The operator's verdict on one precondition it judges: the object its body names, read and
        judged (None for the types judged in pods)."""
        b = p.body
        if not p.judged_by_operator or not hasattr(b, "named_object"):
            return None
        api_version, kind, name = b.named_object()
        try:
            obj = self.kube.get(api_version, kind, ns, name)
        except LookupError as e:  # a custom resource whose kind is not served (its CRD not installed yet)
            return verdicts.Verdict(verdicts.BLOCKING, "KindNotServed", str(e))
        if isinstance(b, spec.ServiceCheck):
            slices = self.kube.items(registry.ENDPOINT_SLICE.api_version, registry.ENDPOINT_SLICE.kind, ns,
                                     label_selector=f"{registry.SERVICE_NAME_LABEL}={name}") if obj else []
            return verdicts.judge_service(name, obj, slices, b.min_ready_endpoints)
        if isinstance(b, spec.JobCheck):
            return verdicts.judge_job(name, obj, remembered_uid)
        if isinstance(b, spec.SecretCheck | spec.ConfigMapCheck):
            v = verdicts.judge_keys(kind, name, obj, b.keys)
            why = refused.get((api_version, kind, ns)) if isinstance(b, spec.SecretCheck) else None
            if why:  # Secrets ride the shared per-namespace watches (plan.custom_resources): the same caps
                return verdicts.Verdict(verdicts.BLOCKING, "TooManyWatches",
                                        f"{why}. As read now: {v.state}: {v.message}")
            return v
        if isinstance(b, spec.WorkloadCheck):
            return verdicts.judge_workload(kind, name, obj, b.min_available)
        if isinstance(b, spec.ResourceCheck):
            v = verdicts.judge_resource(api_version, kind, name, obj, b.condition, b.status)
            why = refused.get((api_version, kind, ns))
            if why:  # over a cap: not watched, so never Satisfied on a reading that may go stale unheard
                return verdicts.Verdict(verdicts.BLOCKING, "TooManyWatches",
                                        f"{why}. As read now: {v.state}: {v.message}")
            return v
        return None  # a type without a judge here stays Unknown (tests/unit/test_reconciler.py fails first)

    def _pods(self, ns: str, workloads: Sequence[Mapping[str, Any]]) -> dict[TargetKey, list[dict[str, Any]]]:
        """The pods of each gated workload, by target: those its selector lists whose controller is it
        (a CronJob's: the pods of the Jobs it owns)."""
        out: dict[TargetKey, list[dict[str, Any]]] = {}
        jobs: list[dict[str, Any]] | None = None
        for w in workloads:
            key = plan.key_of(w)
            if key[0] == registry.CRON_JOB.kind:
                if jobs is None:
                    jobs = self.kube.items(registry.JOB.api_version, registry.JOB.kind, ns)
                uid = (w.get("metadata") or {}).get("uid")
                owned = [j for j in jobs if any(o.get("uid") == uid for o in
                                                (j.get("metadata") or {}).get("ownerReferences") or [])]
                out[key] = [p for j in owned for p in self._owned_pods(ns, j)]
            else:
                out[key] = self._owned_pods(ns, w)
        return out

    def _owned_pods(self, ns: str, workload: Mapping[str, Any]) -> list[dict[str, Any]]:
        sel = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not sel:
            return []
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
        key = plan.key_of({**workload, "kind": workload.get("kind") or registry.DEPLOYMENT.kind})
        if self.has_no_pods is not None and self.has_no_pods(ns, *key):
            return []
        return [pod for pod in self.kube.items("v1", "Pod", ns, label_selector=label_selector)
                if plan.workload_of_pod(pod) == key]

    # ------------------------------------------------------------------ status

    def _write_status(self, obj: Mapping[str, Any], out: Outcome, infos: list[status.PreconditionInfo],
                      verdict_map: Mapping[str, verdicts.Verdict], pods: Mapping[TargetKey, list[dict[str, Any]]],
                      targets: list[TargetKey], applied: status.AppliedState, stalled: status.Stalled | None,
                      notes: Mapping[TargetKey, str] | None = None) -> None:
        md, prior = obj["metadata"], obj.get("status") or {}
        new = status.compute_status(generation=int(md.get("generation") or 0), prior=prior, preconditions=infos,
                                    verdicts=verdict_map, pods=[p for ps in pods.values() for p in ps],
                                    targets=targets, target_pods=pods, target_notes=notes or {}, applied=applied,
                                    stalled=stalled, reconciling=out.requeue_after is not None, now=self.now())
        out.status = new
        if new == prior:
            return
        out.written = self.kube.replace_status(md["namespace"], md["name"], new)
        out.status_written = True
        out.writes += 1
        for ev in status.transitions(prior, new):
            self.kube.event(obj, ev.type, ev.reason, ev.message)
