"""The event wiring's decisions, as plain data: which policies an event wakes, when a policy's
worker reconciles, which custom-resource watches run, when the dependency cycles are recomputed.

handlers.py feeds every watch event in and does what the answers say (wake a worker, start a task,
sleep); nothing here imports kopf or talks to the API server, so that every rule has a unit test
(tests/unit/test_wiring.py).

- `Wiring`: who wakes whom. Every watched object a policy names (its target Deployments and their
  pods, Services and their EndpointSlices, Jobs, Secrets, ConfigMaps, workloads) sets the dirty
  flag of the policies that name it; the newest copy of every policy; the labels the cycle graph
  needs. Touched from the event loop's thread only.
- `CustomClaims`: one shared watch per (apiVersion, kind, namespace) that `resource` preconditions
  name, within two caps; behind a lock (reconciles claim from their threads).
- `CycleSchedule`: at most one recompute of the cycles at a time, only when the graph changed.
- `WorkerState`: one policy's worker: the coalescing of bursts, the backoff after a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from depgate import gates, graph, plan, registry, spec
from depgate.constants import GROUP
from depgate.graph import ObjectKey
from depgate.plan import (
    CustomKey,
    TargetKey,
    claim_of,
    cron_job_of,
    fingerprint,
    fresher,
    key_of,
    prior_targets,
    target_ref,
    workload_of_pod,
)

Key = tuple[str, str]  # (namespace, policy name)
StreamKey = tuple[str, str, str]  # (apiVersion, kind, namespace): one shared custom-resource watch


class Outcome(Protocol):
    """What the wiring reads of a reconcile's outcome (controller.Outcome)."""

    @property
    def targets(self) -> Sequence[TargetKey]: ...  # the workloads it gates
    @property
    def wanted(self) -> Iterable[TargetKey]: ...  # the workloads whose appearance matters
    @property
    def custom(self) -> Sequence[CustomKey]: ...  # what its `resource` preconditions name, in declared order
    @property
    def written(self) -> dict[str, Any] | None: ...  # the policy as its status write returned it
    @property
    def seen(self) -> Mapping[TargetKey, int]: ...  # plan.fingerprint of each gated workload as it last saw it

KOPF_DIFFBASE = f"{GROUP}/last-handled-configuration"  # written by depgate before handlers._NoDiffBase

# The kinds whose events wake policies: every kind a precondition type watches, and the pods of the
# targets (their readiness is in the status). Adding a kind to depgate.registry watches it.
WATCHED_KINDS: tuple[registry.ApiKind, ...] = tuple(dict.fromkeys((
    *registry.watched_kinds(), *(w.api for w in registry.WORKLOAD_KINDS.values() if w.gated), registry.POD)))

# What a watch of each kind must deliver: the wiring reads only the metadata (names, labels, owners) of
# these; a Service's selector and a workload's pod template are in their specs.
METADATA_ONLY_KINDS: frozenset[str] = frozenset({
    registry.POD.kind, registry.SECRET.kind, registry.CONFIG_MAP.kind, registry.ENDPOINT_SLICE.kind,
    registry.JOB.kind})
_WATCHED_BY_KIND: dict[str, registry.ApiKind] = {k.kind: k for k in WATCHED_KINDS}


class Stream(NamedTuple):
    """One watch of a built-in kind the wiring asks for: a namespace's objects of `kind` ("" namespace:
    every namespace), filtered by the API server with the label selector `labels`."""

    kind: str
    namespace: str
    labels: str = ""

    @property
    def api(self) -> registry.ApiKind:
        return _WATCHED_BY_KIND[self.kind]

    @property
    def metadata_only(self) -> bool:
        return self.kind in METADATA_ONLY_KINDS and not self.labels

    @property
    def gated(self) -> bool:
        """Is it a stream of the pods at depgate's scheduling gate (GATED_PODS, in some namespace)?"""
        return self._replace(namespace="") == GATED_PODS


# The pods at depgate's scheduling gate, wherever they are (depgate.gates): bodies, few.
GATED_PODS = Stream(registry.POD.kind, "", f"{gates.GATED_LABEL}=true")


def kinds_for(policy: spec.Policy | None, namespace: str, targets: Iterable[TargetKey]) -> set[str]:
    """The built-in kinds whose events in the policy's namespace can concern it: the kinds its target can
    name and the kinds of what it targeted before (`targets`), their pods (and a CronJob's Jobs), the kind
    each precondition names (a Service's EndpointSlices too). Custom resources: CustomClaims."""
    kinds = {registry.POD.kind, *(str(k) for k, _ in targets)}
    if policy is not None:
        kinds.update(plan.target_kinds(policy))
        for dep in graph.dependencies(policy, namespace):
            kinds.add(dep.kind)
            if dep.kind == registry.SERVICE.kind:
                kinds.add(registry.ENDPOINT_SLICE.kind)
    if registry.CRON_JOB.kind in kinds:
        kinds.add(registry.JOB.kind)
    return {k for k in kinds if k in _WATCHED_BY_KIND}


# One reconcile that finished less than this long ago makes the next one wait coalesce_seconds
# (a burst of events becomes one reconcile); an idle policy reconciles at once.
RECENT_SECONDS = 1.0
FIRST_BACKOFF_SECONDS = 1.0  # after the first failure in a row; doubled after each further one


Cause = tuple[tuple[str, str], int]  # ((kind, name), plan.fingerprint) of the workload event that woke a policy


class Change(NamedTuple):
    """What one event means: the policies to wake, and whether the dependency graph changed; `echo`: those of
    them to wake only if the event's `cause` is not what their own last reconcile read or wrote."""

    wake: frozenset[Key]
    graph_changed: bool = False
    echo: frozenset[Key] = frozenset()
    cause: Cause | None = None


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """A policy as the workers keep it: plain dicts (Kopf's bodies are views), slimmed."""
    out: dict[str, Any] = json.loads(json.dumps(dict(body), default=dict))
    return slim(out)


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """Without what no reconcile reads (managedFields, Kopf's copy of the spec in an annotation),
    which is most of a policy's size in memory."""
    md = obj.get("metadata")
    if isinstance(md, dict):
        md.pop("managedFields", None)
        ann = md.get("annotations")
        if isinstance(ann, dict):
            ann.pop(KOPF_DIFFBASE, None)
    return obj


class Kept(NamedTuple):
    """A workload as Wiring.bodies keeps it: its uid and resourceVersion (what `fresher` compares) and the
    body as compact JSON, parsed into a fresh copy by body()."""

    version: dict[str, Any]  # {"metadata": {"uid", "resourceVersion"}}
    data: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Kept:
        md = _meta(body)
        return cls({"metadata": {"uid": md.get("uid"), "resourceVersion": md.get("resourceVersion")}},
                   json.dumps(body, separators=(",", ":"), default=dict))

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.data)
        return out


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _template_labels(body: Mapping[str, Any], kind: str = registry.DEPLOYMENT.kind) -> dict[str, str]:
    """The labels of a workload's pod template (a CronJob's is in its jobTemplate)."""
    md = registry.pod_template({**body, "kind": kind}).get("metadata")
    return dict((md.get("labels") if isinstance(md, Mapping) else None) or {})


def deleting(obj: Mapping[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def respecified(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Is `new` a copy the worker must reconcile for its own sake: the first seen, a new generation
    (the spec changed), or the policy being deleted?"""
    return old is None or _meta(new).get("generation") != _meta(old).get("generation") or deleting(new)


SYSTEM_NAMESPACE = "kube-system"


def protected(configured: Sequence[str], operator_namespace: str) -> frozenset[str]:
    """The namespaces no policy may gate (settings.protected_namespaces): the ones given, else the
    operator's own namespace and kube-system. A policy there changes nothing (plan.Live.protected): it
    could otherwise hold back the operator itself (its next pod waiting on a verdict only the operator
    writes) or the cluster's system components."""
    names = [n.strip() for n in configured if n.strip()]
    return frozenset(names) if names else frozenset({operator_namespace, SYSTEM_NAMESPACE})


def watched_objects(policy: spec.Policy, namespace: str) -> set[ObjectKey]:
    """The objects whose events must wake `policy` (of `namespace`): what its preconditions name."""
    return {d.key(namespace) for d in graph.dependencies(policy, namespace)}


def cycles_of(policies: Sequence[spec.Policy],
              deployment_labels: Mapping[tuple[str, str, str], Mapping[str, str]],
              services: Mapping[tuple[str, str], Mapping[str, str]],
              workload_labels: Mapping[tuple[str, str, str], Mapping[str, str]],
              claims: Mapping[tuple[str, str, str], str] | None = None) -> dict[Key, str]:
    """The DependencyCycle message of every policy on a cycle of the graph of all policies (a policy
    that lost a workload to another's claim has no edge from it)."""
    g = graph.build_graph(graph.policy_nodes(policies, deployment_labels, set(services), claims), services,
                          workload_labels)
    return graph.cycles_by_policy(g, graph.find_cycles(g))


def to_release(policy: str, status: Mapping[str, Any] | None,
               deployments: Iterable[Mapping[str, Any]]) -> list[TargetKey]:
    """The workloads a deleted policy must release: those its status names, and every one of
    `deployments` (workloads, each with its kind) carrying its claim, in case the status write never came."""
    keys = set(prior_targets(status))
    keys.update(key_of(d) for d in deployments if claim_of(d) == policy)
    return sorted(keys)


# Kopf restarts a silent watch and a watch whose resourceVersion expired, and says so only in these
# debug lines of its watching module (kopf._cogs.clients.watching, kopf 1.45): "Watch-stream for {what} is inactive,
# reconnecting." and "Restarting the watch-stream for {what}".
_KOPF_SILENT = ("Watch-stream for ", " is inactive, reconnecting.")
_KOPF_EXPIRED = "Restarting the watch-stream for "


def kopf_watch_restart(message: str) -> tuple[str, str] | None:
    """("silent" | "expired", what) when a line of Kopf's watching module says it restarted a watch."""
    start, end = _KOPF_SILENT
    if message.startswith(start) and message.endswith(end):
        return "silent", message[len(start):-len(end)]
    if message.startswith(_KOPF_EXPIRED):
        return "expired", message[len(_KOPF_EXPIRED):]
    return None


# ---------------------------------------------------------------------- custom-resource watches


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


@dataclass
class _Stream:
    wants: dict[Key, set[str]] = field(default_factory=dict)  # policy -> the names it waits on
    by_name: dict[str, set[Key]] = field(default_factory=dict)


class Claim(NamedTuple):
    refused: dict[StreamKey, str]  # each kind of the policy not watched -> why (which cap)
    woken: frozenset[Key]  # policies refused before that may get a watch now (one stopped)


class CustomClaims:
    """The custom resources (`resource` preconditions) to watch: one shared watch per (apiVersion,
    kind, namespace), whatever number of objects and policies name it; an event on it wakes the
    policies that name the object it carries.

    At most `max_watches` watches per operator and `max_kinds_per_policy` kinds per policy: claim()
    says which of a policy's kinds are over a cap (the reconcile reports them TooManyWatches); when a
    watch stops, the policies that were refused one are woken to claim again. claim() is called from
    reconciles (threads) and from the event loop: the state is behind a lock."""

    def __init__(self, max_watches: int, max_kinds_per_policy: int) -> None:
        self.max_watches = max_watches
        self.max_kinds_per_policy = max_kinds_per_policy
        self._lock = threading.Lock()
        self._streams: dict[StreamKey, _Stream] = {}
        self._refused: set[Key] = set()  # policies with a kind over a cap, woken when a watch stops

    def claim(self, key: Key, wanted: Iterable[CustomKey]) -> Claim:
        """Make `wanted` (in declared order) what policy `key` is woken by."""
        names: dict[StreamKey, set[str]] = {}
        for av, kind, ns, name in wanted:
            names.setdefault((av, kind, ns), set()).add(name)
        refused: dict[StreamKey, str] = {}
        per_policy, per_operator = self.max_kinds_per_policy, self.max_watches
        with self._lock:
            admitted: dict[StreamKey, set[str]] = {}
            for i, (skey, ns_names) in enumerate(names.items()):
                av, kind, ns = skey
                if i >= per_policy:
                    refused[skey] = (
                        f"a policy has at most {per_policy} kinds of custom resource watched "
                        f"(--max-custom-kinds-per-policy={per_policy}); {kind} ({av}) is this policy's "
                        f"{_ordinal(i + 1)}, so depgate does not watch it")
                elif skey in self._streams or len(self._streams) < per_operator:
                    admitted[skey] = ns_names
                    self._streams.setdefault(skey, _Stream())
                else:
                    refused[skey] = (
                        f"depgate watches at most {per_operator} kinds of custom resource per namespace at once "
                        f"(--max-custom-watches={per_operator}), all taken: {kind} ({av}) in {ns} is not "
                        "watched; judged on each reconcile and resync, and watched as soon as a watch frees up")
            freed = False
            for skey, stream in list(self._streams.items()):
                for n in stream.wants.pop(key, set()):
                    stream.by_name.get(n, set()).discard(key)
                    if not stream.by_name.get(n, True):
                        del stream.by_name[n]
                new = admitted.get(skey)
                if new:
                    stream.wants[key] = set(new)
                    for n in new:
                        stream.by_name.setdefault(n, set()).add(key)
                if not stream.wants:
                    del self._streams[skey]
                    freed = True
            if refused:
                self._refused.add(key)
            else:
                self._refused.discard(key)
            woken = frozenset(self._refused - {key}) if freed else frozenset()
        return Claim(refused, woken)

    def watched(self) -> set[StreamKey]:
        """The watches that must run."""
        with self._lock:
            return set(self._streams)

    def wants(self, skey: StreamKey, name: str) -> bool:
        """Does some policy wait on the object `name` of this watch?"""
        with self._lock:
            s = self._streams.get(skey)
            return s is not None and name in s.by_name

    def woken_by(self, skey: StreamKey, names: set[str] | None) -> set[Key]:
        """The policies that name one of `names` on this watch (None: every policy on it)."""
        with self._lock:
            s = self._streams.get(skey)
            if s is None:
                return set()
            return set(s.wants) if names is None else {k for n in names for k in s.by_name.get(n, ())}


# ---------------------------------------------------------------------- who wakes whom


@dataclass
class Wiring:
    """Who wakes whom: every index from a watched object to the policies it must wake. Touched only
    from the event loop's thread (the `custom` claims excepted, which have their own lock)."""

    custom: CustomClaims
    dirty: dict[Key, asyncio.Event] = field(default_factory=dict)  # a running worker's flag
    policies: dict[Key, Mapping[str, Any]] = field(default_factory=dict)  # the newest copy of each
    parsed: dict[Key, spec.Policy] = field(default_factory=dict)  # of that copy, when its spec is valid
    # the same by namespace, and a count of the changes of each namespace's copies (Operator.namespace_policies
    # remembers its answer until it moves): a reconcile's look at its namespace costs that namespace only
    parsed_in: dict[str, dict[Key, spec.Policy]] = field(default_factory=dict)
    changes_in: dict[str, int] = field(default_factory=dict)
    deps: dict[Key, set[ObjectKey]] = field(default_factory=dict)
    by_dep: dict[ObjectKey, set[Key]] = field(default_factory=lambda: defaultdict(set))
    targets: dict[Key, set[TargetKey]] = field(default_factory=dict)
    # Pod events per namespace, and their count when each running reconcile began: a pod event of a
    # Deployment that no policy targets yet wakes nobody, so a reconcile that learns that target
    # while pods changed meanwhile runs again (else its pod counts stay stale until the resync).
    pod_events: dict[str, int] = field(default_factory=dict)
    started: dict[Key, int] = field(default_factory=dict)
    by_target: dict[tuple[str, str, str], set[Key]] = field(default_factory=lambda: defaultdict(set))
    refs: dict[Key, TargetKey] = field(default_factory=dict)  # the workload a workloadRef/template names
    cron_jobs: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, Job) -> the CronJob controlling it
    by_ref: dict[tuple[str, str, str], set[Key]] = field(default_factory=lambda: defaultdict(set))
    selectors: dict[Key, spec.Selector] = field(default_factory=dict)
    selectors_in: dict[str, set[Key]] = field(default_factory=dict)  # the same keys by namespace (rivals_of)
    services: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # -> spec.selector
    workload_labels: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)  # -> template labels
    # (namespace, kind, name) -> metadata.labels of each workload of a kind a policy can target
    deployment_labels: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    claims: dict[tuple[str, str, str], str] = field(default_factory=dict)  # -> its depgate.io/policy claim
    # Why each running worker's flag is set since its reconcile began: None for any real cause, else only
    # workload events (echo_only); and what each policy's last reconcile saw of its gated workloads.
    causes: dict[Key, set[Cause] | None] = field(default_factory=dict)
    seen: dict[Key, dict[tuple[str, str], int]] = field(default_factory=dict)
    fingerprints: dict[tuple[str, str, str], int] = field(default_factory=dict)  # of each gateable workload
    # (namespace, kind, name) of a workload -> the names of its pods the namespace's pod stream has delivered;
    # pods_listed: the namespaces whose pod stream has listed (and runs)
    pods_of: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    pods_listed: set[str] = field(default_factory=set)
    # The newest copy of each gateable workload (Deployment, StatefulSet, DaemonSet, CronJob) in the namespaces
    # streamed, slimmed; (namespace, kind) of the streams that have listed: a workload absent there is absent
    # (one created a moment ago wakes its policies with its event)
    # (as compact JSON: a Deployment's dicts take several times its JSON's size, and workload() copied it anyway)
    bodies: dict[tuple[str, str, str], Kept] = field(default_factory=dict)
    workloads_listed: set[tuple[str, str]] = field(default_factory=set)
    kinds: dict[Key, frozenset[str]] = field(default_factory=dict)  # kinds_for each policy, as counted
    stream_users: dict[Stream, int] = field(default_factory=dict)  # -> how many policies need it
    scope_version: int = 0  # changes whenever streams() may have
    gated_in: tuple[str, ...] = ("",)  # where the gated pods are watched: "" every namespace, else those served

    # ------------------------------------------------------------------ the workers' flags

    def worker(self, key: Key) -> asyncio.Event:
        """The dirty flag of the worker of `key` (the one it had, for a worker started again)."""
        if key not in self.dirty:
            self.dirty[key] = asyncio.Event()
        return self.dirty[key]

    def alive(self, key: Key) -> bool:
        """Is the policy's worker running (started, and the policy not deleted since)?"""
        return key in self.dirty

    def mark(self, keys: Iterable[Key]) -> set[Key]:
        """Wake the workers of `keys`; the keys whose worker runs."""
        marked = {k for k in keys if k in self.dirty}
        for k in marked:
            self.causes[k] = None
            self.dirty[k].set()
        return marked

    def mark_echo(self, keys: Iterable[Key], cause: Cause) -> set[Key]:
        """Wake the workers of `keys` for a workload event that may be the echo of their own write."""
        marked = {k for k in keys if k in self.dirty}
        for k in marked:
            if k not in self.causes:
                self.causes[k] = {cause}
            elif (had := self.causes[k]) is not None:
                had.add(cause)
            self.dirty[k].set()
        return marked

    def echo_only(self, key: Key) -> bool:
        """As a worker takes its flag: was it set only by events of workloads exactly as its last reconcile read
        or wrote them (its own write coming back)? Then there is nothing new to reconcile. Forgets the causes."""
        causes = self.causes.pop(key, None)
        if not causes:
            return False
        seen = self.seen.get(key, {})
        return all(seen.get(obj) == fp for obj, fp in causes)

    # ------------------------------------------------------------------ the indexes

    def set_deps(self, key: Key, deps: set[ObjectKey]) -> None:
        for d in self.deps.get(key, set()) - deps:
            self.by_dep[d].discard(key)
        for d in deps:
            self.by_dep[d].add(key)
        self.deps[key] = deps

    def set_targets(self, key: Key, targets: Iterable[TargetKey | str]) -> None:
        ns = key[0]
        new = {(registry.DEPLOYMENT.kind, t) if isinstance(t, str) else (str(t[0]), str(t[1])) for t in targets}
        for kind, name in self.targets.get(key, set()) - new:
            self.by_target[(ns, kind, name)].discard(key)
        for kind, name in new:
            self.by_target[(ns, kind, name)].add(key)
        self.targets[key] = new
        self._rescope(key)

    def set_refs(self, key: Key, ref: TargetKey | None) -> None:
        old = self.refs.pop(key, None)
        if old is not None:
            self.by_ref[(key[0], *old)].discard(key)
        if ref is not None:
            self.refs[key] = ref
            self.by_ref[(key[0], *ref)].add(key)

    def forget(self, key: Key) -> Claim:
        """A deleted policy: nothing wakes it any more, and its custom watches are given up."""
        self.set_deps(key, set())
        self.set_targets(key, ())
        self.set_refs(key, None)
        self._set_selector(key, None)
        self.policies.pop(key, None)
        self._parsed(key, None)
        self.dirty.pop(key, None)
        self.started.pop(key, None)
        self.causes.pop(key, None)
        self.seen.pop(key, None)
        self._rescope(key)
        return self.custom.claim(key, ())

    def for_deployment(self, ns: str, name: str, labels: Mapping[str, str] | None) -> set[Key]:
        return self.for_workload(registry.DEPLOYMENT.kind, ns, name, labels)

    def for_workload(self, kind: str, ns: str, name: str, labels: Mapping[str, str] | None) -> set[Key]:
        """The policies a workload's event wakes: those targeting it by name or by selector, and
        those with a precondition on it."""
        keys = set(self.by_target.get((ns, kind, name), set())) | self._naming(kind, ns, name)
        keys |= self.by_ref.get((ns, kind, name), set())
        for k in self.selectors_in.get(ns, ()):  # the namespace's selector policies, not the cluster's
            sel = self.selectors[k]
            if kind in sel.kinds and sel.matches(labels or {}):
                keys.add(k)
        return keys

    def _naming(self, kind: str, ns: str, name: str) -> set[Key]:
        """The policies with a precondition on this object."""
        return set(self.by_dep.get(ObjectKey(kind, ns, name), set()))

    def streams(self) -> set[Stream]:
        """The watches of built-in kinds the policies known now need: in each namespace that holds a
        policy, the kinds that can concern one of its policies (kinds_for); nothing elsewhere, so that
        writes in a namespace no policy names never reach this process. Every policy counts, a deleted
        one until it is forgotten (its release reads what it needs), an invalid one for what it targeted
        before. Plus the gated pods, in every namespace served (`gated_in`)."""
        return {*(GATED_PODS._replace(namespace=ns) for ns in self.gated_in), *self.stream_users}

    def _rescope(self, key: Key) -> None:
        """Count the streams of `key` as kinds_for says now (kept incrementally: a burst of a thousand
        policies must not recompute every policy's kinds on each event)."""
        if key in self.policies:
            kinds = frozenset(kinds_for(self.parsed.get(key), key[0], self.targets.get(key, ())))
        else:
            kinds = frozenset()
        old = self.kinds.get(key, frozenset())
        if kinds == old:
            return
        for kind in old - kinds:
            st = Stream(kind, key[0])
            self.stream_users[st] -= 1
            if self.stream_users[st] <= 0:
                del self.stream_users[st]
        for kind in kinds - old:
            st = Stream(kind, key[0])
            self.stream_users[st] = self.stream_users.get(st, 0) + 1
        if kinds:
            self.kinds[key] = kinds
        else:
            self.kinds.pop(key, None)
        self.scope_version += 1

    def has_no_pods(self, ns: str, kind: str, name: str) -> bool:
        """From a reconcile's thread: does the running pod stream of `ns` know of no pod of this workload? Then
        listing its pods would find none (a pod created a moment ago, not delivered yet, wakes the policy with
        its event: pod_seen, and the pod_events count of a reconcile under way)."""
        return ns in self.pods_listed and (ns, kind, name) not in self.pods_of

    def pod_stream(self, ns: str, running: bool) -> None:
        """The pod stream of `ns` listed (running True) or stopped: what it said is forgotten with it."""
        if running:
            self.pods_listed.add(ns)
            return
        self.pods_listed.discard(ns)
        for k in [k for k in self.pods_of if k[0] == ns]:
            del self.pods_of[k]

    def remember(self, kind: str, body: Mapping[str, Any]) -> None:
        """Keep `body` as the copy of its workload unless a newer one is kept (from a stream's event, or from a
        reconcile's thread: the answer to its own write, which may come before that write's event)."""
        md = _meta(body)
        k = (str(md.get("namespace")), kind, str(md.get("name")))
        kept = self.bodies.get(k)
        if kept is None or not fresher(kept.version, body):
            self.bodies[k] = Kept.of(slim({**body, "kind": kind, "metadata": dict(md)}))  # the caller's stays whole

    def workload(self, ns: str, kind: str, name: str) -> tuple[bool, dict[str, Any] | None]:
        """From a reconcile's thread: (known, a copy of the workload as last streamed or written; None: absent).
        Not known while the namespace's stream of that kind has not listed: read it from the API server then.
        A stale copy is safe: every write depgate makes is guarded by the resourceVersion it read."""
        kept = self.bodies.get((ns, kind, name))
        if kept is not None:
            return True, kept.body()
        return (ns, kind) in self.workloads_listed, None

    def workload_stream(self, ns: str, kind: str, running: bool) -> None:
        """A workload stream of `ns` listed (running True) or stopped: what it said is forgotten with it."""
        if running:
            self.workloads_listed.add((ns, kind))
            return
        self.workloads_listed.discard((ns, kind))
        for k in [k for k in self.bodies if k[0] == ns and k[1] == kind]:
            del self.bodies[k]

    def stream_running(self, st: Stream, running: bool) -> None:
        """A stream listed (running True) or stopped: a namespace's pod stream and its gateable workloads'
        streams are what has_no_pods and workload() answer from."""
        if st.gated:
            return
        if st.kind == registry.POD.kind:
            self.pod_stream(st.namespace, running)
        elif st.kind in registry.WORKLOAD_KINDS and registry.WORKLOAD_KINDS[st.kind].template_mutable:
            self.workload_stream(st.namespace, st.kind, running)

    def policies_naming_in(self, namespace: str) -> set[Key]:
        """The policies a stream of `namespace` can concern (after a gap in its events, all are woken)."""
        return {k for k in self.kinds if k[0] == namespace}

    def graph_inputs(self) -> tuple[list[spec.Policy], dict[tuple[str, str, str], dict[str, str]],
                                    dict[tuple[str, str], dict[str, str]],
                                    dict[tuple[str, str, str], dict[str, str]],
                                    dict[tuple[str, str, str], str]]:
        """A copy of what cycles_of() reads, for a thread to compute from (a policy whose spec does
        not parse gates nothing and waits on nothing: it is on no cycle)."""
        return (list(self.parsed.values()), dict(self.deployment_labels), dict(self.services),
                dict(self.workload_labels), dict(self.claims))

    def policies_in(self, namespace: str) -> list[spec.Policy]:
        """The valid policies of a namespace, for plan.rivals (who else targets a Deployment). Called
        from reconciles' threads: it iterates over a copy."""
        return list((self.parsed_in.get(namespace) or {}).values())

    def rivals_of(self, namespace: str, workloads: Iterable[Mapping[str, Any]]) -> list[spec.Policy]:
        """The valid policies of a namespace that can target one of `workloads` (plan.selects decides): those
        whose workloadRef (or template) names one of them, and every selector policy there. What plan.rivals
        needs of policies_in, at the cost of the few that can matter: a reconcile in a namespace of N policies
        must not read all N (a burst of N would cost N²). Called from reconciles' threads: only copies are
        iterated."""
        keys = set(self.selectors_in.get(namespace, ()))
        for w in workloads:
            kind = str(w.get("kind") or registry.DEPLOYMENT.kind)
            name = (w.get("metadata") or {}).get("name")
            if isinstance(name, str):
                keys |= self.by_ref.get((namespace, kind, name), set())
        parsed = self.parsed
        return [p for p in (parsed.get(k) for k in sorted(keys)) if p is not None]

    def _set_selector(self, key: Key, selector: spec.Selector | None) -> None:
        inner = self.selectors_in.get(key[0])
        if selector is None:
            self.selectors.pop(key, None)
            if inner is not None:
                inner.discard(key)
                if not inner:
                    del self.selectors_in[key[0]]
            return
        self.selectors[key] = selector
        self.selectors_in.setdefault(key[0], set()).add(key)

    def namespace_changes(self, namespace: str) -> int:
        """How many times a policy copy of the namespace was learnt or dropped (a token that moves on any change)."""
        return self.changes_in.get(namespace, 0)

    def _parsed(self, key: Key, pol: spec.Policy | None) -> None:
        ns = key[0]
        self.changes_in[ns] = self.changes_in.get(ns, 0) + 1
        if pol is None:
            self.parsed.pop(key, None)
            inner = self.parsed_in.get(ns)
            if inner is not None:
                inner.pop(key, None)
                if not inner:
                    del self.parsed_in[ns]
            return
        self.parsed[key] = pol
        self.parsed_in.setdefault(ns, {})[key] = pol

    def _learn(self, key: Key, obj: Mapping[str, Any]) -> None:
        """Keep `obj` as the policy's newest copy, and what its spec names."""
        self.policies[key] = obj
        try:
            pol = spec.parse_policy(obj)
        except spec.SpecError:
            self._parsed(key, None)
            self.set_deps(key, set())
            self._rescope(key)
            return
        self._parsed(key, pol)
        self.set_deps(key, watched_objects(pol, key[0]))
        self._set_selector(key, pol.target if isinstance(pol.target, spec.Selector) else None)
        # The one workload a workloadRef (or template) names wakes the policy from the moment its spec
        # is known, not only once a reconcile learnt it: created while the first reconcile runs (one
        # kubectl apply, policy first), its event would otherwise wake nobody.
        self.set_refs(key, target_ref(pol))
        self._rescope(key)

    # ------------------------------------------------------------------ events

    def policy_seen(self, key: Key, obj: Mapping[str, Any]) -> Change:
        """A policy's watch delivered `obj` (plain)."""
        prev = self.policies.get(key)
        if fresher(prev, obj):
            # A lagging watch (after an API server restart, say) delivers a copy older than the one
            # this operator's own status write returned: keep the newer one, so that a reconcile never
            # compares its status with one it has already replaced (a lost update until the resync).
            return Change(frozenset())
        self._learn(key, obj)
        graph_changed = prev is None or prev.get("spec") != obj.get("spec")
        return Change(frozenset([key]) if respecified(obj, prev) else frozenset(), graph_changed)

    def policy_deleted(self, key: Key) -> Claim:
        return self.forget(key)

    def event(self, kind: str, ns: str, name: str, body: Mapping[str, Any], deleted: bool) -> Change:
        """An event of a WATCHED_KINDS object (a policy's: policy_seen)."""
        if kind in registry.WORKLOAD_KINDS:
            return self.workload_seen(kind, ns, name, body, deleted)
        if kind == registry.SERVICE.kind:
            return self.service_seen(ns, name, body, deleted)
        if kind == registry.ENDPOINT_SLICE.kind:
            return Change(self.endpointslice_seen(ns, body))
        if kind == registry.POD.kind:
            return Change(self.pod_seen(ns, body, deleted))
        return Change(self.object_seen(kind, ns, name))

    def deployment_seen(self, ns: str, name: str, body: Mapping[str, Any], deleted: bool) -> Change:
        return self.workload_seen(registry.DEPLOYMENT.kind, ns, name, body, deleted)

    def workload_seen(self, kind: str, ns: str, name: str, body: Mapping[str, Any], deleted: bool) -> Change:
        """A Deployment, StatefulSet, DaemonSet, CronJob or Job: the policies targeting it or naming it
        in a precondition; the graph changed when its labels or its pod template's did."""
        labels = dict(_meta(body).get("labels") or {})
        if not registry.WORKLOAD_KINDS[kind].template_mutable:
            # Jobs come and go by the thousand (CronJobs): they wake whom they concern, and are not
            # kept for the cycle graph (a Job is run once; nothing waits on a Job's pods by Service);
            # only which CronJob controls one is kept, so that its pods wake the CronJob's policies
            owner = next((str(o.get("name")) for o in _meta(body).get("ownerReferences") or []
                          if isinstance(o, Mapping) and o.get("kind") == registry.CRON_JOB.kind
                          and o.get("controller")), None)
            if owner and not deleted:
                self.cron_jobs[(ns, name)] = owner
            else:
                self.cron_jobs.pop((ns, name), None)
            return Change(frozenset(self.for_workload(kind, ns, name, labels)))
        tmpl = _template_labels(body, kind)
        claim = claim_of(body) if not deleted else None
        changed = deleted
        fp = fingerprint(body)
        news = deleted or self.fingerprints.get((ns, kind, name)) != fp
        if deleted:
            self.fingerprints.pop((ns, kind, name), None)
            self.bodies.pop((ns, kind, name), None)
        else:
            self.fingerprints[(ns, kind, name)] = fp
            self.remember(kind, body)
        if deleted:
            self.workload_labels.pop((ns, kind, name), None)
            self.deployment_labels.pop((ns, kind, name), None)
            self.claims.pop((ns, kind, name), None)
        elif self.workload_labels.get((ns, kind, name)) != tmpl or \
                self.deployment_labels.get((ns, kind, name)) != labels or self.claims.get((ns, kind, name)) != claim:
            self.workload_labels[(ns, kind, name)] = tmpl
            self.deployment_labels[(ns, kind, name)] = labels
            if claim:
                self.claims[(ns, kind, name)] = claim
            else:
                self.claims.pop((ns, kind, name), None)
            changed = True
        naming = frozenset(self._naming(kind, ns, name))  # a `workload` precondition reads its status: always news
        if not news:
            return Change(naming, changed)  # only its status changed: no news to the policies gating it
        gating = frozenset(self.for_workload(kind, ns, name, labels)) - naming
        if deleted:
            return Change(naming | gating, changed)
        return Change(naming | gating, changed, echo=gating, cause=((kind, name), fp))

    def service_seen(self, ns: str, name: str, body: Mapping[str, Any], deleted: bool) -> Change:
        selector = dict((body.get("spec") or {}).get("selector") or {})
        changed = deleted
        if deleted:
            self.services.pop((ns, name), None)
        elif self.services.get((ns, name)) != selector:
            self.services[(ns, name)] = selector
            changed = True
        return Change(frozenset(self._naming(registry.SERVICE.kind, ns, name)), changed)

    def pod_seen(self, ns: str, body: Mapping[str, Any], deleted: bool = False) -> frozenset[Key]:
        self.pod_events[ns] = self.pod_events.get(ns, 0) + 1
        owner = workload_of_pod(body)
        if owner is None:
            return frozenset()
        pods = self.pods_of.setdefault((ns, *owner), set())
        pname = str(_meta(body).get("name"))
        if deleted:
            pods.discard(pname)
            if not pods:
                del self.pods_of[(ns, *owner)]
        else:
            pods.add(pname)
        keys = set(self.by_target.get((ns, *owner), set()))
        cron = (self.cron_jobs.get((ns, owner[1])) or cron_job_of(owner[1])) if owner[0] == registry.JOB.kind else None
        if cron is not None:  # a Job a CronJob made: its pods count for the CronJob's policies
            keys |= self.by_target.get((ns, registry.CRON_JOB.kind, cron), set())
        return frozenset(keys)

    def endpointslice_seen(self, ns: str, body: Mapping[str, Any]) -> frozenset[Key]:
        svc = (_meta(body).get("labels") or {}).get(registry.SERVICE_NAME_LABEL)
        return frozenset(self._naming(registry.SERVICE.kind, ns, svc)) if svc else frozenset()

    def object_seen(self, kind: str, ns: str, name: str) -> frozenset[Key]:
        """A Job, Secret, ConfigMap (any other kind a precondition names): the policies naming it."""
        return frozenset(self._naming(kind, ns, name))

    # ------------------------------------------------------------------ after a reconcile

    def to_reconcile(self, key: Key, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The copy of the policy a worker reconciles: the newest known, else Kopf's `body`."""
        self.started[key] = self.pod_events.get(key[0], 0)
        return self.policies.get(key) or plain(body)

    def reconciled(self, key: Key, reconciled: Mapping[str, Any], outcome: Outcome) -> Reconciled:
        """A reconcile of `reconciled` ended with `outcome`: keep the copy its status write returned
        if it is the newest, learn its targets, claim its custom watches (idempotent: the reconcile
        claimed them already, unless it did not get that far: an invalid spec names nothing).

        A policy forgotten (deleted) while it reconciled is not learnt again; its claims are given up."""
        if not self.alive(key):
            return Reconciled(False, False, self.custom.claim(key, ()))
        again = graph_changed = False
        written = outcome.written
        kept = self.policies.get(key) or reconciled
        if written is not None and fresher(written, kept):
            # its spec changed while it ran: the event that said so is older than this copy (ignored)
            again = respecified(written, reconciled)
            graph_changed = written.get("spec") != kept.get("spec")
            self._learn(key, slim(written))
        learnt = set(outcome.targets) - self.targets.get(key, set())
        if learnt and self.pod_events.get(key[0], 0) != self.started.get(key, 0):
            again = True  # pods of a target it did not have changed while it ran: count them again
        self.set_targets(key, {*outcome.targets, *outcome.wanted})
        self.seen[key] = dict(outcome.seen)
        return Reconciled(again, graph_changed, self.custom.claim(key, outcome.custom))


class Reconciled(NamedTuple):
    again: bool  # reconcile again: the copy kept now has a spec the reconcile did not see
    graph_changed: bool
    claim: Claim


# ---------------------------------------------------------------------- the cycles


@dataclass
class CycleSchedule:
    """When the cycles of the graph of all policies are recomputed: after a change of the graph,
    at most one recompute at a time (a burst of changes costs one, after the debounce); a reconcile
    never waits for it, it reads the last computed message."""

    version: int = 0  # changes of the graph seen
    computed_at: int = -1  # the version the cycles below were computed from
    running: bool = False
    cycles: dict[Key, str] = field(default_factory=dict)

    def changed(self) -> None:
        self.version += 1

    def start(self) -> bool:
        """Should a recompute start now (then it is running until stopped())?"""
        if self.running or self.computed_at == self.version:
            return False
        self.running = True
        return True

    def stale(self) -> bool:
        """Has the graph changed since the cycles were computed (the recompute goes on)?"""
        return self.computed_at != self.version

    def finish(self, version: int, cycles: dict[Key, str]) -> set[Key]:
        """The cycles as computed from `version`; the policies whose message changed (to wake)."""
        changed = {k for k in set(cycles) | set(self.cycles) if cycles.get(k) != self.cycles.get(k)}
        self.cycles, self.computed_at = cycles, version
        return changed

    def stopped(self) -> None:
        self.running = False

    def cycle_for(self, key: Key) -> str | None:
        return self.cycles.get(key)


# ---------------------------------------------------------------------- one policy's worker


@dataclass
class WorkerState:
    """When one policy's worker reconciles, once woken (by its dirty flag or the resync period).

    Leading edge: an idle policy reconciles at once; one that reconciled less than RECENT_SECONDS
    ago waits `coalesce_seconds`, so that a burst of events (pods, endpoints) becomes one reconcile.
    After a failure, nothing reconciles it before the backoff is over, whatever wakes it (no hot
    loop): FIRST_BACKOFF_SECONDS, doubled after each further failure, at most `max_backoff_seconds`."""

    coalesce_seconds: float
    max_backoff_seconds: float
    failures: int = 0  # in a row
    last_done: float = -math.inf  # when the previous reconcile ended
    not_before: float = -math.inf  # after a failure: the end of the backoff

    def next_pause(self, now: float) -> float:
        """How long to wait before reconciling (0: at once)."""
        coalesce = self.coalesce_seconds if now - self.last_done < RECENT_SECONDS else 0.0
        return max(self.not_before - now, coalesce, 0.0)

    def on_failure(self, now: float) -> float:
        """The reconcile failed at `now`: the delay before the next one (a wake-up is due then)."""
        self.failures += 1
        delay = min(self.max_backoff_seconds, FIRST_BACKOFF_SECONDS * 2.0 ** min(self.failures - 1, 30))
        self.last_done, self.not_before = now, now + delay
        return delay

    def on_success(self, now: float) -> None:
        self.failures = 0
        self.last_done = now
