"""API objects -> the operator's verdict on each api precondition (pure: standard library only).

Each judge takes the objects exactly as the API server returns them (plain dicts; None when the
object does not exist) and returns a `Verdict`. The operator judges every precondition that
depgate.registry says it judges, once for all pods, and writes the verdict into the policy's
status; the init container `depgate wait verdict` (depgate.waiter.status_watch) only reads it.

Messages are short and concrete. They name objects, counts and key names; they never carry a
Secret's values or a response body.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from depgate import registry

# The states a verdict can have (re-exported: callers read them from here too)
from depgate.constants import BLOCKING as BLOCKING
from depgate.constants import FAILED as FAILED
from depgate.constants import PENDING as PENDING
from depgate.constants import SATISFIED as SATISFIED
from depgate.constants import STATES as STATES
from depgate.constants import UNKNOWN as UNKNOWN
from depgate.registry import SERVICE_NAME_LABEL as SERVICE_NAME_LABEL

_KEY_KINDS: Final = (registry.SECRET.kind, registry.CONFIG_MAP.kind)


@dataclass(frozen=True)
class Verdict:
    """The judgement of one precondition.

    state: Satisfied | Blocking | Pending | Failed | Unknown.
    reason: a CamelCase class (NoReadyEndpoints, JobFailed, ...).
    satisfied_uid: the uid of the Job seen Complete (job preconditions only).
    """

    state: str
    reason: str
    message: str
    satisfied_uid: str | None = None


# --------------------------------------------------------------------------- helpers


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """obj[path[0]][path[1]]..., or None when any step is missing or not a mapping."""
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _int(value: Any) -> int:
    """A non-negative count from a status field; missing or malformed counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)


def _conditions(obj: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    conds = _get(obj, "status", "conditions")
    if not isinstance(conds, list):
        return []
    return [c for c in conds if isinstance(c, Mapping)]


def _condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in _conditions(obj):
        if cond.get("type") == ctype:
            return cond
    return None


def _is_true(cond: Mapping[str, Any] | None) -> bool:
    return cond is not None and str(cond.get("status")) == "True"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _clip(text: str, limit: int = 200) -> str:
    """One line, at most `limit` characters (conditions' messages are other controllers' text)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- service


def _endpoint_counts(endpoint: Mapping[str, Any]) -> bool:
    """Ready and not terminating (a missing `ready` means ready, a missing `terminating` means not)."""
    conditions = endpoint.get("conditions")
    if not isinstance(conditions, Mapping):
        conditions = {}
    if conditions.get("ready") is False:
        return False
    return conditions.get("terminating") is not True


def _endpoint_keys(endpoint: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The identities of one endpoint: its target's uid (a pod has one per address family) and
    each of its addresses (a mirrored slice repeats the address of the original)."""
    keys: list[tuple[str, str]] = []
    uid = _get(endpoint, "targetRef", "uid")
    if isinstance(uid, str) and uid:
        keys.append(("uid", uid))
    addresses = endpoint.get("addresses")
    if isinstance(addresses, list):
        keys.extend(("addr", a) for a in addresses if isinstance(a, str) and a)
    return keys


def count_ready_endpoints(service_name: str, endpointslices: Iterable[Mapping[str, Any]],
                          namespace: str | None = None) -> int:
    """Distinct ready, non-terminating endpoints of a Service across all its EndpointSlices.

    Only slices labelled `kubernetes.io/service-name=<service_name>` (and in `namespace`, when
    given) count. One backend can appear several times: in an IPv4 and an IPv6 slice (same
    targetRef uid), or in a mirrored slice (same address). Endpoints sharing any identity are one
    backend (connected components over uid and address)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(key: tuple[str, str]) -> tuple[str, str]:
        root = key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:  # path compression
            parent[key], key = root, parent[key]
        return root

    anonymous = 0
    for eps in endpointslices:
        if _get(eps, "metadata", "labels", SERVICE_NAME_LABEL) != service_name:
            continue
        slice_ns = _get(eps, "metadata", "namespace")
        if namespace is not None and slice_ns is not None and slice_ns != namespace:
            continue
        endpoints = eps.get("endpoints")
        if not isinstance(endpoints, list):
            continue
        for endpoint in endpoints:
            if not isinstance(endpoint, Mapping) or not _endpoint_counts(endpoint):
                continue
            keys = _endpoint_keys(endpoint)
            if not keys:
                anonymous += 1  # no uid, no address: malformed, but the API says it is an endpoint
                continue
            for key in keys:
                parent.setdefault(key, key)
            first = find(keys[0])
            for key in keys[1:]:
                other = find(key)
                if other != first:
                    parent[other] = first
    return len({find(k) for k in parent}) + anonymous


def judge_service(name: str, service: Mapping[str, Any] | None,
                  endpointslices: Sequence[Mapping[str, Any]], min_ready: int) -> Verdict:
    """Satisfied when the Service exists and has at least `min_ready` distinct ready endpoints."""
    if service is None:
        return Verdict(BLOCKING, "ServiceNotFound", f"service {name} not found")
    if _get(service, "spec", "type") == "ExternalName":
        return Verdict(BLOCKING, "ExternalNameService",
                       f"service {name} is of type ExternalName and has no endpoints; "
                       "use a dns or tcp precondition")
    namespace = _get(service, "metadata", "namespace")
    ready = count_ready_endpoints(name, endpointslices, namespace if isinstance(namespace, str) else None)
    if ready >= min_ready:
        return Verdict(SATISFIED, "EndpointsReady",
                       f"service {name} has {_plural(ready, 'ready endpoint')}, wants {min_ready}")
    return Verdict(BLOCKING, "NoReadyEndpoints",
                   f"service {name} has {_plural(ready, 'ready endpoint')}, wants {min_ready}")


# --------------------------------------------------------------------------- job


def judge_job(name: str, job: Mapping[str, Any] | None, remembered_uid: str | None) -> Verdict:
    """Satisfied when the Job is Complete, or when it is gone after we saw it Complete.

    `remembered_uid` is the uid of the Job last seen Complete (the status's `satisfiedUID`). A Job
    deleted by its TTL after completion stays satisfied; a new Job of the same name (a re-run,
    another uid) blocks until it completes in turn."""
    if job is None:
        if remembered_uid:
            return Verdict(SATISFIED, "CompletedAndDeleted",
                           f"job {name} completed (uid {remembered_uid}) and was deleted since",
                           satisfied_uid=remembered_uid)
        return Verdict(BLOCKING, "JobNotFound", f"job {name} not found")
    uid = _get(job, "metadata", "uid")
    uid = uid if isinstance(uid, str) and uid else None
    if _is_true(_condition(job, "Complete")):
        return Verdict(SATISFIED, "JobComplete", f"job {name} completed", satisfied_uid=uid)
    for ctype in ("Failed", "FailureTarget"):
        cond = _condition(job, ctype)
        if _is_true(cond):
            assert cond is not None
            detail = ": ".join(_clip(str(cond[k])) for k in ("reason", "message") if cond.get(k))
            return Verdict(FAILED, "JobFailed", f"job {name} failed" + (f": {detail}" if detail else ""))
    status = _get(job, "status") or {}
    counts = (f"{_int(_get(status, 'active'))} active, {_int(_get(status, 'succeeded'))} succeeded, "
              f"{_int(_get(status, 'failed'))} failed")
    if _get(job, "spec", "suspend") is True or _is_true(_condition(job, "Suspended")):
        return Verdict(BLOCKING, "JobSuspended", f"job {name} is suspended ({counts})")
    if remembered_uid and uid and uid != remembered_uid:
        return Verdict(BLOCKING, "JobRerunning",
                       f"job {name} was recreated (uid {uid}) and has not completed yet ({counts})")
    return Verdict(BLOCKING, "JobNotComplete", f"job {name} has not completed yet ({counts})")


# --------------------------------------------------------------------------- secret / configMap


def judge_keys(kind: str, name: str, obj: Mapping[str, Any] | None, keys: Iterable[str]) -> Verdict:
    """Satisfied when the Secret or ConfigMap exists and holds every key.

    A Secret's keys are in `data` (`stringData` is write-only, never returned on read); a
    ConfigMap's in `data` or `binaryData`. Only key names ever reach the message."""
    if kind not in _KEY_KINDS:
        return Verdict(UNKNOWN, "UnsupportedKind", f"kind {kind} has no keys to check")
    label = kind.lower()
    if obj is None:
        return Verdict(BLOCKING, "NotFound", f"{label} {name} not found")
    fields = ("data",) if kind == "Secret" else ("data", "binaryData")
    present: set[str] = set()
    for field in fields:
        section = obj.get(field)
        if isinstance(section, Mapping):
            present.update(str(k) for k in section)
    wanted = list(dict.fromkeys(keys))
    missing = [k for k in wanted if k not in present]
    if missing:
        return Verdict(BLOCKING, "MissingKeys",
                       f"{label} {name} is missing {_plural(len(missing), 'key')}: {', '.join(missing)}")
    if not wanted:
        return Verdict(SATISFIED, "Exists", f"{label} {name} exists")
    return Verdict(SATISFIED, "KeysPresent", f"{label} {name} has {_plural(len(wanted), 'key')}")


# --------------------------------------------------------------------------- refused reads

SECRET_READER: Final = "depgate-secret-reader"  # the ClusterRole a namespace admin binds to enable `secret`
DEFAULT_OPERATOR_NAMESPACE: Final = "depgate-system"


def forbidden(kind: str, name: str, namespace: str, message: str,
              operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE) -> Verdict:
    """RBAC refused the operator's read of what a precondition names: Blocking, saying what to grant.

    Secrets: the operator reads them only in namespaces where depgate-secret-reader is bound to it
    (no cluster-wide read of every Secret); the message gives the one command a namespace admin runs.
    Anything else (a custom resource): a ClusterRole labelled depgate.io/aggregate-to-operator."""
    if kind == registry.SECRET.kind:
        # the command first: status messages are clipped (256 characters), and it is what to do
        return Verdict(BLOCKING, "Forbidden",
                       f"run `kubectl create rolebinding {SECRET_READER} -n {namespace} --clusterrole={SECRET_READER} "
                       f"--serviceaccount={operator_namespace}:depgate` (a namespace admin) to enable `secret` "
                       f"preconditions here: depgate may not read secret {name} ({message})")
    return Verdict(BLOCKING, "Forbidden",
                   f"depgate may not read what this precondition names ({message}); grant it with a ClusterRole "
                   'labelled depgate.io/aggregate-to-operator: "true"')


# --------------------------------------------------------------------------- workload


def _generation_lag(obj: Mapping[str, Any]) -> tuple[int, int] | None:
    """(observedGeneration, generation) when the controller has not caught up, else None."""
    generation = _get(obj, "metadata", "generation")
    if not isinstance(generation, int) or isinstance(generation, bool):
        return None
    observed = _get(obj, "status", "observedGeneration")
    observed = observed if isinstance(observed, int) and not isinstance(observed, bool) else 0
    return (observed, generation) if observed < generation else None


def judge_workload(kind: str, name: str, obj: Mapping[str, Any] | None, min_available: int) -> Verdict:
    """Satisfied when the workload has at least `min_available` available replicas (pods).

    Deployment: status.availableReplicas; StatefulSet: availableReplicas, else readyReplicas;
    DaemonSet: numberAvailable. The status is only trusted once the workload's controller has
    observed the current generation."""
    if kind not in registry.AWAITABLE_KINDS:
        return Verdict(UNKNOWN, "UnsupportedKind",
                       f"kind {kind} is not a Deployment, StatefulSet or DaemonSet")
    label = kind.lower()
    if obj is None:
        return Verdict(BLOCKING, "NotFound", f"{label} {name} not found")
    lag = _generation_lag(obj)
    if lag is not None:
        return Verdict(PENDING, "Progressing",
                       f"{label} {name}: controller has observed generation {lag[0]} of {lag[1]}")
    status = _get(obj, "status")
    if kind == "DaemonSet":
        available = _int(_get(status, "numberAvailable"))
        desired: int | None = _int(_get(status, "desiredNumberScheduled"))
        unit = "available pod"
    else:
        raw = _get(status, "availableReplicas")
        if kind == "StatefulSet" and not isinstance(raw, int):
            raw = _get(status, "readyReplicas")
        available = _int(raw)
        replicas = _get(obj, "spec", "replicas")
        desired = _int(replicas) if isinstance(replicas, int) else None
        unit = "available replica"
    of = f" of {desired}" if desired is not None else ""
    many = (desired if desired is not None else available) != 1
    text = f"{label} {name} has {available}{of} {unit}{'s' if many else ''}, wants {min_available}"
    if available >= min_available:
        return Verdict(SATISFIED, "Available", text)
    return Verdict(BLOCKING, "Unavailable", text)


# --------------------------------------------------------------------------- resource


def judge_resource(api_version: str, kind: str, name: str, obj: Mapping[str, Any] | None,
                   condition: str = "Ready", status: str = "True") -> Verdict:
    """Satisfied when the object's status.conditions[type == condition].status == status.

    A condition carrying an observedGeneration older than the object's generation is stale: the
    judgement waits (Pending) until the object's controller catches up."""
    label = f"{kind.lower()} {name}"
    if obj is None:
        return Verdict(BLOCKING, "NotFound", f"{label} ({api_version}) not found")
    cond = _condition(obj, condition)
    if cond is None:
        return Verdict(BLOCKING, "ConditionMissing", f"{label} has no condition {condition}")
    observed = cond.get("observedGeneration")
    generation = _get(obj, "metadata", "generation")
    if (isinstance(observed, int) and isinstance(generation, int) and not isinstance(observed, bool)
            and observed < generation):
        return Verdict(PENDING, "Progressing",
                       f"{label}: condition {condition} is for generation {observed} of {generation}")
    actual = str(cond.get("status"))
    if actual == status:
        return Verdict(SATISFIED, "ConditionMet", f"{label} has {condition}={actual}")
    detail = ": ".join(_clip(str(cond[k])) for k in ("reason", "message") if cond.get(k))
    return Verdict(BLOCKING, "ConditionNotMet",
                   f"{label} has {condition}={actual}, wants {status}" + (f" ({detail})" if detail else ""))
