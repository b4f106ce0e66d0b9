"""Kopf handlers: wire watch events to depgate.wiring and the reconcile in controller.py.

Every decision is depgate.wiring's (which policies an event wakes, when a worker reconciles, which
custom-resource watches run, when the cycles are recomputed) or depgate.echo's (is the policies
watch deaf); this module registers Kopf's handlers, feeds them the events and does what the
answers say: wake a worker, sleep, start or cancel a task, log, count.

One worker (a Kopf daemon) per DependencyPolicy waits for its dirty flag and reconciles. install()
(depgate.runner, before kopf.run) builds the one Operator every handler here uses, from the Settings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf

from depgate import admission, authority, gates, kubeconfig, lease, metrics, plan, registry, spec, tls, webhook
from depgate.constants import AUTHOR_SIGNATURE_ANNOTATION, FINALIZER, GROUP, WEBHOOK_SECRET
from depgate.controller import Outcome, Reconciler
from depgate.echo import Echoes
from depgate.election import Election, identity
from depgate.kube import (
    CONNECT_TIMEOUT,
    WATCH_SERVER_TIMEOUT,
    Changed,
    Kube,
    NamespaceTerminating,
    NotLeader,
    Rejected,
)
from depgate.plan import CustomKey
from depgate.render import RenderConfig
from depgate.settings import Settings
from depgate.webhook import Gate
from depgate.wiring import (
    Change,
    Claim,
    CustomClaims,
    CycleSchedule,
    Key,
    Stream,
    StreamKey,
    Wiring,
    WorkerState,
    cycles_of,
    deleting,
    kopf_watch_restart,
    plain,
    protected,
    to_release,
)

log = logging.getLogger("depgate")

KOPF_FINALIZER = f"{GROUP}/kopf"  # Kopf's own name (settings.persistence.finalizer); nothing makes it add it

POLICIES = registry.DEPENDENCY_POLICY

WATCH_CLIENT_MARGIN_SECONDS = 30  # Kopf's client gives up on a watch request this long after the server should end it
MAX_REVIEW_BYTES = 8 * 1024 * 1024  # an AdmissionReview: the old and the new object of a request of up to 3 MB
MAX_WORKERS = 8  # Kopf's threads for the synchronous handlers (login, cleanup, probe)


class Operator:
    """What one operator process holds: its settings, the wiring, the watchdog's echoes, the
    API client, and the tasks on the event loop (the cycles' recompute, the custom watches)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wiring = Wiring(CustomClaims(settings.max_custom_watches, settings.max_custom_kinds_per_policy))
        if settings.namespaces:  # -n: the pods at the gate only there (a namespaced install may list nothing else)
            self.wiring.gated_in = tuple(dict.fromkeys(settings.namespaces))
        self.cycles = CycleSchedule()
        self.echo = Echoes(bound=settings.echo_seconds)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._reconciler: Reconciler | None = None
        self._cycles_task: asyncio.Task[None] | None = None  # keeps the recompute under way alive
        self._watch_tasks: dict[StreamKey, asyncio.Task[None]] = {}
        self._streams: dict[Stream, asyncio.Task[None]] = {}  # the built-in kinds' watches (rescope)
        self._scoped = -1  # the wiring's scope_version the streams follow
        self._rescope_due = False
        self.authors: dict[Key, str | None] = {}  # each policy's author signature, as last seen
        self._trusted_in: dict[str, tuple[int, Gate, tuple[Any, ...]]] = {}  # namespace_policies' answers
        self.gate: Gate | None = None  # the author's rights; set up at startup (start_admission)
        self.gate_problem = "depgate's admission webhook has not started yet"
        self.pod_gates = PodGates(self)  # depgate.gates: the pods at depgate's scheduling gate
        self.admitted = admission.Pending()  # policies just admitted, until the watch delivers them
        self.workers: dict[Key, asyncio.Task[None]] = {}  # the leader's: one per policy of its shard
        self.election: Election | None = None  # None: --no-leader-election (this process writes at once)
        self.register_webhook: Callable[[], Awaitable[None]] | None = None  # set once the webhook listens
        self._infra: Kube | None = None

    # ------------------------------------------------------------------ leadership (depgate.lease)

    def leading(self) -> bool:
        return self.election is None or self.election.leading

    def registers_webhooks(self) -> bool:
        """Only the default shard's leader points the webhook configurations at itself: the shards' leaders
        would take them from one another (every replica of every shard answers the same from memory)."""
        return self.leading() and self.settings.shard == ""

    def mine(self, obj: Mapping[str, Any]) -> bool:
        """Is this policy of this process's shard (--shard; the default shard: no shard label)?"""
        return lease.shard_of(obj) == self.settings.shard

    def infra_kube(self) -> Kube:
        """A client without the leader's fence: the Lease's own requests, the webhook Secret at start."""
        if self._infra is None:
            self._infra = Kube.from_environment(self.settings.kubeconfig, self.settings.request_timeout_seconds)
        return self._infra

    def ensure_worker(self, key: Key) -> None:
        """On the loop: the leader runs one worker per policy of its shard; a standby none."""
        obj = self.wiring.policies.get(key)
        if obj is None or not self.mine(obj):
            if key in self.workers and obj is not None:  # moved to another shard: its leader takes it over
                log.info("policy %s/%s moved to shard %r: left to that shard's leader", key[0], key[1],
                         lease.shard_of(obj))
                metrics.forget(key)
            self.stop_worker(key)
            return
        if key in self.workers or not self.leading() or self.loop is None:
            return
        task = self.loop.create_task(policy_worker(self, key), name=f"depgate worker {key[0]}/{key[1]}")
        self.workers[key] = task

        def done(t: asyncio.Task[None], k: Key = key) -> None:
            if self.workers.get(k) is t:
                del self.workers[k]
        task.add_done_callback(done)

    def stop_worker(self, key: Key) -> None:
        task = self.workers.pop(key, None)
        if task is not None:
            task.cancel()

    def elected(self) -> None:
        """On the loop: this process leads now. Every policy of its shard gets its worker (and reconciles at
        once: the previous leader's last moments are not trusted), held pods are decided again, and the
        webhook configurations point at this process."""
        shard = self.settings.shard
        metrics.leader.labels(shard=shard).set(1)
        metrics.leader_transitions.labels(shard=shard).inc()
        if self.election is not None:
            metrics.lease_transitions.labels(shard=shard).set(self.election.elector.transitions)
        for key in list(self.wiring.policies):
            self.ensure_worker(key)
        self.pod_gates.wake_all()
        if self.register_webhook is not None and self.loop is not None and self.registers_webhooks():
            self.loop.create_task(self.register_webhook(), name="depgate webhook registration")

    def lost(self) -> None:
        """On the loop: no longer the leader: every worker stops (the fence already refuses their writes)."""
        metrics.leader.labels(shard=self.settings.shard).set(0)
        for key in list(self.workers):
            self.stop_worker(key)

    def authorize(self, obj: Mapping[str, Any], policy: Any) -> str | None:
        """The reconcile's question: may this policy act now? (depgate.webhook.Gate)"""
        if self.gate is None:
            return f"depgate cannot check the author's rights: {self.gate_problem}"
        return self.gate.authorize(obj, policy)

    def namespace_policies(self, namespace: str, workloads: Sequence[Mapping[str, Any]] | None = None) -> list[Any]:
        """From a reconcile's thread: the valid policies of a namespace whose author verifies (plan.rivals:
        an untrusted workloadRef must not make a selector policy leave a Deployment ungated). Given the
        `workloads` in question, only those that can target one of them (Wiring.rivals_of): what a
        reconcile and a workload's admission ask, at a cost that does not grow with the namespace."""
        if self.settings.authority != "enforce":
            return self.wiring.policies_in(namespace) if workloads is None \
                else self.wiring.rivals_of(namespace, workloads)
        gate = self.gate
        if gate is None:
            return []
        if workloads is not None:
            return self._trusted(gate, namespace, self.wiring.rivals_of(namespace, workloads))
        # Remembered until a copy of the namespace changes (the pods' gate asks for a namespace's policies
        # on each pod it settles).
        changes = self.wiring.namespace_changes(namespace)  # read first: a change meanwhile moves it again
        memo = self._trusted_in.get(namespace)
        if memo is not None and memo[0] == changes and memo[1] is gate:
            return list(memo[2])
        trusted = self._trusted(gate, namespace, self.wiring.policies_in(namespace))
        if trusted:
            self._trusted_in[namespace] = (changes, gate, tuple(trusted))
        else:  # nothing kept for a namespace without trusted policies
            self._trusted_in.pop(namespace, None)
        return trusted

    def _trusted(self, gate: Gate, namespace: str, policies: Iterable[Any]) -> list[Any]:
        """Those of a namespace's `policies` whose recorded author verifies (their newest copy's signature)."""
        return [p for p in policies if gate.trusted(self.wiring.policies.get((namespace, p.name)) or {})]

    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            kube = Kube.from_environment(self.settings.kubeconfig, self.settings.request_timeout_seconds)

            def exists(ns: str, name: str) -> bool:
                return ((ns, name) in self.wiring.policies
                        or kube.get(POLICIES.api_version, POLICIES.kind, ns, name) is not None)

            self._reconciler = Reconciler(kube, RenderConfig(waiter_image=self.settings.waiter_image),
                                          policy_exists=exists, claim_custom=self.claim_custom,
                                          authorize=self.authorize if self.settings.authority == "enforce" else None,
                                          protected=protected(self.settings.protected_namespaces,
                                                              self.settings.resolved_operator_namespace()),
                                          namespace_policies=self.namespace_policies,
                                          has_no_pods=self.wiring.has_no_pods, cached=self.wiring.workload,
                                          wrote=self.wiring.remember,
                                          operator_namespace=self.settings.resolved_operator_namespace())
        return self._reconciler

    # ------------------------------------------------------------------ waking workers

    def apply(self, change: Change) -> None:
        """On the loop: do what an event means."""
        if change.graph_changed:
            self.graph_changed()
        if change.cause is None:
            self.wiring.mark(change.wake)
        else:
            self.wiring.mark(change.wake - change.echo)
            self.wiring.mark_echo(change.echo, change.cause)

    def wake_threadsafe(self, keys: Iterable[Key]) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.wiring.mark, list(keys))

    def later(self, key: Key, delay: float) -> None:
        if self.loop is not None:
            self.loop.call_later(delay, self.wiring.mark, [key])

    # ------------------------------------------------------------------ the cycles

    def graph_changed(self) -> None:
        self.cycles.changed()
        self._schedule_cycles()

    def cycle_for(self, key: Key) -> str | None:
        """The last computed DependencyCycle message; a recompute starts if one is due (a failed one
        is tried again here)."""
        self._schedule_cycles()
        return self.cycles.cycle_for(key)

    def _schedule_cycles(self) -> None:
        if self.cycles.start():
            self._cycles_task = asyncio.get_running_loop().create_task(self._recompute_cycles())

    async def _recompute_cycles(self) -> None:
        try:
            while self.cycles.stale():
                await asyncio.sleep(self.settings.cycle_debounce_seconds)
                version = self.cycles.version
                new = await asyncio.to_thread(cycles_of, *self.wiring.graph_inputs())
                self.wiring.mark(self.cycles.finish(version, new))
        except Exception:  # the next change (or reconcile) tries again; a reconcile never fails on it
            log.exception("computing the dependency graph's cycles failed")
        finally:
            self.cycles.stopped()

    # ------------------------------------------------------------------ custom-resource watches

    def claim_custom(self, key: Key, wanted: Sequence[CustomKey]) -> Mapping[StreamKey, str]:
        """From a reconcile's thread: claim the policy's custom watches; the kinds refused, and why."""
        claim = self.wiring.custom.claim(key, wanted)
        metrics.custom_watches.set(len(self.wiring.custom.watched()))
        self.wake_threadsafe(claim.woken)
        return claim.refused

    def claimed(self, claim: Claim) -> None:
        """On the loop, after a claim: wake the policies it let in, run exactly the claimed watches."""
        self.wiring.mark(claim.woken)
        want = self.wiring.custom.watched()
        metrics.custom_watches.set(len(want))
        for skey in set(self._watch_tasks) - want:
            self._watch_tasks.pop(skey).cancel()
        for skey in want - set(self._watch_tasks):
            av, kind, ns = skey
            self._watch_tasks[skey] = asyncio.get_running_loop().create_task(self.reconciler().kube.watch_kind(
                av, kind, ns, wants=functools.partial(self.wiring.custom.wants, skey),
                on_change=functools.partial(self._custom_changed, skey), on_restart=_count_restart,
                inactivity=self.settings.watch_inactivity_seconds), name=f"watch-{kind}-{ns}")

    # ------------------------------------------------------------------ the built-in kinds' watches

    def rescope(self) -> None:
        """On the loop, after anything that may change what the policies name: run exactly the streams the
        wiring asks for (Wiring.streams), once per turn of the loop however many events asked. A stream
        started for a namespace that just got its first policy lists first, and that list's objects reach
        the wiring like events: nothing created meanwhile is missed (the policy's own reconcile reads what
        was there before)."""
        if self._rescope_due or self.loop is None or self._scoped == self.wiring.scope_version:
            return
        self._rescope_due = True
        self.loop.call_soon(self._rescope_now)

    def _rescope_now(self) -> None:
        self._rescope_due = False
        self._scoped = self.wiring.scope_version
        want = self.wiring.streams()
        gone, new = set(self._streams) - want, want - set(self._streams)
        for st in gone:
            self._streams.pop(st).cancel()
            self.wiring.stream_running(st, running=False)
        for verb, changed in (("stopped watching", gone), ("watching", new)):
            by_ns: dict[str, list[str]] = {}
            for st in changed:
                by_ns.setdefault(st.namespace, []).append(st.kind + (f" ({st.labels})" if st.labels else ""))
            for ns, kinds in sorted(by_ns.items()):
                log.info("%s %s in %s", verb, ", ".join(sorted(kinds)),
                         f"namespace {ns}" if ns else "every namespace")
        kube = self.reconciler().kube
        for st in new:
            api = st.api
            self._streams[st] = asyncio.get_running_loop().create_task(kube.watch_objects(
                api.api_version, api.kind, st.namespace, labels=st.labels, metadata_only=st.metadata_only,
                on_event=functools.partial(self._stream_event, st), on_listed=functools.partial(self._listed, st),
                on_restart=_count_restart, inactivity=self.settings.watch_inactivity_seconds),
                name=f"watch-{st.kind}-{st.namespace or '*'}")
        metrics.watch_streams.set(len(self._streams))

    def _stream_event(self, st: Stream, type_: str, obj: dict[str, Any]) -> None:
        deleted = type_ == "DELETED"
        if st.gated:
            self.pod_gates.seen(obj, deleted=deleted)
            return
        md = obj.get("metadata") or {}
        ns, name = str(md.get("namespace") or st.namespace), str(md.get("name"))
        self.apply(self.wiring.event(st.kind, ns, name, obj, deleted=deleted))
        if st.kind == registry.STATEFUL_SET.kind:
            # its controller observed the rendered revision, say: the held pods it owns are decided again
            # (whether one is deleted for its controller to make it again reads the StatefulSet)
            self.pod_gates.owner_changed(ns, st.kind, name)

    def _listed(self, st: Stream, after_gap: bool) -> None:
        """A stream listed: after a gap in its events (410, a refusal, an error), every policy it concerns
        reconciles (what it missed may have been a deletion)."""
        self.wiring.stream_running(st, running=True)
        if after_gap and not st.gated:
            self.wiring.mark(self.wiring.policies_naming_in(st.namespace))

    def _custom_changed(self, skey: StreamKey, names: set[str] | None) -> None:
        self.wiring.mark(self.wiring.custom.woken_by(skey, names))

    async def stop_watches(self) -> None:
        tasks = [*self._watch_tasks.values(), *self._streams.values()]
        self._watch_tasks.clear()
        self._streams.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._reconciler is not None:
            await self._reconciler.kube.close_watches()

    # ------------------------------------------------------------------ the policies watch's echoes

    async def echo_watchdog(self) -> None:
        """Every few seconds: has the policies watch delivered back every status write depgate made?"""
        while True:
            await asyncio.sleep(self.echo.tick_seconds)
            check = self.echo.check(time.monotonic())
            metrics.watch_stale.set(1 if check.stale else 0)
            if check.went_deaf:
                metrics.watch_stale_total.inc()
                (ns, name), rv, age = check.stale[0]
                log.warning("the policies watch has not delivered depgate's own status write of %s/%s "
                            "(resourceVersion %d) in %.0fs, nor %d other(s): it no longer hears the API server; "
                            "the liveness probe fails until it does", ns, name, rv, age, len(check.stale) - 1)
            elif check.hears_again:
                log.warning("the policies watch hears the API server again")


_OPERATOR: Operator | None = None


def install(settings: Settings) -> Operator:
    """Build the Operator the handlers use (once, before kopf.run; tests call it with their own)."""
    global _OPERATOR
    _OPERATOR = Operator(settings)
    return _OPERATOR


def current() -> Operator:
    if _OPERATOR is None:
        raise RuntimeError("depgate.handlers.install(settings) must be called before Kopf runs the handlers")
    return _OPERATOR


def reconciler() -> Reconciler:
    return current().reconciler()


def _count_restart(reason: str) -> None:
    metrics.watch_restarts.labels(reason=reason).inc()


# ---------------------------------------------------------------------- Kopf's settings and login


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    s = current().settings
    # depgate's own finalizer (FINALIZER) is added and removed by the leader's workers, never by Kopf: a standby
    # runs Kopf's watches too, and Kopf removes its finalizer from an object none of its handlers needs one
    # for. Kopf keeps a name of its own, which no handler here makes it add (no daemon, no on.delete).
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.persistence.progress_storage = _TolerantProgress(prefix=GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.enabled = False  # our own Events say what happened; not Kopf's log lines
    settings.peering.standalone = True  # no Kopf peering: depgate elects its leader on a Lease (depgate.lease)
    settings.execution.max_workers = MAX_WORKERS
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_SERVER_TIMEOUT + WATCH_CLIENT_MARGIN_SECONDS
    settings.watching.inactivity_timeout = s.watch_inactivity_seconds
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    # Kopf's own requests (finalizers, the diffbase annotation): bounded, so that a request on a
    # pooled connection that went silent fails and is retried instead of hanging for 5 minutes.
    settings.networking.request_timeout = s.request_timeout_seconds
    settings.networking.connect_timeout = CONNECT_TIMEOUT
    _watch_health.install()


@kopf.on.login(errors=kopf.ErrorsMode.IGNORED)
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Kopf's credentials, from what depgate's own client reads (depgate.kubeconfig: the in-cluster
    ServiceAccount or the kubeconfig): --kubeconfig is handed over here, not through the environment.
    Read again on each re-login (Kopf re-logs in on a 401, and when an exec credential expires), so a
    rotated token or a renewed credential reaches Kopf too."""
    c = kubeconfig.load(current().settings.kubeconfig)
    token = c.bearer()
    return kopf.ConnectionInfo(
        server=c.server, ca_path=c.ca_file, ca_data=c.ca_data, insecure=c.insecure,
        username=None if token else c.username, password=None if token else c.password,
        scheme="Bearer" if token else None, token=token,
        certificate_path=c.cert_file, private_key_path=c.key_file,
        default_namespace=c.namespace, expiration=c.expiration(),
        trust_env=settings.networking.trust_env,
    )


# ---------------------------------------------------------------------- the admission webhook (depgate.webhook)


class _WebhookServer(kopf.WebhookServer):
    """Kopf's HTTPS webhook server, serving the admission handlers below, with two differences: a
    review may be as big as the API server lets a request be (aiohttp's default of 1 MiB would answer
    413 to a big policy, and the API server would say only "failed calling webhook"), and once it
    listens, the webhook configurations are pointed at it (their clientConfig)."""

    def __init__(self, *, on_listening: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_listening = on_listening

    async def __call__(self, fn: Any) -> Any:  # an async generator of client configs, as Kopf's
        _, context = self._build_ssl()

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        app = aiohttp.web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, self.addr, self.port, ssl_context=context, reuse_address=True)
            await site.start()
            log.info("serving the admission webhook on https://%s:%s", self.addr, self.port)
            await self.on_listening()
            yield {}  # Kopf's configuration manager is off (settings.admission.managed is None)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


async def _no_webhook_server(fn: Any) -> Any:
    """--webhook-port=0 or --authority=off: no server here (another replica may serve)."""
    await asyncio.Event().wait()
    yield {}  # never reached


@kopf.on.startup()
async def start_admission(settings: kopf.OperatorSettings, **_: Any) -> None:
    """The signing key and certificate (from the webhook Secret), the gate, and the HTTPS server."""
    op, s = current(), current().settings
    settings.admission.managed = None  # the install ships the configurations; we only point them here
    settings.admission.server = _no_webhook_server
    if s.authority == "off":
        log.warning("--authority=off: every policy is trusted, whoever wrote it (docs/operations.md, Threat model)")
        return
    kube = op.infra_kube()  # not fenced: every replica reads (or, the first, makes) the Secret
    ns = s.resolved_operator_namespace()
    in_cluster = s.kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        keys = await asyncio.to_thread(webhook.load_keys, kube, ns, tls.hostnames(s.webhook_service, ns))
        me = await asyncio.to_thread(kube.whoami)
    except Exception as e:  # said in every policy's status until a restart gets it
        op.gate_problem = f"could not read or make the Secret {ns}/{WEBHOOK_SECRET}: {e}"
        log.error("%s; no policy is trusted meanwhile", op.gate_problem)
        return
    op.gate = Gate(op.reconciler().kube, keys.signing, me)
    await asyncio.to_thread(preload_policies, op, kube)
    if not s.webhook_port:
        return
    cert, key = webhook.write_cert_files(keys, Path(tempfile.mkdtemp(prefix="depgate-webhook-")))
    bundle = base64.b64encode(keys.cert).decode()
    base = s.webhook_url.rstrip("/") or (None if in_cluster else f"https://127.0.0.1:{s.webhook_port}")

    def client(path: str) -> dict[str, Any]:
        if base is None:
            return {"service": {"name": s.webhook_service, "namespace": ns, "path": f"/{path}", "port": 443},
                    "caBundle": bundle}
        return {"url": f"{base}/{path}", "caBundle": bundle}

    async def register() -> None:
        problems = await asyncio.to_thread(webhook.register, kube, client, webhook.service_account_user(ns))
        for problem in problems:
            log.error("%s", problem)
        metrics.webhook_ready.set(0 if problems else 1)

    async def listening() -> None:
        # Every replica serves the webhooks; only the default shard's leader points the configurations at itself
        # (in a cluster all replicas are behind the one Service; a standby on a laptop must not take the
        # cluster's webhooks, nor a shard's leader the default shard's).
        op.register_webhook = register
        if op.registers_webhooks():
            await register()
        else:
            metrics.webhook_ready.set(1)  # it answers reviews sent to it; the leader registers

    settings.admission.server = _WebhookServer(
        addr="0.0.0.0" if in_cluster or s.webhook_url else "127.0.0.1", port=s.webhook_port,
        certfile=str(cert), pkeyfile=str(key), on_listening=listening)


@kopf.on.mutate(POLICIES.group, POLICIES.version, POLICIES.plural, id=webhook.MUTATE_PATH,
                operations=["CREATE", "UPDATE"])
async def record_author(operation: str, old: Any, new: Any, userinfo: Mapping[str, Any], patch: kopf.Patch,
                        **_: Any) -> None:
    """The author's signed annotations (and depgate's finalizer). Pure CPU, no request: run on the event loop
    (Kopf runs a sync handler in a thread, and the hop to it and back cost more than the handler)."""
    gate = current().gate
    if gate is None:
        raise kopf.AdmissionError(f"depgate cannot record the author: {current().gate_problem}", code=503)
    new_obj = plain(new)
    for k, v in gate.mutate(operation, plain(old) if old is not None else None, new_obj, userinfo).items():
        patch.metadata.annotations[k] = v
    op = current()
    if adds_finalizer_at_admission(op, new_obj):
        # depgate's finalizer with the policy's own write, so that its worker need not patch it in (a write
        # per policy); only on a policy this operator serves, so no deletion waits for an operator nobody runs
        patch.metadata["finalizers"] = [*finalizers(new_obj), FINALIZER]


def adds_finalizer_at_admission(op: Operator, obj: Mapping[str, Any]) -> bool:
    """A policy this process's shard and namespaces serve, without depgate's finalizer, not being deleted."""
    md = obj.get("metadata") or {}
    served = op.settings.namespaces
    return (not deleting(obj) and FINALIZER not in finalizers(obj) and op.mine(obj)
            and (not served or md.get("namespace") in served))


@kopf.on.validate(POLICIES.group, POLICIES.version, POLICIES.plural, id=webhook.VALIDATE_PATH,
                  operations=["CREATE", "UPDATE"])
def check_authority(operation: str, old: Any, new: Any, userinfo: Mapping[str, Any], warnings: list[str],
                    dryrun: bool = False, **_: Any) -> None:
    gate = current().gate
    if gate is None:
        raise kopf.AdmissionError(f"depgate cannot check the author's rights: {current().gate_problem}", code=503)
    started = time.monotonic()
    old_obj, new_obj = plain(old) if old is not None else None, plain(new)
    refused = gate.admit(operation, old_obj, new_obj, userinfo, warnings)
    metrics.admission_seconds.observe(time.monotonic() - started)
    if refused is not None:
        metrics.admission_refusals.inc()
        raise kopf.AdmissionError(refused, code=403)
    if not dryrun and authority.admitted_author(old_obj, new_obj) is not None:
        # its author checked just now: its workloads, admitted next, are gated by it before the watch delivers it
        current().admitted.admitted(new_obj, time.monotonic())


# ---------------------------------------------------------------------- workloads, at admission (depgate.admission)


def preload_policies(op: Operator, kube: Kube) -> None:
    """At start, before the webhook serves: the policies that exist, listed once, trusted and not being
    deleted, so that the workloads' webhook knows them before the policies watch has delivered them
    (a Job created while the operator restarts is gated like any other). The watch's copies take over
    as they arrive (admission.Pending)."""
    now, gate = time.monotonic(), op.gate
    try:
        served: list[str | None] = list(op.settings.namespaces) or [None]  # None: every namespace
        for ns in served:
            for obj in kube.items(POLICIES.api_version, POLICIES.kind, ns):
                if (obj.get("metadata") or {}).get("deletionTimestamp"):
                    continue
                if op.settings.authority != "enforce" or (gate is not None and gate.trusted(obj)):
                    op.admitted.admitted(obj, now)
    except Exception as e:  # the watch brings them a moment later
        log.warning("could not list the policies at start (%s: %s); the workloads' webhook knows each once the "
                    "policies watch delivers it", type(e).__name__, e)


def admission_policies(op: Operator, namespace: str, workload: Mapping[str, Any] | None = None) -> list[Any]:
    """The policies that may gate a workload being admitted in `namespace`, from memory: valid, their
    author verified (an untrusted policy must not make depgate change a workload), none being deleted
    (its release would be undone); and those the validating webhook admitted a moment ago that the
    watch has not delivered yet (a policy and its workload in one `kubectl apply`)."""
    def deleting_policy(name: str) -> bool:
        return bool(((op.wiring.policies.get((namespace, name)) or {}).get("metadata") or {}).get("deletionTimestamp"))

    served = op.settings.namespaces
    if served and namespace not in served:  # --namespace: the other namespaces' policies are not this operator's
        return []
    # With the workload being admitted: only the policies that can target it (its name, or a selector).
    known = [p for p in op.namespace_policies(namespace, None if workload is None else [workload])
             if not deleting_policy(p.name)]
    return op.admitted.policies(namespace, known, time.monotonic())


def _replace_body(body: dict[str, Any], new: Mapping[str, Any]) -> None:
    body.clear()
    body.update(new)


def _render_at_admission(kind: registry.WorkloadKind) -> None:
    """The mutating handler of one workload kind (webhook workloads.depgate.io; Kopf routes by path, so
    the kinds share the handler id and differ by resource). Never raises: a workload is never refused
    because of depgate. Kopf watches nothing for an admission handler."""
    api = kind.api

    @kopf.on.mutate(api.group, api.version, api.plural, id=webhook.WORKLOADS_PATH, operations=["CREATE", "UPDATE"])
    async def render_workload(operation: str, new: Any, patch: kopf.Patch, warnings: list[str],
                              namespace: str | None = None, **_: Any) -> None:
        started, outcome = time.monotonic(), "error"
        try:
            op = current()
            ns = namespace or (new.get("metadata") or {}).get("namespace") or ""
            policies = admission_policies(op, ns, {"kind": kind.kind, "metadata": new.get("metadata") or {}})
            if not policies:  # most namespaces, most of the time: nothing to read or copy
                outcome = admission.UNTARGETED
                return
            obj = json.loads(json.dumps(new, default=dict))
            r = op.reconciler()  # its render config and protected namespaces: the reconcile's own
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # depgate's managedFields entry
            decision = admission.decide(obj, ns, operation, policies, r.config, r.protected, now)
            outcome = decision.outcome
            warnings.extend(decision.warnings)
            if decision.result is not None and decision.patch:
                patch.fns.append(functools.partial(_replace_body, new=decision.result))
                log.info("rendered DependencyPolicy %s/%s's init containers into %s %s/%s at admission (%s)", ns,
                         decision.policy, kind.kind, ns, (obj.get("metadata") or {}).get("name") or "(generated name)",
                         operation)
            elif decision.warnings:
                log.warning("%s", "; ".join(decision.warnings))
        except Exception as e:  # admitted unchanged: the reconcile gates it afterwards
            log.exception("could not render depgate's init containers into a %s at admission", kind.kind)
            warnings.append(f"depgate could not render its init containers into this {kind.kind} at admission "
                            f"({type(e).__name__}: {e}); admitted unchanged")
        finally:
            metrics.workload_admission_seconds.labels(kind=kind.kind, outcome=outcome).observe(
                time.monotonic() - started)


for _wkind in registry.WORKLOAD_KINDS.values():
    if _wkind.gated:
        _render_at_admission(_wkind)


class _NoDiffBase(kopf.DiffBaseStorage):
    """No diff base at all. Kopf keeps the last handled spec (for on.create/on.update handlers'
    diffs) in an annotation; depgate has no such handler (its workers read the spec themselves, and
    release on deletion behind their own finalizer), and that copy was a second write on every new policy and
    made a policy over the 256 KiB annotation limit impossible to delete (the finalizer's patch
    carried it). The essence is empty, the old as the new: never a diff, never a write, and no deep
    copy of every policy on each of its events (Kopf diffs the two for its changing handlers only, and
    depgate registers none). (wiring.slim drops the copy, wiring.KOPF_DIFFBASE, that a depgate before
    this one wrote.)"""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return {}

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


def kopf_storage_initializing(message: str) -> str | None:
    """`GET <url> (attempt #1/9)` when a line of Kopf's API client says only that the API server's watch
    cache is not filled yet (429 `storage is (re)initializing`) and that it will retry: expected for a
    moment after a CRD is created or the API server starts, not an error. None for any other line, the
    last attempt's `escalating` included."""
    head, sep, rest = message.partition(" failed; will retry: ")
    if not (sep and head.startswith("Request attempt ") and "storage is (re)initializing" in rest and "429" in rest):
        return None
    return f"{rest.partition(' -> ')[0]} (attempt {head.removeprefix('Request attempt ')})"


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
        retrying = kopf_storage_initializing(record.getMessage()) if record.levelno >= logging.ERROR else None
        if retrying is not None:
            log.info("the API server's watch cache is still (re)initializing (HTTP 429, as for a while after a CRD "
                     "is created or the API server starts): Kopf retries %s", retrying)
            return False
        restart = kopf_watch_restart(record.getMessage())
        if restart is not None:
            reason, what = restart
            metrics.watch_restarts.labels(reason=reason).inc()
            if reason == "silent":
                log.warning("the watch of %s delivered nothing, not even a bookmark, for %.0fs: "
                            "restarted it from its last resourceVersion", what,
                            current().settings.watch_inactivity_seconds)
                return False
        return record.levelno >= logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG)


_watch_health = _WatchHealth()


@kopf.on.startup()
async def remember_loop(**_: Any) -> None:
    op = current()
    op.loop = asyncio.get_running_loop()
    op.loop.create_task(op.echo_watchdog(), name="depgate echo watchdog")
    op.rescope()  # the gated pods' watch, before any policy


@kopf.on.probe(id="policy_watch")
def policy_watch_probe(**_: Any) -> str:
    deaf_for = current().echo.deaf_for(time.monotonic())
    if deaf_for is not None:
        # Permanent: Kopf retries other errors inside the probe, and /healthz would hang instead of failing
        raise kopf.PermanentError(f"the policies watch has delivered none of depgate's own status writes for "
                                  f"{deaf_for:.0f}s")
    return "hears the API server"


@kopf.on.cleanup()
async def stop_custom_watches(**_: Any) -> None:
    await current().stop_watches()


# ---------------------------------------------------------------------- the policies


@kopf.on.event(POLICIES.group, POLICIES.version, POLICIES.plural)
async def policy_event(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
    """The policies' watch (Kopf's only one): the index learns the copy, the worker is woken; then the
    namespace's held pods are decided again (one handler, not two: Kopf's cost of a handler is per event)."""
    try:
        _policy_event(event, body, namespace, name)
    finally:
        current().pod_gates.policies_changed(namespace)


def _policy_event(event: Mapping[str, Any], body: Any, namespace: str, name: str) -> None:
    op, key = current(), (namespace, name)
    if event.get("type") == "DELETED":
        op.admitted.heard(key, None)
        op.authors.pop(key, None)
        op.stop_worker(key)
        op.claimed(op.wiring.policy_deleted(key))
        op.graph_changed()
        metrics.forget(key)
        op.echo.forget(key)
        op.rescope()
        return
    obj = plain(body)
    op.admitted.heard(key, obj)
    op.echo.heard(key, obj)
    op.apply(op.wiring.policy_seen(key, obj))
    # A new recorded author (an unverified policy touched by someone with the rights) changes no
    # spec, but changes whether the policy may act: reconcile it.
    author = ((obj.get("metadata") or {}).get("annotations") or {}).get(AUTHOR_SIGNATURE_ANNOTATION)
    if op.authors.get(key) != author:
        op.authors[key] = author
        op.wiring.mark([key])
    op.ensure_worker(key)  # the leader's, for a policy of its shard (a standby only keeps it in memory)
    op.rescope()


async def policy_worker(op: Operator, key: Key) -> None:
    """The leader's worker of one policy (Operator.ensure_worker starts it, stop_worker cancels it): reconcile
    when woken (an event marked it dirty), at least every resync period, with a backoff after failures;
    add depgate's finalizer first, and when the policy is being deleted release its workloads and remove it."""
    namespace, name = key
    dirty = op.wiring.worker(key)
    dirty.set()
    state = WorkerState(op.settings.coalesce_seconds, op.settings.max_backoff_seconds)
    while True:
        with contextlib.suppress(TimeoutError):  # woken by the dirty flag, or after the resync period
            await asyncio.wait_for(dirty.wait(), timeout=op.settings.resync_seconds)
        pause = state.next_pause(time.monotonic())
        if pause > 0:
            await asyncio.sleep(pause)
        dirty.clear()
        echo = op.wiring.echo_only(key)
        if op.workers.get(key) is not asyncio.current_task():
            # Stopped (leadership lost, the policy moved to another shard): on Python 3.11 asyncio.wait_for
            # swallows a cancellation that arrives as the dirty flag is set, which is exactly what the event
            # that stops a worker does; without this check the worker ran on, unseen, beside its successor.
            return
        known = op.wiring.policies.get(key)
        if known is None:
            return  # deleted: policy_event forgot it
        if echo:
            metrics.reconciles_skipped.inc()
            continue  # woken only by its own write coming back (or a copy it has seen): nothing new
        obj = op.wiring.to_reconcile(key, known)
        try:
            if deleting(obj):
                if FINALIZER not in finalizers(obj):
                    return  # nothing of depgate's holds it
                await asyncio.to_thread(finalize, op, obj)
                return
            if FINALIZER not in finalizers(obj):
                await asyncio.to_thread(add_finalizer, op, obj)
        except (Changed, NotLeader):  # the policy changed meanwhile (its event wakes us), or we stopped leading
            op.later(key, 0.5)
            continue
        except Exception as e:
            delay = state.on_failure(time.monotonic())
            log.warning("%s of %s/%s failed (%s: %s); retrying in %.1fs",
                        "release" if deleting(obj) else "adding the finalizer", namespace, name,
                        type(e).__name__, e, delay)
            op.later(key, delay)
            continue
        started = time.monotonic()
        try:
            outcome: Outcome = await asyncio.to_thread(op.reconciler().reconcile, obj, cycle=op.cycle_for(key))
        except NamespaceTerminating:
            continue  # the namespace is being deleted; its deletion removes this policy too
        except Exception as e:
            delay = state.on_failure(time.monotonic())
            log.warning("reconcile of %s/%s failed (%s: %s); retrying in %.1fs", namespace, name,
                        type(e).__name__, e, delay)
            metrics.reconciles.labels(result="error").inc()
            op.later(key, delay)
            continue
        state.on_success(time.monotonic())
        metrics.observe(key, outcome, time.monotonic() - started)
        if outcome.written is not None:
            op.echo.wrote(key, outcome.written, time.monotonic())
        after = op.wiring.reconciled(key, obj, outcome)
        if after.again:
            op.wiring.mark([key])
        if after.graph_changed:
            op.graph_changed()
        op.claimed(after.claim)
        op.rescope()
        if outcome.requeue_after is not None:
            op.later(key, outcome.requeue_after)


def finalizers(obj: Mapping[str, Any]) -> list[Any]:
    value = (obj.get("metadata") or {}).get("finalizers")
    return list(value) if isinstance(value, list) else []


def add_finalizer(op: Operator, obj: Mapping[str, Any]) -> None:
    """In a thread: depgate's finalizer on the policy before it changes any workload (so that its deletion
    waits for the release), conditional on the copy read (a failed test raises Changed)."""
    md = obj.get("metadata") or {}
    present = md.get("finalizers") is not None
    rv = md.get("resourceVersion")
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}]
    ops.append({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER} if present
               else {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
    r = op.reconciler()
    if r.kube.json_patch(POLICIES.api_version, POLICIES.kind, md.get("namespace"), str(md.get("name")), ops):
        metrics.writes.inc()


def finalize(op: Operator, obj: Mapping[str, Any]) -> None:
    """In a thread: the policy is being deleted: take every init container it added back out of the workloads
    it gated, then remove depgate's finalizer (only it, by its position, tested). Raises to be tried again."""
    release_all(op, obj)
    md = obj.get("metadata") or {}
    i = finalizers(obj).index(FINALIZER)
    ops = [{"op": "test", "path": f"/metadata/finalizers/{i}", "value": FINALIZER},
           {"op": "remove", "path": f"/metadata/finalizers/{i}"}]
    if op.reconciler().kube.json_patch(POLICIES.api_version, POLICIES.kind, md.get("namespace"),
                                       str(md.get("name")), ops):
        metrics.writes.inc()


def release_all(op: Operator, body: Mapping[str, Any]) -> None:
    """Take every init container this policy added back out of the workloads it gated."""
    r = op.reconciler()
    md = body.get("metadata") or {}
    namespace, name = str(md.get("namespace")), str(md.get("name"))
    try:
        kinds = plan.target_kinds(spec.parse_policy(plain(body)))
    except spec.SpecError:  # a policy whose spec no longer parses may have gated any kind before
        kinds = registry.TARGET_KINDS
    workloads = [w for kind in kinds if registry.WORKLOAD_KINDS[kind].template_mutable
                 for w in r.kube.items(registry.WORKLOAD_KINDS[kind].api.api_version, kind, namespace)]
    for key in to_release(name, body.get("status"), workloads):
        dname = f"{key[0].lower()} {namespace}/{key[1]}"
        try:
            if r.release(namespace, name, key):
                metrics.writes.inc()
                log.info("released %s from policy %s", dname, name)
        except Rejected as e:
            # The API server refuses the Deployment without depgate's fields: another manager owns part
            # of them (a user who applied `depgate render`'s output owns those init containers too).
            # Asking again cannot help, and the deletion must not hang: leave that Deployment as it is.
            metrics.reconciles.labels(result="release-refused").inc()
            log.warning("could not release %s from policy %s (%s); left as it is: its remaining depgate-* "
                        "entries belong to another field manager too", dname, name, e)


# ---------------------------------------------------------------------- what policies depend on


# The built-in kinds' events reach the wiring through the adapter's own watches (Operator.rescope: only the
# namespaces and kinds the policies name, filtered by the API server), not through Kopf's, which watch a kind
# in every namespace and filter on the client: every write anywhere in the cluster would cost a decode here.


# ---------------------------------------------------------------------- pod scheduling gates (depgate.gates)


class PodGates:
    """The I/O of depgate.gates: the pods still at depgate's scheduling gate (fed by the events of the
    pods watch Kopf runs anyway, filtered by the label depgate.io/gated: no second watch; its first
    list at startup brings every pod gated while no operator ran), and the loop that decides and lifts
    them. The decisions read the policies from memory; a pod is let go for want of a policy only after
    the API server's own list of the namespace's policies agrees (the watch may lag a policy applied a
    moment ago, and at startup it may not have delivered every policy yet). Reads and patches run in
    threads, one namespace per thread at a time, never on the event loop."""

    IDLE_SECONDS = 30.0  # the loop looks at least this often (held pods wake on their namespace's policy events)

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.pods = gates.GatedPods()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.protected = protected(op.settings.protected_namespaces, op.settings.resolved_operator_namespace())

    # --- on the loop

    def seen(self, body: Any, deleted: bool) -> None:
        pod = plain(body)
        if deleted:
            self.pods.gone(str((pod.get("metadata") or {}).get("uid") or ""))
        elif self.pods.seen(pod, time.monotonic()):
            self.wake.set()

    def policies_changed(self, namespace: str) -> None:
        if self.pods.policies_changed(namespace, time.monotonic()):
            self.wake.set()

    def wake_all(self) -> None:
        """A new leader: every gated pod is decided again."""
        if self.pods.wake_all(time.monotonic()):
            self.wake.set()

    def owner_changed(self, namespace: str, kind: str, name: str) -> None:
        if self.pods.owner_changed(namespace, kind, name, time.monotonic()):
            self.wake.set()

    async def run(self) -> None:
        while True:
            timeout = gates.sleep_for(self.pods.next_due(), time.monotonic(), self.IDLE_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            if not self.op.leading() or self.op.settings.shard:
                # A standby keeps the bookkeeping and the leader decides (wake_all on election); of the shards,
                # the default one's leader decides every gated pod (a pod is not a policy: no two shards lift one)
                continue
            batch = self.pods.due(time.monotonic())
            try:
                await self.round(batch)
            except Exception:  # never a dead loop: the pods it took are retried after a backoff
                log.exception("deciding the pods at depgate's scheduling gate failed; trying them again")
                for uid, _ in batch:
                    self.pods.failed(uid, time.monotonic())

    async def round(self, batch: list[tuple[str, gates.Entry]]) -> None:
        """Decide the due pods: one thread per namespace."""
        by_ns: dict[str, list[tuple[str, gates.Entry]]] = {}
        for uid, entry in batch:
            by_ns.setdefault(entry.namespace, []).append((uid, entry))
        results = await asyncio.gather(*(asyncio.to_thread(self.settle, entries) for entries in by_ns.values()),
                                       return_exceptions=True)
        for entries, result in zip(by_ns.values(), results, strict=True):
            for (uid, entry), outcome in zip(entries, _outcomes(result, len(entries)), strict=True):
                self.done(uid, entry, outcome)
        for state, n in self.pods.counts().items():
            metrics.gated_pods.labels(state=state).set(n)

    def done(self, uid: str, entry: gates.Entry, outcome: tuple[str, Any]) -> None:
        what, value = outcome
        pod = f"{entry.namespace}/{entry.name}"
        if what in ("lifted", "replaced"):
            self.pods.lifted(uid, value[1] if what == "lifted" else None)
            metrics.pod_gate_lifts.labels(cause=value[0] if what == "lifted" else "replaced").inc()
        elif what == "decided":
            if isinstance(value, gates.Hold) and entry.held != value.reason:
                log.info("pod %s stays at its scheduling gate %s: %s", pod, gates.GATE, value.reason)
            self.pods.decided(uid, value)
        else:
            first = entry.failures == 0
            delay = self.pods.failed(uid, time.monotonic())
            (log.warning if first else log.debug)(
                "could not decide or lift the scheduling gate of pod %s (%s: %s); trying again in %.0fs",
                pod, type(value).__name__, value, delay)

    # --- in a thread

    def settle(self, entries: list[tuple[str, gates.Entry]]) -> list[tuple[str, Any]]:
        """Decide (and lift) each of one namespace's due pods; at most one list of its policies and one read
        of each workload (a DaemonSet's thousand held pods wake on each policy event of the namespace)."""
        listed: list[spec.Policy] | None = None
        reads: dict[tuple[str, str], dict[str, Any] | None] = {}
        out: list[tuple[str, Any]] = []
        for _, entry in entries:
            try:
                pod, ns, now = entry.pod, entry.namespace, time.monotonic()
                workload = plan.workload_of_pod(pod)
                decision, policy, obj = self.decide(pod, workload, admission_policies(self.op, ns), now, entry.since,
                                                    reads)
                if isinstance(decision, gates.Lift) and workload is not None and not gates.our_init_containers(pod):
                    if listed is None:
                        listed = self.listed(ns)
                    decision, policy, obj = self.decide(pod, workload, listed, now, entry.since, reads)
                why = gates.replacement(pod, obj, policy.name) \
                    if isinstance(decision, gates.Hold) and policy is not None and obj is not None \
                    and obj.get("kind") == registry.STATEFUL_SET.kind else None
                if isinstance(decision, gates.Lift):
                    out.append(("lifted", (decision.cause, self.lift(pod, decision))))
                elif why is not None:
                    self.replace(pod, why)
                    out.append(("replaced", None))
                else:
                    out.append(("decided", decision))
            except Exception as e:
                out.append(("failed", e))
        return out

    @property
    def kube(self) -> Kube:
        return self.op.reconciler().kube

    def read(self, reads: dict[tuple[str, str], dict[str, Any] | None], api: registry.ApiKind, ns: str,
             name: str) -> dict[str, Any] | None:
        if (api.kind, name) not in reads:
            reads[(api.kind, name)] = self.kube.get(api.api_version, api.kind, ns, name)
        return reads[(api.kind, name)]

    def decide(self, pod: Mapping[str, Any], workload: tuple[str, str] | None, policies: Sequence[spec.Policy],
               now: float, since: float, reads: dict[tuple[str, str], dict[str, Any] | None],
               ) -> tuple[gates.Decision, spec.Policy | None, dict[str, Any] | None]:
        """The decision, the policy that gates the pod's workload and that workload as read (when it was)."""
        policy, obj, mutable = None, None, True
        if workload is not None:
            kind = registry.WORKLOAD_KINDS.get(workload[0])
            mutable = kind.template_mutable if kind is not None else True
            if policies and kind is not None and not gates.our_init_containers(pod):
                ns = str((pod.get("metadata") or {}).get("namespace"))
                obj = self.read(reads, kind.api, ns, workload[1])
                policy = self.gating(ns, kind, obj, policies, reads) if obj is not None else None
        return gates.decide(pod, policy, now, self.op.settings.gate_grace_seconds, since=since,
                            workload=workload, template_mutable=mutable), policy, obj

    def gating(self, ns: str, kind: registry.WorkloadKind, obj: Mapping[str, Any], policies: Sequence[spec.Policy],
               reads: dict[tuple[str, str], dict[str, Any] | None]) -> spec.Policy | None:
        """The policy that gates the workload (as read now: a selector matches its labels), or its CronJob's."""
        found = plan.gating_policy(policies, obj)
        if found is None and kind.api.kind == registry.JOB.kind:
            owner = next((o for o in (obj.get("metadata") or {}).get("ownerReferences") or []
                          if o.get("controller") and o.get("kind") == registry.CRON_JOB.kind), None)
            cron = self.read(reads, registry.CRON_JOB, ns, str(owner["name"])) if owner else None
            found = plan.gating_policy(policies, cron) if cron is not None else None
        return found

    def listed(self, ns: str) -> list[spec.Policy]:
        """The namespace's policies as the API server lists them now, as admission_policies keeps them:
        valid, their author verified, none being deleted."""
        out = []
        for obj in self.kube.items(POLICIES.api_version, POLICIES.kind, ns):
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if self.op.settings.authority == "enforce" and (self.op.gate is None or not self.op.gate.trusted(obj)):
                continue
            try:
                out.append(spec.parse_policy(obj))
            except spec.SpecError:
                continue
        return out

    def replace(self, pod: Mapping[str, Any], why: str) -> None:
        """Delete a held pod that never ran, for its controller to make it again, rendered (gates.replacement)."""
        md = pod.get("metadata") or {}
        ns, name = str(md.get("namespace")), str(md.get("name"))
        try:
            if self.kube.delete(registry.POD.api_version, registry.POD.kind, ns, name, uid=str(md.get("uid"))):
                log.info("deleted pod %s/%s at its scheduling gate %s: %s", ns, name, gates.GATE, why)
        except Changed:  # another pod of that name now: this one is gone
            pass

    def lift(self, pod: Mapping[str, Any], decision: gates.Lift) -> dict[str, Any] | None:
        """Remove depgate's gate (only it); the API server's answer, None when the pod is gone or ungated."""
        md = pod.get("metadata") or {}
        ns, name, uid = str(md.get("namespace")), str(md.get("name")), md.get("uid")
        for _ in range(3):
            ops = gates.lift_ops(pod)
            if ops is None:
                return None
            try:
                answer = self.kube.json_patch(registry.POD.api_version, registry.POD.kind, ns, name, ops)
            except Changed:  # it changed since it was seen (or it is another pod of that name now)
                fresh = self.kube.get(registry.POD.api_version, registry.POD.kind, ns, name)
                if fresh is None or (fresh.get("metadata") or {}).get("uid") != uid:
                    return None
                pod = fresh
                continue
            if answer is not None:
                log.info("lifted the scheduling gate %s of pod %s/%s: %s", gates.GATE, ns, name, decision.reason)
            return answer
        raise RuntimeError("the pod kept changing while its scheduling gate was lifted (three attempts)")


def _outcomes(result: Any, n: int) -> list[tuple[str, Any]]:
    """One namespace's outcomes, or its thread's exception as the outcome of each of its pods."""
    return list(result) if isinstance(result, list) else [("failed", result)] * n


@kopf.on.mutate(registry.POD.group, registry.POD.version, registry.POD.plural, id=webhook.PODS_PATH,
                operations=["CREATE"])
async def gate_pod(new: Any, patch: kopf.Patch, namespace: str | None = None, **_: Any) -> None:
    """Webhook pods.depgate.io: depgate's scheduling gate on a workload's new pod in an opted-in namespace
    (depgate.gates.gate_patch), from memory. Never raises: a pod is never refused because of depgate."""
    started, outcome = time.monotonic(), "error"
    try:
        pod = json.loads(json.dumps(new, default=dict))
        md = pod.get("metadata") or {}
        ns = namespace or str(md.get("namespace") or "")
        pg = current().pod_gates
        change = gates.gate_patch(pod, ns, protected=pg.protected, served=current().settings.namespaces)
        outcome = "not-gated" if change is None else "gated"
        if change is not None:
            patch.update(change)
            log.debug("pod %s/%s created at depgate's scheduling gate", ns, md.get("name") or md.get("generateName"))
    except Exception:
        log.exception("could not put depgate's scheduling gate on a pod at admission; it is created ungated")
    finally:
        metrics.pod_gate_admission_seconds.labels(outcome=outcome).observe(time.monotonic() - started)


@kopf.on.startup()
async def start_pod_gates(**_: Any) -> None:
    pg = current().pod_gates
    pg.task = asyncio.get_running_loop().create_task(pg.run(), name="depgate pod gates")


@kopf.on.cleanup()
async def stop_pod_gates(**_: Any) -> None:
    task = current().pod_gates.task
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------------- leader election (depgate.lease, .election)


@kopf.on.startup()
async def start_election(**_: Any) -> None:
    """Before Kopf starts its watches (it runs every startup handler first), so that no policy event finds
    this process writing before it leads. Its writing client gets the fence."""
    op, s = current(), current().settings
    if not s.leader_election:
        log.info("--no-leader-election: this process writes at once; run no other replica")
        metrics.leader.labels(shard=s.shard).set(1)
        return
    elector = lease.Elector(identity(), lease.lease_name(s.lease_name, s.shard), s.resolved_operator_namespace(),
                            lease.Timing(s.lease_seconds, s.renew_deadline_seconds, s.retry_period_seconds))
    op.election = Election(op.infra_kube(), elector, on_elected=op.elected, on_lost=op.lost,
                           on_error=metrics.lease_errors.labels(shard=s.shard).inc)
    op.reconciler().kube.fence = op.election.fence
    metrics.leader.labels(shard=s.shard).set(0)
    op.election.start(asyncio.get_running_loop())


@kopf.on.cleanup()
async def stop_election(**_: Any) -> None:
    """On a clean stop: the workers first (no write after the lease is handed back), then the Lease."""
    op = current()
    if op.election is None:
        return
    await asyncio.to_thread(op.election.stop)
    workers = list(op.workers.values())
    op.lost()
    await asyncio.gather(*workers, return_exceptions=True)
    await asyncio.to_thread(op.election.release)
