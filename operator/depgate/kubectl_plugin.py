"""`kubectl depgate`: why a gated pod is still in Init, and what blocks, across namespaces.

Installed with the package as the executable `kubectl-depgate`, which kubectl finds on PATH
(`kubectl plugin list`) and runs for `kubectl depgate ...`, passing every argument after the
plugin's name through (so kubectl's flags go after it: `kubectl depgate why pod/x -n apps`).

    kubectl depgate why pod/NAME | deploy/NAME | sts/NAME | ds/NAME | job/NAME | cj/NAME [-n NS] [--tail N]
    kubectl depgate status [-n NS]          (every namespace unless -n)
    kubectl depgate graph [-n NS | -A] [-o text|dot|svg|png|mermaid]   (depgate graph: the picture)

`why` reads the pod (or the workload's pods: a CronJob's are those of its Jobs), finds the init
container it is on, the policy that gates its workload (the `depgate.io/policy` annotation render puts
on it, else the policy whose status lists it; a Job's pod also looks at the CronJob that made the Job)
and that precondition's entry in the policy's status (state, reason, message, since), and the last log
lines of the container. A pod held at depgate's scheduling gate (made before its policy) says so.
Only `Cluster` talks to the API server (the `kubernetes` client, plain reads); the text comes from
pure functions of the objects as the API returns them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from depgate import gates, plan, registry
from depgate.constants import BLOCKING_STATES, CONTAINER_PREFIX, GROUP, PLURAL, POLICY_ANNOTATION, VERSION
from depgate.registry import short_name
from depgate.status import pod_gate

Obj = Mapping[str, Any]
Workload = tuple[str, str]  # (kind, name): ("StatefulSet", "db")
DEFAULT_TAIL = 10
MAX_PODS_SHOWN = 5  # `why deploy/NAME` explains at most this many held pods, then counts the rest
POD_WORDS = ("pod", "pods", "po")


def _kind_words() -> dict[str, str]:
    """What kubectl accepts for each gated kind: deploy, deployment, deployments, deployment.apps, ..."""
    out = {}
    for wk in registry.WORKLOAD_KINDS.values():
        lower, group = wk.kind.lower(), wk.api.group
        for word in (lower, wk.api.plural, f"{lower}.{group}", f"{wk.api.plural}.{group}", wk.short):
            if word:
                out[word] = wk.kind
    return out


KIND_WORDS = _kind_words()


# --------------------------------------------------------------------------- reading objects (pure)


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _targets(policy: Any) -> list[str]:
    """status.targets as "deploy/web" (kubectl's short names); a plain name (the format before other
    kinds could be targeted) is a Deployment's."""
    out = []
    for t in _items(_get(policy, "status", "targets")):
        if isinstance(t, Mapping) and t.get("name"):
            out.append(f"{short_name(str(t.get('kind') or 'Deployment'))}/{t['name']}")
        elif isinstance(t, str) and t:
            out.append(f"deploy/{t}")
    return out


def _targets_workload(policy: Any, workload: Workload) -> bool:
    kind, name = workload
    return f"{short_name(kind)}/{name}" in _targets(policy)


def _words(workload: Workload | str | None) -> str | None:
    """("StatefulSet", "db") -> "StatefulSet db"; a plain name is a Deployment's."""
    if workload is None:
        return None
    kind, name = ("Deployment", workload) if isinstance(workload, str) else workload
    return f"{kind} {name}"


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def age(then: datetime | None, now: datetime) -> str:
    """kubectl's style of age: 45s, 3m12s, 2h5m, 4d3h."""
    if then is None:
        return "-"
    secs = max(0, int((now - then).total_seconds()))
    if secs < 60:
        return f"{secs}s"
    mins, secs = divmod(secs, 60)
    if mins < 60:
        return f"{mins}m{secs}s" if mins < 10 else f"{mins}m"
    hours, mins = divmod(mins, 60)
    if hours < 24:
        return f"{hours}h{mins}m" if mins else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def since_text(entry: Obj, now: datetime) -> str:
    since = entry.get("since")
    if not isinstance(since, str):
        return "-"
    return f"{since} ({age(parse_time(since), now)} ago)"


def precondition_of(container: str) -> str | None:
    """`depgate-db` -> `db`; None for an init container that is not depgate's."""
    return container[len(CONTAINER_PREFIX):] if container.startswith(CONTAINER_PREFIX) else None


def status_entry(policy: Obj | None, precondition: str) -> Obj:
    for entry in _items(_get(policy, "status", "preconditions")):
        if isinstance(entry, Mapping) and entry.get("name") == precondition:
            return entry
    return {}


def container_state(pod: Obj, container: str, said: str = "") -> str:
    """What the kubelet says about one init container of the pod, in one line (without the last
    termination message when it is `said`, already shown)."""
    cs = next((c for c in _items(_get(pod, "status", "initContainerStatuses"))
               if isinstance(c, Mapping) and c.get("name") == container), None)
    if cs is None:
        return "not started"
    parts = []
    state = cs.get("state") or {}
    if isinstance(state.get("waiting"), Mapping):
        parts.append(f"waiting ({state['waiting'].get('reason') or 'no reason given'})")
    elif isinstance(state.get("running"), Mapping):
        started = state["running"].get("startedAt")
        parts.append(f"running since {started}" if started else "running")
    elif isinstance(state.get("terminated"), Mapping):
        parts.append(f"exited {state['terminated'].get('exitCode')}")
    restarts = cs.get("restartCount") or 0
    if restarts:
        parts.append(f"restarted {restarts} time{'s' if restarts != 1 else ''}")
    last = _get(cs, "lastState", "terminated")
    if isinstance(last, Mapping):
        message = " ".join(str(last.get("message") or "").split())
        parts.append(f"last exit {last.get('exitCode')}" + (f": {message}" if message and message != said else ""))
    return "; ".join(parts)


def init_progress(pod: Obj) -> tuple[int, int]:
    """(init containers done, init containers in all): kubectl's Init:done/all."""
    gate = pod_gate(pod)
    names = [str(c.get("name")) for c in _items(_get(pod, "spec", "initContainers")) if isinstance(c, Mapping)]
    return sum(1 for n in names if n in gate.passed), len(names)


@dataclass(frozen=True)
class Why:
    """Where one pod stands, and what depgate says about it."""

    pod: Obj
    workload: Workload | str | None  # the workload the pod belongs to ((kind, name); a plain name: a Deployment)
    policy: Obj | None  # the DependencyPolicy gating it
    logs: str | None  # the last lines of the init container it is on
    logs_unavailable: str | None  # why there are none


def explain(why: Why, now: datetime, tail: int = DEFAULT_TAIL) -> str:
    """The text of `kubectl depgate why` for one pod."""
    pod = why.pod
    ns, name = _get(pod, "metadata", "namespace"), _get(pod, "metadata", "name")
    gate = pod_gate(pod)
    done, total = init_progress(pod)
    inits = [str(c.get("name")) for c in _items(_get(pod, "spec", "initContainers")) if isinstance(c, Mapping)]
    ours = [n for n in inits if precondition_of(n) is not None]
    lines = []
    policy_name = _get(why.policy, "metadata", "name")
    workload = _words(why.workload)
    if not ours and gates.held(pod):
        lines.append(f"pod {ns}/{name} is held at depgate's scheduling gate {gates.GATE}, without depgate's "
                     "init containers")
        if policy_name:
            lines.append(f"  policy:        {ns}/{policy_name} (gates {', '.join(_targets(why.policy)) or '-'})")
            wkind, wname = ("Deployment", why.workload) if isinstance(why.workload, str) else why.workload or ("", "")
            wk = registry.WORKLOAD_KINDS.get(wkind)
            if wk is not None:
                message = gates.held_message(str(policy_name), wkind, wname, wk.template_mutable)
                lines.append(f"  why:           {message}")
        else:
            lines.append("  policy:        none found (no DependencyPolicy claims "
                         + (f"{workload}): depgate lifts the gate after its grace delay)" if workload
                            else "the pod's workload)"))
        return "\n".join(lines) + "\n"
    if not ours:
        lines.append(f"pod {ns}/{name} has no depgate init containers"
                     + (f" ({workload} is not gated)" if workload else ""))
        return "\n".join(lines) + "\n"
    if gate.blocker is None:
        if all(n in gate.passed for n in inits):
            lines.append(f"pod {ns}/{name} has passed all its init containers ({done}/{total}), "
                         f"the {len(ours)} of depgate included")
        else:
            lines.append(f"pod {ns}/{name} is Init:{done}/{total} and has not started an init container yet "
                         f"(phase {_get(pod, 'status', 'phase') or 'unknown'}: not scheduled, or pulling images)")
        if policy_name:
            lines.append(f"  policy:        {ns}/{policy_name}")
        return "\n".join(lines) + "\n"
    blocker = gate.blocker
    precondition = precondition_of(blocker)
    position = inits.index(blocker) + 1 if blocker in inits else done + 1
    if precondition is None:
        lines.append(f"pod {ns}/{name} is Init:{done}/{total}, on init container {blocker} "
                     f"({position} of {total}), which is not depgate's")
        lines.append(f"  in this pod:   {container_state(pod, blocker)}")
        return "\n".join(lines) + "\n"
    lines.append(f"pod {ns}/{name} is Init:{done}/{total}, on init container {blocker} ({position} of {total})")
    if why.policy is None:
        lines.append("  policy:        none found (no DependencyPolicy claims "
                     + (f"{workload})" if workload else "the pod's workload)"))
    else:
        targets = ", ".join(_targets(why.policy)) or "-"
        lines.append(f"  policy:        {ns}/{policy_name} (gates {targets})")
    entry = status_entry(why.policy, precondition)
    kind = entry.get("type")
    lines.append(f"  precondition:  {precondition}" + (f" ({kind})" if kind else ""))
    if why.policy is not None:
        if entry:
            lines.append(f"  state:         {entry.get('state') or '-'} since {since_text(entry, now)}")
            lines.append(f"  reason:        {entry.get('reason') or '-'}")
            lines.append(f"  message:       {entry.get('message') or '-'}")
            if entry.get("blockedPods"):
                lines.append(f"  blocked pods:  {entry['blockedPods']}")
        else:
            lines.append("  state:         not in the policy's status yet (the operator has not reported on it)")
    detail = gate.detail
    if detail is not None and detail.informative and (detail.reason, detail.message) != (
            entry.get("reason"), entry.get("message")):  # the pod tells more than the status (or else)
        lines.append(f"  pod says:      {detail.reason}: {detail.message}")
    said = f"{entry.get('reason')}: {entry.get('message')}" if entry else ""
    lines.append(f"  in this pod:   {container_state(pod, blocker, said)}")
    later = [n for n in inits[position:] if precondition_of(n) is not None]
    if later:
        lines.append(f"  then:          {', '.join(later)}")
    if why.logs is not None:
        shown = why.logs.rstrip("\n").splitlines()[-tail:]
        lines.append(f"logs of {blocker} (last {len(shown)} line{'s' if len(shown) != 1 else ''}):")
        lines += [f"  {line}" for line in shown] or ["  (empty)"]
    else:
        lines.append(f"logs of {blocker}: unavailable ({why.logs_unavailable or 'no reason given'})")
    return "\n".join(lines) + "\n"


def held(pod: Obj) -> bool:
    """Is the pod on one of depgate's init containers?"""
    blocker = pod_gate(pod).blocker
    return blocker is not None and precondition_of(blocker) is not None


def controller(obj: Obj | None) -> Obj | None:
    """The ownerReference with controller: true."""
    return next((o for o in _items(_get(obj, "metadata", "ownerReferences"))
                 if isinstance(o, Mapping) and o.get("controller")), None)


def jobs_of_cron_job(cron_job: Obj, jobs: Sequence[Obj]) -> list[Obj]:
    """The Jobs the CronJob made (their controller is it, by uid), oldest name first."""
    uid = _get(cron_job, "metadata", "uid")
    return sorted((j for j in jobs if (c := controller(j)) is not None and c.get("kind") == registry.CRON_JOB.kind
                   and c.get("uid") == uid), key=lambda j: str(_get(j, "metadata", "name")))


def pods_of_workload(workload: Workload, pods: Sequence[Obj], jobs: Sequence[str] = ()) -> list[Obj]:
    """The pods that belong to the workload, as the operator tells (plan.workload_of_pod); a CronJob's are
    those of its Jobs (`jobs`, their names). Sorted by name."""
    kind, name = workload
    wanted = {(registry.JOB.kind, j) for j in jobs} if kind == registry.CRON_JOB.kind else {(kind, name)}
    return sorted((p for p in pods if plan.workload_of_pod(p) in wanted),
                  key=lambda p: str(_get(p, "metadata", "name")))


def workload_head(workload: Workload, ns: str, policy: Obj | None, pods: Sequence[Obj], jobs: int | None) -> str:
    """The first line of `why` for a workload: which policy gates it, how many of its pods are held."""
    kind, name = workload
    waiting = sum(1 for p in pods if held(p))
    at_gate = sum(1 for p in pods if gates.held(p))
    gated = f"gated by policy {ns}/{_get(policy, 'metadata', 'name')}" if policy else "no DependencyPolicy gates it"
    counted = f"{jobs} job{'s' if jobs != 1 else ''}, " if jobs is not None else ""
    head = (f"{kind.lower()} {ns}/{name}: {gated}; {counted}{len(pods)} pod{'s' if len(pods) != 1 else ''}, "
            f"{waiting} held in depgate's init containers")
    if at_gate:
        head += f", {at_gate} at its scheduling gate"
    return head + "\n"


def selector_string(selector: Obj | None) -> str:
    """A label selector as the `labelSelector` query parameter spells it."""
    parts = [f"{k}={v}" for k, v in sorted((_get(selector, "matchLabels") or {}).items())]
    for expr in _items(_get(selector, "matchExpressions")):
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def status_rows(policies: Sequence[Obj], now: datetime, *, preconditions: bool = False) -> list[list[str]]:
    """The rows of `kubectl depgate status`, header first."""
    if preconditions:
        rows = [["NAMESPACE", "POLICY", "PRECONDITION", "TYPE", "STATE", "SINCE", "BLOCKED-PODS", "REASON"]]
    else:
        rows = [["NAMESPACE", "POLICY", "TARGETS", "READY", "BLOCKING", "BLOCKED-FOR", "PODS", "REASON"]]
    for p in sorted(policies, key=lambda p: (str(_get(p, "metadata", "namespace")), str(_get(p, "metadata", "name")))):
        ns, name = str(_get(p, "metadata", "namespace") or "-"), str(_get(p, "metadata", "name") or "-")
        entries = [e for e in _items(_get(p, "status", "preconditions")) if isinstance(e, Mapping)]
        if preconditions:
            rows += [[ns, name, str(e.get("name") or "-"), str(e.get("type") or "-"), str(e.get("state") or "-"),
                      age(parse_time(e.get("since")), now), str(e.get("blockedPods") or 0),
                      str(e.get("reason") or "-")] for e in entries]
            continue
        ready = next((c for c in _items(_get(p, "status", "conditions"))
                      if isinstance(c, Mapping) and c.get("type") == "Ready"), {})
        blocking = [e for e in entries if e.get("state") in BLOCKING_STATES]
        oldest = min((t for t in (parse_time(e.get("since")) for e in blocking) if t), default=None)
        pods = _get(p, "status", "pods") or {}
        pods_text = (f"{pods.get('ready', 0)}/{pods.get('total', 0)} ready, {pods.get('initializing', 0)} in init"
                     if pods else "-")
        rows.append([ns, name, ",".join(_targets(p)) or "-",
                     str(ready.get("status") or "-"),
                     ",".join(str(e.get("name")) for e in blocking) or "-",
                     age(oldest, now) if oldest else "-", pods_text,
                     str(ready.get("reason") or "-") if ready.get("status") != "True" else "-"])
    return rows


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


# --------------------------------------------------------------------------- the API server


class NotFound(Exception):
    pass


def api_message(e: Any) -> str:
    """The `message` of an API server's Status answer, else the HTTP reason."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason or "")
    except (ValueError, AttributeError, TypeError):
        return str(e.reason or "")


class Cluster:
    """Plain reads through the `kubernetes` client, as raw JSON objects (the API's camelCase)."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        cfg: Any = config  # partly untyped in the client
        try:
            self.api: Any = cfg.new_client_from_config(config_file=kubeconfig, context=context)
        except cfg.ConfigException:
            if kubeconfig or context:
                raise
            cfg.load_incluster_config()
            self.api = client.ApiClient()
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.ApiException = client.ApiException
        self.kubeconfig, self.context = kubeconfig, context

    def _raw(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        resp = call(*args, _preload_content=False, _request_timeout=30, **kwargs)
        return dict(json.loads(resp.data))

    def namespace(self) -> str:
        """The current context's namespace, else `default` (kubectl's rule)."""
        from kubernetes import config

        try:
            contexts, active = config.list_kube_config_contexts(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]
        except Exception:  # in-cluster: no kubeconfig
            return "default"
        chosen = next((c for c in contexts if c.get("name") == self.context), active) if self.context else active
        return str(_get(chosen, "context", "namespace") or "default")

    def pod(self, ns: str, name: str) -> dict[str, Any]:
        try:
            return self._raw(self.core.read_namespaced_pod, name, ns)
        except self.ApiException as e:
            if e.status == 404:
                raise NotFound(f'pods "{name}" not found in namespace {ns}') from None
            raise

    def workload(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        api = registry.WORKLOAD_KINDS[kind].api
        try:
            return dict(self.custom.get_namespaced_custom_object(api.group, api.version, ns, api.plural, name))
        except self.ApiException as e:
            if e.status == 404:
                return None
            raise

    def workloads_of(self, pod: Obj) -> list[Workload]:
        """The pod's workload as the operator tells (plan.workload_of_pod), then, for a Job a CronJob made,
        that CronJob: the candidates a policy may gate, the pod's own controller first."""
        found = plan.workload_of_pod(pod)
        if found is None:
            return []
        if found[0] != registry.JOB.kind:
            return [found]
        job = self.workload(registry.JOB.kind, str(_get(pod, "metadata", "namespace")), found[1])
        owner = controller(job)
        if owner is not None and owner.get("kind") == registry.CRON_JOB.kind and owner.get("name"):
            return [found, (registry.CRON_JOB.kind, str(owner["name"]))]
        return [found]

    def policy(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
        except self.ApiException as e:
            if e.status == 404:
                return None
            raise

    def policies(self, ns: str | None) -> list[dict[str, Any]]:
        if ns is None:
            out = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            out = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        return [dict(p) for p in out.get("items") or []]

    def policy_of(self, ns: str, candidates: Sequence[Workload]) -> tuple[dict[str, Any] | None, Workload | None]:
        """The policy named by a candidate workload's annotation, else one whose status lists the candidate
        as a target (in the candidates' order), and that workload; (None, the last candidate) for none."""
        for kind, name in candidates:
            named = _get(self.workload(kind, ns, name), "metadata", "annotations", POLICY_ANNOTATION)
            if isinstance(named, str) and named:
                found = self.policy(ns, named)
                if found is not None:
                    return found, (kind, name)
        if candidates:
            policies = self.policies(ns)
            for candidate in candidates:
                found = next((p for p in policies if _targets_workload(p, candidate)), None)
                if found is not None:
                    return found, candidate
        return None, (candidates[-1] if candidates else None)

    def pods(self, ns: str, selector: Obj | None) -> list[dict[str, Any]]:
        out = self._raw(self.core.list_namespaced_pod, ns, label_selector=selector_string(selector))
        return [dict(p) for p in out.get("items") or []]

    def jobs(self, ns: str) -> list[dict[str, Any]]:
        api = registry.JOB
        out = self.custom.list_namespaced_custom_object(api.group, api.version, ns, api.plural)
        return [dict(j) for j in out.get("items") or []]

    def logs(self, pod: Obj, container: str, tail: int) -> tuple[str | None, str | None]:
        """(the last `tail` lines, None) or (None, why there are none). A container that restarted and
        waits to run again has no log of its own yet: the previous run's is the one that says why."""
        ns, name = str(_get(pod, "metadata", "namespace")), str(_get(pod, "metadata", "name"))
        cs: Obj = next((c for c in _items(_get(pod, "status", "initContainerStatuses"))
                        if c.get("name") == container), {})
        previous = bool(cs.get("restartCount")) and isinstance(_get(cs, "state", "waiting"), Mapping)
        try:
            text = self.core.read_namespaced_pod_log(name, ns, container=container, tail_lines=tail,
                                                     previous=previous, _request_timeout=15)
        except self.ApiException as e:
            return None, f"the API server answered {e.status}: {api_message(e)}"
        except Exception as e:  # a node that does not answer: connection errors, timeouts
            return None, f"{type(e).__name__}: {e}"
        return str(text), None


# --------------------------------------------------------------------------- commands


USAGE_KINDS = "pod/, deploy/, sts/, ds/, job/ or cj/NAME"


def _why(cluster: Cluster, ns: str, target: str, tail: int, now: datetime) -> tuple[str, int]:
    word, sep, name = target.partition("/")
    if not sep or not name:
        return f"error: expected {USAGE_KINDS}, got {target!r}\n", 2
    word = word.lower()
    if word in POD_WORDS:
        pod = cluster.pod(ns, name)
        policy, owner = cluster.policy_of(ns, cluster.workloads_of(pod))
        return _why_pod(cluster, pod, owner, policy, tail, now), 0
    kind = KIND_WORDS.get(word)
    if kind is None:
        return f"error: kubectl depgate why explains {USAGE_KINDS}, not {word}/\n", 2
    obj = cluster.workload(kind, ns, name)
    if obj is None:
        api = registry.WORKLOAD_KINDS[kind].api
        raise NotFound(f'{api.plural}.{api.group} "{name}" not found in namespace {ns}')
    workload: Workload = (kind, name)
    candidates = [workload]
    maker = controller(obj)
    if kind == registry.JOB.kind and maker is not None and maker.get("kind") == registry.CRON_JOB.kind:
        candidates.append((registry.CRON_JOB.kind, str(maker.get("name"))))  # its CronJob's policy gates it
    policy, _ = cluster.policy_of(ns, candidates)
    if kind == registry.CRON_JOB.kind:
        jobs = [str(_get(j, "metadata", "name")) for j in jobs_of_cron_job(obj, cluster.jobs(ns))]
        pods = pods_of_workload(workload, cluster.pods(ns, None), jobs)
    else:
        jobs = []
        pods = pods_of_workload(workload, cluster.pods(ns, _get(obj, "spec", "selector")))
    head = workload_head(workload, ns, policy, pods, len(jobs) if kind == registry.CRON_JOB.kind else None)
    waiting = [p for p in pods if held(p) or gates.held(p)]
    if not waiting:
        blocking = _items(_get(policy, "status", "blocking"))
        return head + (f"  blocking:      {', '.join(map(str, blocking))}\n" if blocking else ""), 0
    parts = [head] + ["\n" + _why_pod(cluster, p, workload, policy, tail, now) for p in waiting[:MAX_PODS_SHOWN]]
    if len(waiting) > MAX_PODS_SHOWN:
        parts.append(f"\n... and {len(waiting) - MAX_PODS_SHOWN} more held pods\n")
    return "".join(parts), 0


def _why_pod(cluster: Cluster, pod: Obj, workload: Workload | None, policy: Obj | None, tail: int,
             now: datetime) -> str:
    blocker = pod_gate(pod).blocker
    logs: str | None = None
    unavailable: str | None = None
    if blocker is not None and precondition_of(blocker) is not None:
        logs, unavailable = cluster.logs(pod, blocker, tail)
    return explain(Why(pod, workload, policy, logs, unavailable), now, tail)


def _connection_flags(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-n", "--namespace", default=default, help="the namespace (default: the current context's)")
    p.add_argument("--kubeconfig", default=default,
                   help="path to a kubeconfig (default: $KUBECONFIG, then ~/.kube/config)")
    p.add_argument("--context", default=default, help="the kubeconfig context to use")


def parser() -> argparse.ArgumentParser:
    """The flags kubectl users type go before or after the command (`kubectl depgate -n apps why pod/x`)."""
    p = argparse.ArgumentParser(prog="kubectl depgate", description=__doc__.split("\n")[0])
    _connection_flags(p, None)
    after = argparse.ArgumentParser(add_help=False)
    _connection_flags(after, argparse.SUPPRESS)  # a subcommand's flag wins; its absence keeps the one before
    sub = p.add_subparsers(dest="command", required=True)
    why = sub.add_parser("why", parents=[after], help="why a pod (or a workload's pods) is still in Init")
    why.add_argument("target", help=USAGE_KINDS)
    why.add_argument("--tail", type=int, default=DEFAULT_TAIL, help="log lines of the init container to show")
    status = sub.add_parser("status", parents=[after], help="a table of every policy (every namespace unless -n)")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (the default)")
    status.add_argument("-p", "--preconditions", action="store_true", help="one row per precondition")
    graph = sub.add_parser("graph", parents=[after], help="the dependency graph across policies (depgate graph)")
    graph.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    graph.add_argument("-f", "--filename", action="append", default=[], metavar="PATH",
                       help="read the objects from files instead of the cluster")
    graph.add_argument("-o", "--output", default="text", help="text, dot, svg, png or mermaid")
    return p


def graph_argv(args: argparse.Namespace) -> list[str]:
    """`kubectl depgate graph`'s flags as `depgate graph` takes them."""
    out = ["-o", args.output, *(a for f in args.filename for a in ("-f", f))]
    if args.all_namespaces:
        out.append("-A")
    elif args.namespace:
        out += ["-n", args.namespace]
    for flag, value in (("--kubeconfig", args.kubeconfig), ("--context", args.context)):
        if value:
            out += [flag, value]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    from kubernetes.client import ApiException
    from kubernetes.config import ConfigException

    if args.command == "graph":
        from depgate import graph_cli

        return graph_cli.main(graph_argv(args))
    now = datetime.now(UTC)
    try:
        cluster = Cluster(args.kubeconfig, args.context)
        if args.command == "why":
            text, code = _why(cluster, args.namespace or cluster.namespace(), args.target, max(1, args.tail), now)
            (sys.stdout if code == 0 else sys.stderr).write(text)
            return code
        ns = None if args.all_namespaces or not args.namespace else args.namespace
        policies = cluster.policies(ns)
        if not policies:
            print("No DependencyPolicies found" + (f" in namespace {ns}." if ns else "."), file=sys.stderr)
            return 0
        sys.stdout.write(table(status_rows(policies, now, preconditions=args.preconditions)))
        return 0
    except NotFound as e:
        print(f"Error from server (NotFound): {e}", file=sys.stderr)
        return 1
    except ApiException as e:
        print(f"Error from server ({e.reason}): {api_message(e)}", file=sys.stderr)
        return 1
    except ConfigException as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
