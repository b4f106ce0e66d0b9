"""Gated from the first pod: what depgate's mutating webhook does to a workload at admission (pure).

A Deployment, StatefulSet, DaemonSet, CronJob or Job that a trusted, valid policy targets gets
depgate's init containers (and volumes, mounts, the claim annotation depgate.io/policy and the applied
hash depgate.io/applied) in the very request that creates or updates it, rendered exactly as the
reconcile renders them (render.rendered, render.apply_body, plan.body_hash). So its first pods carry
them, and the reconcile afterwards finds it up to date (plan.up_to_date): no write, no rollout. A Job,
whose pod template cannot change once created, is rendered on CREATE only.

    decide(obj, namespace, operation, policies, config, protected, now) -> Decision (patch, warnings)

The API server records who owns which field before the mutating webhooks run, so the patch also
writes the managedFields entry depgate's own server-side apply of the same body would leave (see
fields_v1): a release later takes everything back out, as it does after a reconcile's apply. And
`Pending` holds the policies the validating webhook has just admitted (or the operator listed at its
start) until the policies watch delivers them: a policy and its workload in one `kubectl apply`
arrive milliseconds apart.

Never a refusal: a workload no policy names is admitted unchanged; one that a policy names but cannot
be rendered into (render.render_errors: a fromContainer it lacks, a mount over an app's) is admitted
unchanged with a warning naming the policy field (the policy's status says it too). The operator's
webhook server (depgate.handlers) answers from the operator's memory, with no API request.

Standard library, depgate.registry, render, plan, spec and constants only (no client, no Kopf).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from depgate import plan, registry, render, spec
from depgate.constants import APPLIED_HASH_ANNOTATION, FIELD_MANAGER

Obj = dict[str, Any]
Op = dict[str, Any]  # one RFC 6902 operation

# Decision.outcome: what admission did (the label of depgate_workload_admission_seconds)
NOT_GATED: Final = "not-gated"  # not a kind a policy can target, or being deleted
UNTARGETED: Final = "untargeted"  # no trusted, valid policy of its namespace targets it
PROTECTED: Final = "protected"  # in --protected-namespaces: depgate gates nothing there
RENDERED: Final = "rendered"  # the patch renders depgate's init containers into it
UP_TO_DATE: Final = "up-to-date"  # it already carries them exactly (nothing to change)
RENDER_ERROR: Final = "render-error"  # a policy targets it but cannot be rendered into it: admitted unchanged
IMMUTABLE: Final = "immutable"  # an UPDATE of a Job (its pod template cannot change): admitted unchanged
OUTCOMES: Final = (NOT_GATED, UNTARGETED, PROTECTED, RENDERED, UP_TO_DATE, RENDER_ERROR, IMMUTABLE)
# (the handler adds "error": an exception, logged; the workload admitted unchanged)


@dataclass(frozen=True)
class Decision:
    outcome: str
    policy: str | None = None  # the policy that gates the object (None: none does)
    patch: tuple[Op, ...] = ()  # RFC 6902, against the object as admitted; empty: admit unchanged
    warnings: tuple[str, ...] = ()  # to the client (kubectl prints them)
    result: Mapping[str, Any] | None = field(default=None, compare=False)  # the object once patched


def decide(obj: Mapping[str, Any], namespace: str | None, operation: str, policies: Iterable[spec.Policy],
           config: render.RenderConfig, protected: frozenset[str] = frozenset(), now: str | None = None) -> Decision:
    """What admission does to `obj` (the AdmissionReview's request.object) in `namespace` (the
    request's). `policies`: the namespace's valid policies whose author verifies, none being deleted;
    `now`: the time of depgate's managedFields entry (RFC 3339; None: none is written)."""
    kind = registry.WORKLOAD_KINDS.get(str(obj.get("kind")))
    raw_md = obj.get("metadata")
    md: Mapping[str, Any] = raw_md if isinstance(raw_md, Mapping) else {}
    if kind is None or not kind.gated or md.get("deletionTimestamp"):
        return Decision(NOT_GATED)
    ns = namespace or md.get("namespace")
    if not ns:
        return Decision(NOT_GATED)
    # The object as the reconcile will read it: its namespace set (a CREATE's object may lack it), and
    # a name: an object created with generateName has none yet at admission (the API server makes it
    # after the mutating webhooks), so no workloadRef can name it; "" stands in, never written.
    workload: Obj = copy.deepcopy(dict(obj))
    generated = not md.get("name")
    workload["metadata"] = {**dict(md), "namespace": ns, **({"name": ""} if generated else {})}
    policy = plan.gating_policy([p for p in policies if p.namespace in (None, ns)], workload)
    if policy is None:
        return Decision(UNTARGETED)
    what = f"{workload['kind']} {ns}/{md.get('name') or md.get('generateName', '') + '*'}"
    if ns in protected:
        return Decision(PROTECTED, policy.name, warnings=(
            f"depgate: DependencyPolicy {policy.name} targets {what}, but namespace {ns} is protected "
            "(--protected-namespaces): depgate gates nothing there; admitted unchanged",))
    if operation != "CREATE" and not kind.template_mutable:
        return Decision(IMMUTABLE, policy.name)
    errors = render.render_errors(policy, workload, config)
    if errors:
        return Decision(RENDER_ERROR, policy.name, warnings=tuple(
            f"depgate: DependencyPolicy {policy.name} targets {what} but its init containers were not added: "
            f"{e}; admitted unchanged (the policy's status says so too)" for e in errors))
    # The workload as the reconcile's apply leaves it: render.rendered, with the applied hash of the
    # apply body the reconcile would send (so plan.up_to_date holds for it).
    body = render.apply_body(policy, workload, config)
    applied_hash = plan.body_hash(body)
    desired = render.rendered(policy, workload, config)
    desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = applied_hash
    desired["metadata"] = {k: v for k, v in desired["metadata"].items()
                           if (k != "namespace" or "namespace" in md) and (k != "name" or not generated)}
    ops = diff(obj, desired)
    if not ops:
        return Decision(UP_TO_DATE, policy.name, result=obj)
    if now is not None and isinstance(md.get("managedFields"), list):
        desired["metadata"]["managedFields"] = owned(md["managedFields"], body, applied_hash, now)
        ops.append({"op": "replace", "path": "/metadata/managedFields",
                    "value": copy.deepcopy(desired["metadata"]["managedFields"])})
    return Decision(RENDERED, policy.name, tuple(ops), result=desired)


# --------------------------------------------------------------------------- field ownership

# The API server records a request's managed fields before the mutating webhooks run, so what a
# webhook adds is owned by nobody: a later release (the reconcile's apply of an empty body as
# `depgate`) would not remove it. So the rendering at admission also writes the managedFields entry
# that depgate's own server-side apply of the same body would have left: manager depgate, operation
# Apply, the fields of apply_body. Keys of the list maps depgate's bodies contain (the Kubernetes
# schema's x-kubernetes-list-map-keys); every other list is atomic, and so are these structs
# (x-kubernetes-map-type: atomic).
LIST_MAP_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",), "volumes": ("name",),
    "env": ("name",), "volumeMounts": ("mountPath",), "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "protocol"), "imagePullSecrets": ("name",), "resourceClaims": ("name",),
    "claims": ("name",), "schedulingGates": ("name",), "hostAliases": ("ip",),
}
ATOMIC_STRUCTS: Final = frozenset({"secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef"})
STRIPPED: Final = ("apiVersion", "kind")  # not recorded, nor metadata's name and namespace


def fields_v1(body: Mapping[str, Any]) -> Obj:
    """The FieldsV1 set of a server-side apply body, as the API server records it for its manager."""
    top = {k: v for k, v in body.items() if k not in STRIPPED}
    md = {k: v for k, v in (top.get("metadata") or {}).items() if k not in ("name", "namespace", "resourceVersion")}
    if md:
        top["metadata"] = md
    else:
        top.pop("metadata", None)
    return _fields(top)


def _fields(value: Mapping[str, Any]) -> Obj:
    out: Obj = {}
    for key, child in value.items():
        if isinstance(child, Mapping) and child and key not in ATOMIC_STRUCTS:
            out[f"f:{key}"] = _fields(child)
        elif isinstance(child, list) and key in LIST_MAP_KEYS:
            items: Obj = {}
            for item in child:
                if not isinstance(item, Mapping):
                    continue
                ident = {k: item.get(k) for k in LIST_MAP_KEYS[key] if k in item}
                items["k:" + json.dumps(ident, separators=(",", ":"))] = {".": {}, **_fields(item)}
            out[f"f:{key}"] = items
        else:
            out[f"f:{key}"] = {}
    return out


def owned(managed: Sequence[Any], body: Mapping[str, Any], applied_hash: str, now: str) -> list[Any]:
    """The object's managedFields with depgate's Apply entry as its apply of `body` (with the applied
    hash, as the reconcile sends it) would leave it; every other manager's entry as it is."""
    md = dict(body.get("metadata") or {})
    sent = {**body, "metadata": {**md, "annotations": {**(md.get("annotations") or {}),
                                                      APPLIED_HASH_ANNOTATION: applied_hash}}}
    others = [m for m in managed if not (isinstance(m, Mapping) and m.get("manager") == FIELD_MANAGER
                                         and m.get("operation") == "Apply")]
    return [*copy.deepcopy(others), {"apiVersion": body.get("apiVersion"), "fieldsType": "FieldsV1",
                                     "fieldsV1": fields_v1(sent), "manager": FIELD_MANAGER, "operation": "Apply",
                                     "time": now}]


# --------------------------------------------------------------------------- policies just admitted

PENDING_SECONDS: Final = 30.0  # a policy admitted but never heard of by the watch (refused later, lost) is forgotten


class Pending:
    """Policies that depgate's own validating webhook has just admitted, until the policies watch
    delivers them. A policy and its workload in one `kubectl apply` arrive a few milliseconds apart:
    less than the watch event of the policy may take to reach the operator, so the workload's
    admission would not know it yet. Every policy write passes the validating webhook (failurePolicy
    Fail), which checked its author's rights at that moment: what it admitted is trusted. Thread-safe
    (the validating handler runs in a worker thread, the workloads' on the event loop)."""

    def __init__(self, ttl: float = PENDING_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], tuple[float, spec.Policy, str, int | None]] = {}

    def admitted(self, obj: Mapping[str, Any], now: float) -> None:
        """The validating webhook allowed this policy, its author checked (dry runs are not passed
        here); or it was listed, trusted, at the operator's start."""
        try:
            policy = spec.parse_policy(obj)
        except spec.SpecError:
            return  # an invalid policy targets nothing
        if policy.namespace:
            with self._lock:
                self._by_key[(policy.namespace, policy.name)] = (now, policy, _spec_text(obj), _version(obj))

    def heard(self, key: tuple[str, str], obj: Mapping[str, Any] | None) -> None:
        """The watch delivered this policy (None: deleted): once it carries the admitted spec, or a
        version newer than the one admitted or listed (an UPDATE's object carries the version it
        replaces), the watch's copy is the one to use."""
        with self._lock:
            entry = self._by_key.get(key)
            if entry is None:
                return
            seen = _version(obj) if obj is not None else None
            if obj is None or _spec_text(obj) == entry[2] or (
                    entry[3] is not None and seen is not None and seen > entry[3]):
                del self._by_key[key]

    def policies(self, namespace: str, known: Iterable[spec.Policy], now: float) -> list[spec.Policy]:
        """The namespace's policies as the watch knows them (`known`), each replaced or joined by the
        version just admitted when the watch has not delivered it yet."""
        out = {p.name: p for p in known}
        with self._lock:
            for key, (when, policy, _, _) in list(self._by_key.items()):
                if now - when > self.ttl:
                    del self._by_key[key]
                elif key[0] == namespace:
                    out[key[1]] = policy
        return list(out.values())

    def __len__(self) -> int:
        return len(self._by_key)


def _spec_text(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj.get("spec"), sort_keys=True, default=str)


def _version(obj: Mapping[str, Any]) -> int | None:
    """metadata.resourceVersion as the integer every etcd-backed API server hands out (None: absent)."""
    try:
        return int(str((obj.get("metadata") or {}).get("resourceVersion")))
    except ValueError:
        return None


# --------------------------------------------------------------------------- RFC 6902


def pointer(path: Sequence[str | int]) -> str:
    """The JSON pointer (RFC 6901) of a path: '~' and '/' in keys escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def diff(before: Any, after: Any, path: tuple[str | int, ...] = ()) -> list[Op]:
    """A JSON patch turning `before` into `after`, minimal per key: a key added whole, a value replaced
    where it differs, a key removed. Lists are replaced whole, except a list of the same length whose
    entries keep their names (a pod's containers): there, each changed entry is patched in place."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        ops: list[Op] = []
        for key in before:
            if key not in after:
                ops.append({"op": "remove", "path": pointer((*path, key))})
        for key, value in after.items():
            if key not in before:
                ops.append({"op": "add", "path": pointer((*path, key)), "value": copy.deepcopy(value)})
            else:
                ops += diff(before[key], value, (*path, key))
        return ops
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after) and all(
            isinstance(b, Mapping) and isinstance(a, Mapping) and "name" in a and b.get("name") == a.get("name")
            for b, a in zip(before, after, strict=True)):
        return [op for i, (b, a) in enumerate(zip(before, after, strict=True)) for op in diff(b, a, (*path, i))]
    if type(before) is not type(after) or before != after:
        return [{"op": "replace", "path": pointer(path), "value": copy.deepcopy(after)}]
    return []


class PatchError(ValueError):
    """An operation that does not apply to the document (its path names nothing)."""


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(doc: Mapping[str, Any], ops: Iterable[Mapping[str, Any]]) -> Obj:
    """`doc` with the operations add, remove, replace and test applied (RFC 6902), as a new object."""
    out: Any = copy.deepcopy(dict(doc))
    for op in ops:
        tokens = [_unescape(t) for t in str(op["path"]).split("/")[1:]]
        if not tokens:
            raise PatchError(f"{op['op']} {op['path']!r}: the whole document is not patched here")
        parent: Any = out
        for t in tokens[:-1]:
            parent = _child(parent, t, op)
        last = tokens[-1]
        kind = op["op"]
        if kind == "test":
            if _child(parent, last, op) != op.get("value"):
                raise PatchError(f"test {op['path']!r}: the value differs")
        elif isinstance(parent, dict):
            if kind in ("replace", "remove") and last not in parent:
                raise PatchError(f"{kind} {op['path']!r}: no such key")
            if kind == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif isinstance(parent, list):
            at = len(parent) if last == "-" and kind == "add" else _index(last, op)
            if kind == "add":
                if at > len(parent):
                    raise PatchError(f"add {op['path']!r}: past the end of the list")
                parent.insert(at, copy.deepcopy(op["value"]))
            elif at >= len(parent):
                raise PatchError(f"{kind} {op['path']!r}: past the end of the list")
            elif kind == "remove":
                del parent[at]
            else:
                parent[at] = copy.deepcopy(op["value"])
        else:
            raise PatchError(f"{kind} {op['path']!r}: its parent is not an object or a list")
    return dict(out)


def _index(token: str, op: Mapping[str, Any]) -> int:
    if not token.isdigit():
        raise PatchError(f"{op['op']} {op['path']!r}: {token!r} is not a list index")
    return int(token)


def _child(node: Any, token: str, op: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise PatchError(f"{op['op']} {op['path']!r}: no key {token!r}")
        return node[token]
    if isinstance(node, list):
        at = _index(token, op)
        if at >= len(node):
            raise PatchError(f"{op['op']} {op['path']!r}: index {at} past the end of the list")
        return node[at]
    raise PatchError(f"{op['op']} {op['path']!r}: {token!r} inside a value that is neither object nor list")
