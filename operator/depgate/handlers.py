"""Kopf handlers: wire watch events to the reconcile in controller.py. Nothing is decided here.

One worker (a Kopf daemon) per DependencyPolicy waits for its "dirty" flag and reconciles; every
watched object that a policy names (its target Deployments and their pods, Services and their
EndpointSlices, Jobs, Secrets, ConfigMaps, workloads, custom resources) sets the flag of the
policies that name it. Bursts coalesce into one reconcile; failures back off; a slow resync
catches anything a watch missed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from depgate import GROUP, PLURAL, VERSION, echo, graph, metrics, spec
from depgate.controller import Dep, Outcome, Reconciler, ReleaseFailed, deployment_of_pod, fresher
from depgate.kube import Kube, NamespaceTerminating
from depgate.render import ANNOTATION, RenderConfig

log = logging.getLogger("depgate")

Key = tuple[str, str]  # (namespace, policy name)


@dataclass
class Options:
    waiter_image: str = RenderConfig().waiter_image
    kubeconfig: str | None = None
    coalesce_seconds: float = 0.05
    cycle_debounce_seconds: float = 0.25
    resync_seconds: float = 300.0
    max_backoff_seconds: float = 60.0
    # A watch that delivers nothing, not even the API server's bookmark (sent about once a minute
    # to every watch that asks for them), for this long is closed and started again from the last
    # resourceVersion it saw: a connection that went silent without closing (a black-holed route,
    # a stuck proxy) costs at most this long, never the server timeout.
    watch_inactivity_seconds: float = 70.0
    # A status write the policies watch has not delivered back within this long means the watch
    # no longer hears the API server although it is not silent (bookmarks still arrive): said at
    # WARNING, counted, and the liveness probe fails until it hears again (the kubelet restarts us).
    echo_seconds: float = 120.0
    request_timeout_seconds: float = 30.0
    max_custom_watches: int = 64  # shared custom-resource watches, one per (apiVersion, kind, namespace)
    max_custom_kinds_per_policy: int = 8  # distinct custom-resource kinds one policy may have watched


OPTIONS = Options()


CustomKey = tuple[str, str, str, str]  # (apiVersion, kind, namespace, name): what a `resource` precondition names
StreamKey = tuple[str, str, str]  # (apiVersion, kind, namespace): one shared watch


@dataclass
class _Stream:
    wants: dict[Key, set[str]] = field(default_factory=dict)  # policy -> the names it waits on
    by_name: dict[str, set[Key]] = field(default_factory=dict)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


class CustomWatches:
    """The custom resources (`resource` preconditions) being watched: one shared watch per
    (apiVersion, kind, namespace), whatever number of objects and policies name it, run as a task on
    the event loop (Kube.watch_kind); an event wakes the policies that name the object it carries.

    At most OPTIONS.max_custom_watches watches per operator and OPTIONS.max_custom_kinds_per_policy
    kinds per policy: claim() says which of a policy's kinds are over a cap (the reconcile reports
    them TooManyWatches); when a watch stops, the policies that were refused one are woken to claim again.
    claim() is called from reconciles (threads) and from the loop: the state is behind a lock, and
    the tasks are started and cancelled on the loop only (sync())."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams: dict[StreamKey, _Stream] = {}
        self._refused: set[Key] = set()  # policies with a kind over a cap, woken when a watch stops
        self._tasks: dict[StreamKey, asyncio.Task[None]] = {}

    def claim(self, key: Key, wanted: Iterable[CustomKey]) -> dict[StreamKey, str]:
        """Make `wanted` (in declared order) what policy `key` is woken by; return each of its
        (apiVersion, kind, namespace) that is not watched, with the message saying which cap."""
        names: dict[StreamKey, set[str]] = {}
        for av, kind, ns, name in wanted:
            names.setdefault((av, kind, ns), set()).add(name)
        refused: dict[StreamKey, str] = {}
        per_policy, per_operator = OPTIONS.max_custom_kinds_per_policy, OPTIONS.max_custom_watches
        with self._lock:
            admitted: dict[StreamKey, set[str]] = {}
            for i, (skey, ns_names) in enumerate(names.items()):
                av, kind, ns = skey
                if i >= per_policy:
                    refused[skey] = (
                        f"a policy has at most {per_policy} kinds of custom resource watched "
                        f"(--max-custom-kinds-per-policy={per_policy}); {kind} ({av}) is this policy's "
                        f"{_ordinal(i + 1)}, so depgate does not watch it")
                elif skey in self.streams or len(self.streams) < per_operator:
                    admitted[skey] = ns_names
                    self.streams.setdefault(skey, _Stream())
                else:
                    refused[skey] = (
                        f"depgate watches at most {per_operator} kinds of custom resource per namespace at once "
                        f"(--max-custom-watches={per_operator}), all taken: {kind} ({av}) in {ns} is not "
                        "watched; judged on each reconcile and resync, and watched as soon as a watch frees up")
            freed = False
            for skey, stream in list(self.streams.items()):
                old = stream.wants.pop(key, set())
                for n in old:
                    stream.by_name.get(n, set()).discard(key)
                    if not stream.by_name.get(n, True):
                        del stream.by_name[n]
                new = admitted.get(skey)
                if new:
                    stream.wants[key] = set(new)
                    for n in new:
                        stream.by_name.setdefault(n, set()).add(key)
                if not stream.wants:
                    del self.streams[skey]
                    freed = True
            if refused:
                self._refused.add(key)
            else:
                self._refused.discard(key)
            waiting = self._refused - {key} if freed else set()
            metrics.custom_watches.set(len(self.streams))
        if waiting:
            W.mark_threadsafe(waiting)
        return refused

    def wants(self, skey: StreamKey, name: str) -> bool:
        with self._lock:
            s = self.streams.get(skey)
            return s is not None and name in s.by_name

    def wake(self, skey: StreamKey, names: set[str] | None) -> None:
        """On the loop: the policies that name one of `names` (None: every policy on the watch)."""
        with self._lock:
            s = self.streams.get(skey)
            if s is None:
                return
            keys = set(s.wants) if names is None else {k for n in names for k in s.by_name.get(n, ())}
        W.mark(keys)

    def sync(self) -> None:
        """On the loop: a task for each claimed watch, none for the others."""
        with self._lock:
            want = set(self.streams)
        for skey in set(self._tasks) - want:
            self._tasks.pop(skey).cancel()
        for skey in want - set(self._tasks):
            av, kind, ns = skey
            self._tasks[skey] = asyncio.get_running_loop().create_task(reconciler().kube.watch_kind(
                av, kind, ns, wants=functools.partial(self.wants, skey), on_change=functools.partial(self.wake, skey),
                on_restart=_count_restart, inactivity=OPTIONS.watch_inactivity_seconds),
                name=f"watch-{kind}-{ns}")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if _reconciler is not None:
            await _reconciler.kube.close_watches()


def _count_restart(reason: str) -> None:
    metrics.watch_restarts.labels(reason=reason).inc()


@dataclass
class Wiring:
    """Who wakes whom. Plain dicts, touched only from the event loop thread."""

    loop: asyncio.AbstractEventLoop | None = None
    dirty: dict[Key, asyncio.Event] = field(default_factory=dict)
    deps: dict[Key, set[Dep]] = field(default_factory=dict)
    by_dep: dict[Dep, set[Key]] = field(default_factory=lambda: defaultdict(set))
    targets: dict[Key, set[str]] = field(default_factory=dict)
    by_target: dict[tuple[str, str], set[Key]] = field(default_factory=lambda: defaultdict(set))
    selectors: dict[Key, spec.Selector] = field(default_factory=dict)
    policies: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    services: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    workload_labels: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    custom: CustomWatches = field(default_factory=lambda: CustomWatches())
    deployment_labels: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    graph_version: int = 0
    _cycles_at: int = -1
    _cycles: dict[Key, str] = field(default_factory=dict)
    _cycles_task: asyncio.Task[None] | None = None  # the recompute under way, if any (also keeps it alive)

    def event(self, key: Key) -> asyncio.Event:
        if key not in self.dirty:
            self.dirty[key] = asyncio.Event()
        return self.dirty[key]

    def mark(self, keys: Iterable[Key]) -> None:
        for k in keys:
            if k in self.dirty:
                self.dirty[k].set()

    def mark_threadsafe(self, keys: Iterable[Key]) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.mark, list(keys))

    def set_deps(self, key: Key, deps: set[Dep]) -> None:
        for d in self.deps.get(key, set()) - deps:
            self.by_dep[d].discard(key)
        for d in deps:
            self.by_dep[d].add(key)
        self.deps[key] = deps

    def set_targets(self, key: Key, targets: Iterable[str]) -> None:
        ns = key[0]
        new = set(targets)
        for t in self.targets.get(key, set()) - new:
            self.by_target[(ns, t)].discard(key)
        for t in new:
            self.by_target[(ns, t)].add(key)
        self.targets[key] = new

    def forget(self, key: Key) -> None:
        self.set_deps(key, set())
        self.set_targets(key, ())
        self.selectors.pop(key, None)
        self.policies.pop(key, None)
        self.dirty.pop(key, None)
        self.custom.claim(key, ())
        self.custom.sync()

    def for_deployment(self, ns: str, name: str, labels: Mapping[str, str] | None) -> set[Key]:
        keys = set(self.by_target.get((ns, name), set())) | set(self.by_dep.get(("Deployment", ns, name), set()))
        for k, sel in self.selectors.items():
            if k[0] == ns and sel.matches(labels or {}):
                keys.add(k)
        return keys

    def changed_graph(self) -> None:
        """Called from the event loop whenever a policy, Deployment, workload or Service changed."""
        self.graph_version += 1
        self._schedule_cycles()

    def _schedule_cycles(self) -> None:
        running = self._cycles_task is not None and not self._cycles_task.done()
        if self._cycles_at != self.graph_version and not running:
            self._cycles_task = asyncio.get_running_loop().create_task(self._recompute_cycles())

    def cycle_for(self, key: Key) -> str | None:
        """The DependencyCycle message for a policy, as last computed from the graph of all policies.

        When the graph changed (changed_graph), a recompute is scheduled (at most one at a time, after
        OPTIONS.cycle_debounce_seconds so that a burst of changes costs one, in a thread: the graph of 1,000
        policies takes ~20 ms); the policies whose message changed are woken up then. A reconcile
        never waits for it: a burst of N new policies must not cost N graph builds."""
        self._schedule_cycles()
        return self._cycles.get(key)

    async def _recompute_cycles(self) -> None:
        try:
            while self._cycles_at != self.graph_version:
                await asyncio.sleep(OPTIONS.cycle_debounce_seconds)
                version = self.graph_version
                new = await asyncio.to_thread(
                    _cycles, list(self.policies.values()), dict(self.deployment_labels), dict(self.services),
                    dict(self.workload_labels))
                changed = {k for k in set(new) | set(self._cycles) if new.get(k) != self._cycles.get(k)}
                self._cycles, self._cycles_at = new, version
                self.mark(changed)
        except Exception:  # the next change (or reconcile) tries again; a reconcile never fails on it
            log.exception("computing the dependency graph's cycles failed")


def _cycles(policies: list[Mapping[str, Any]], deployment_labels: Mapping[tuple[str, str], Mapping[str, str]],
            services: Mapping[tuple[str, str], Mapping[str, str]],
            workload_labels: Mapping[tuple[str, str, str], Mapping[str, str]]) -> dict[Key, str]:
    nodes = [graph.policy_node(p, deployment_labels, set(services)) for p in policies]
    g = graph.build_graph(nodes, services, workload_labels)
    return graph.cycles_by_policy(g, graph.find_cycles(g))


W = Wiring()
_reconciler: Reconciler | None = None


def reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        kube = Kube.from_environment(OPTIONS.kubeconfig)

        def exists(ns: str, name: str) -> bool:
            return (ns, name) in W.policies or kube.get(f"{GROUP}/{VERSION}", "DependencyPolicy", ns, name) is not None

        _reconciler = Reconciler(kube, RenderConfig(waiter_image=OPTIONS.waiter_image), policy_exists=exists,
                                 claim_custom=W.custom.claim)
    return _reconciler


KOPF_DIFFBASE = "depgate.io/last-handled-configuration"  # written by depgate before _NoDiffBase


def _plain(body: Any) -> dict[str, Any]:
    """A policy as the worker keeps it: plain dicts, without what no reconcile reads (managedFields,
    Kopf's copy of the spec in an annotation), which is most of a policy's size in memory."""
    out: dict[str, Any] = json.loads(json.dumps(dict(body), default=dict))
    return _slim(out)


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata")
    if isinstance(md, dict):
        md.pop("managedFields", None)
        ann = md.get("annotations")
        if isinstance(ann, dict):
            ann.pop(KOPF_DIFFBASE, None)
    return obj


# ---------------------------------------------------------------------- settings


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "depgate.io/cleanup"
    settings.persistence.progress_storage = _TolerantProgress(prefix="depgate.io")
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.enabled = False  # our own Events say what happened; not Kopf's log lines
    settings.peering.standalone = True  # one replica, strategy Recreate (see manifests/)
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.inactivity_timeout = OPTIONS.watch_inactivity_seconds
    settings.watching.connect_timeout = 10
    # Kopf's own requests (finalizers, the diffbase annotation): bounded, so that a request on a
    # pooled connection that went silent fails and is retried instead of hanging for 5 minutes.
    settings.networking.request_timeout = OPTIONS.request_timeout_seconds
    settings.networking.connect_timeout = 10
    _watch_health.install()


class _NoDiffBase(kopf.DiffBaseStorage):
    """No diff base at all. Kopf keeps the last handled spec (for on.create/on.update handlers'
    diffs) in an annotation; depgate has no such handler (its on.delete handler needs no diff,
    the workers read the spec themselves), and that copy was a second write on every new policy and
    made a policy over the 256 KiB annotation limit impossible to delete (the finalizer's patch
    carried it). fetch() answers with the object's own essence: never a diff, never a write."""

    def fetch(self, *, body: Any) -> Any:
        return self.build(body=body)

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


class _TolerantProgress(kopf.AnnotationsProgressStorage):
    """Kopf's progress annotations (a retried on.delete handler's attempts) live in the policy's
    metadata, which the policy's author can write: a value that is not Kopf's JSON counts as no
    record (the handler starts over) instead of an exception in Kopf's processing of the object."""

    def fetch(self, *, key: Any, body: Any) -> Any:
        try:
            record = super().fetch(key=key, body=body)
        except (ValueError, TypeError, RecursionError):
            log.warning("ignoring an unreadable %s annotation on %s/%s", key,
                        (body.get("metadata") or {}).get("namespace"), (body.get("metadata") or {}).get("name"))
            return None
        return record if isinstance(record, dict) else None


class _WatchHealth(logging.Filter):
    """Kopf restarts a silent watch (settings.watching.inactivity_timeout) and a watch whose
    resourceVersion expired (410), and says so only in a debug line of its watching module. This
    filter counts both (depgate_watch_restarts_total{reason}) and says a silent one at WARNING;
    Kopf's other debug lines there pass only when the root logger wants debug (-v)."""

    def install(self) -> None:
        wlog = logging.getLogger("kopf._cogs.clients.watching")
        wlog.setLevel(logging.DEBUG)  # the records must exist for the filter to see them
        if self not in wlog.filters:
            wlog.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("Watch-stream for ") and msg.endswith(" is inactive, reconnecting."):
            what = msg[len("Watch-stream for "):-len(" is inactive, reconnecting.")]
            metrics.watch_restarts.labels(reason="silent").inc()
            log.warning("the watch of %s delivered nothing, not even a bookmark, for %.0fs: "
                        "restarted it from its last resourceVersion", what, OPTIONS.watch_inactivity_seconds)
            return False
        if msg.startswith("Restarting the watch-stream for "):
            metrics.watch_restarts.labels(reason="expired").inc()
        return record.levelno >= logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG)


_watch_health = _WatchHealth()


@kopf.on.startup()
async def remember_loop(**_: Any) -> None:
    W.loop = asyncio.get_running_loop()
    ECHO.bound = OPTIONS.echo_seconds
    W.loop.create_task(_echo_watchdog(), name="depgate echo watchdog")


ECHO = echo.Echoes()
_echo_state: dict[str, float | None] = {"stale_since": None}


async def _echo_watchdog() -> None:
    """Every few seconds: has the policies watch delivered back every status write depgate made?"""
    while True:
        await asyncio.sleep(min(5.0, OPTIONS.echo_seconds / 4))
        now = time.monotonic()
        stale = ECHO.stale(now)
        metrics.watch_stale.set(1 if stale else 0)
        if stale and _echo_state["stale_since"] is None:
            _echo_state["stale_since"] = now
            metrics.watch_stale_total.inc()
            (ns, name), rv, age = stale[0]
            log.warning("the policies watch has not delivered depgate's own status write of %s/%s "
                        "(resourceVersion %d) in %.0fs, nor %d other(s): it no longer hears the API server; "
                        "the liveness probe fails until it does", ns, name, rv, age, len(stale) - 1)
        elif not stale and _echo_state["stale_since"] is not None:
            _echo_state["stale_since"] = None
            log.warning("the policies watch hears the API server again")


@kopf.on.probe(id="policy_watch")
def policy_watch_probe(**_: Any) -> str:
    since = _echo_state["stale_since"]
    if since is not None:
        # Permanent: Kopf retries other errors inside the probe, and /healthz would hang instead of failing
        raise kopf.PermanentError(f"the policies watch has delivered none of depgate's own status writes for "
                                  f"{time.monotonic() - since + OPTIONS.echo_seconds:.0f}s")
    return "hears the API server"


# ---------------------------------------------------------------------- the policies


@kopf.on.event(GROUP, VERSION, PLURAL)
async def policy_event(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
    key = (namespace, name)
    if event.get("type") == "DELETED":
        W.forget(key)
        W.changed_graph()
        metrics.forget(key)
        ECHO.forget(key)
        return
    obj = _plain(body)
    ECHO.heard(key, obj)
    prev = W.policies.get(key)
    if fresher(prev, obj):
        # A lagging watch (after an API server restart, say) delivers a copy older than the one
        # this operator's own status write returned: keep the newer one, so that a reconcile never
        # compares its status with one it has already replaced (a lost update until the resync).
        return
    W.policies[key] = obj
    if prev is None or (prev.get("spec") != obj.get("spec")):
        W.changed_graph()
    try:
        pol = spec.parse_policy(obj)
        W.set_deps(key, Reconciler._deps(pol, namespace))
        if isinstance(pol.target, spec.Selector):
            W.selectors[key] = pol.target
        else:
            W.selectors.pop(key, None)
    except spec.SpecError:
        W.set_deps(key, set())
    md, pmd = obj.get("metadata") or {}, (prev or {}).get("metadata") or {}
    if prev is None or md.get("generation") != pmd.get("generation") or md.get("deletionTimestamp"):
        W.mark([key])


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10)
async def policy_worker(stopped: kopf.DaemonStopped, body: Any, namespace: str, name: str, **_: Any) -> None:
    key = (namespace, name)
    dirty = W.event(key)
    dirty.set()
    failures = 0
    last_done = -1e9  # when the previous reconcile finished (monotonic)
    not_before = 0.0  # after a failure, no reconcile before this, whatever wakes us (no hot loop)
    while not stopped:
        # wake on a dirty flag, on the operator stopping, or after the resync period (whichever first)
        woken = asyncio.ensure_future(dirty.wait())
        stopping = asyncio.ensure_future(stopped.wait())
        await asyncio.wait({woken, stopping}, timeout=OPTIONS.resync_seconds,
                           return_when=asyncio.FIRST_COMPLETED)
        for fut in (woken, stopping):
            fut.cancel()
        if stopped:
            break
        # Leading edge: an idle policy reconciles at once; one that just reconciled waits a moment so
        # that a burst of events (pods, endpoints) becomes one reconcile. After a failure, the backoff.
        pause = max(not_before - time.monotonic(),
                    OPTIONS.coalesce_seconds if time.monotonic() - last_done < 1.0 else 0.0)
        if pause > 0:
            await asyncio.sleep(pause)
        dirty.clear()
        obj = W.policies.get(key) or _plain(body)
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            break
        started = time.monotonic()
        try:
            outcome: Outcome = await asyncio.to_thread(reconciler().reconcile, obj, cycle=W.cycle_for(key))
        except NamespaceTerminating:
            continue  # the namespace is being deleted; its deletion removes this policy too
        except Exception as e:
            failures += 1
            delay = min(OPTIONS.max_backoff_seconds, 0.5 * 2 ** min(failures, 10))
            log.warning("reconcile of %s/%s failed (%s: %s); retrying in %.1fs", namespace, name,
                        type(e).__name__, e, delay)
            metrics.reconciles.labels(result="error").inc()
            not_before = last_done = time.monotonic()
            not_before += delay
            _later(key, delay)
            continue
        failures = 0
        last_done = time.monotonic()
        metrics.observe(key, outcome, time.monotonic() - started)
        if outcome.written is not None:
            ECHO.wrote(key, outcome.written, time.monotonic())
        if outcome.written is not None and fresher(outcome.written, W.policies.get(key) or obj):
            W.policies[key] = _slim(outcome.written)
            wmd, omd = outcome.written.get("metadata") or {}, obj.get("metadata") or {}
            if wmd.get("generation") != omd.get("generation") or wmd.get("deletionTimestamp"):
                dirty.set()  # the spec changed while we reconciled: its own event is now "stale"
        W.set_targets(key, set(outcome.targets) | outcome.wanted)
        _ensure_custom_watches(key, outcome)
        if outcome.requeue_after is not None:
            _later(key, outcome.requeue_after)


def _later(key: Key, delay: float) -> None:
    if W.loop is not None:
        W.loop.call_later(delay, W.mark, [key])


def _ensure_custom_watches(key: Key, outcome: Outcome) -> None:
    """The reconcile claimed its custom watches already (and reported the refused ones); claim again,
    idempotently, for a reconcile that did not get that far (an invalid spec names nothing) and for a
    policy forgotten while it reconciled, then start and stop the watches' tasks."""
    W.custom.claim(key, outcome.custom if key in W.dirty else ())
    W.custom.sync()


@kopf.on.cleanup()
async def stop_custom_watches(**_: Any) -> None:
    await W.custom.stop()


@kopf.on.delete(GROUP, VERSION, PLURAL)
def policy_cleanup(body: Any, namespace: str, name: str, **_: Any) -> None:
    """Take every init container this policy added back out of the Deployments it gated."""
    r = reconciler()
    names = set((body.get("status") or {}).get("targets") or [])
    for dep in r.kube.items("apps/v1", "Deployment", namespace):
        if ((dep["metadata"].get("annotations") or {}).get(ANNOTATION)) == name:
            names.add(dep["metadata"]["name"])
    for dname in sorted(names):
        try:
            if r.release(namespace, name, dname):
                metrics.writes.inc()
                log.info("released deployment %s/%s from policy %s", namespace, dname, name)
        except ReleaseFailed as e:
            # keep the finalizer: Kopf calls this handler again shortly
            raise kopf.TemporaryError(str(e), delay=1) from e


# ---------------------------------------------------------------------- what policies depend on


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
    labels = dict(body.get("metadata", {}).get("labels") or {})
    tmpl = dict(((body.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {})
    if event.get("type") == "DELETED":
        W.workload_labels.pop((namespace, "Deployment", name), None)
        W.deployment_labels.pop((namespace, name), None)
        W.changed_graph()
    elif W.workload_labels.get((namespace, "Deployment", name)) != tmpl or \
            W.deployment_labels.get((namespace, name)) != labels:
        W.workload_labels[(namespace, "Deployment", name)] = tmpl
        W.deployment_labels[(namespace, name)] = labels
        W.changed_graph()
    W.mark(W.for_deployment(namespace, name, labels))


def _workload_handler(plural: str, kind: str) -> None:
    @kopf.on.event("apps", "v1", plural, id=f"{plural}_event")
    async def handler(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
        tmpl = dict(((body.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {})
        if event.get("type") == "DELETED":
            W.workload_labels.pop((namespace, kind, name), None)
            W.changed_graph()
        elif W.workload_labels.get((namespace, kind, name)) != tmpl:
            W.workload_labels[(namespace, kind, name)] = tmpl
            W.changed_graph()
        W.mark(W.by_dep.get((kind, namespace, name), set()))


_workload_handler("statefulsets", "StatefulSet")
_workload_handler("daemonsets", "DaemonSet")


@kopf.on.event("", "v1", "pods")
async def pod_event(body: Any, namespace: str, **_: Any) -> None:
    dname = deployment_of_pod(body)
    if dname is not None:
        W.mark(W.by_target.get((namespace, dname), set()))


@kopf.on.event("", "v1", "services")
async def service_event(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
    selector = dict((body.get("spec") or {}).get("selector") or {})
    if event.get("type") == "DELETED":
        W.services.pop((namespace, name), None)
        W.changed_graph()
    elif W.services.get((namespace, name)) != selector:
        W.services[(namespace, name)] = selector
        W.changed_graph()
    W.mark(W.by_dep.get(("Service", namespace, name), set()))


@kopf.on.event("discovery.k8s.io", "v1", "endpointslices")
async def endpointslice_event(body: Any, namespace: str, **_: Any) -> None:
    svc = (body.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name")
    if svc:
        W.mark(W.by_dep.get(("Service", namespace, svc), set()))


def _simple_handler(group: str, plural: str, kind: str) -> None:
    @kopf.on.event(group, "v1", plural, id=f"{plural}_event")
    async def handler(namespace: str, name: str, **_: Any) -> None:
        W.mark(W.by_dep.get((kind, namespace, name), set()))


_simple_handler("batch", "jobs", "Job")
_simple_handler("", "secrets", "Secret")
_simple_handler("", "configmaps", "ConfigMap")
