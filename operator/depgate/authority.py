"""A policy takes effect only as far as its author could have done it directly (issue 14).

The author is the user, or the GitOps controller's ServiceAccount, that created the policy or last
changed its spec. depgate's mutating admission webhook records who that was in two annotations on
the policy (AUTHOR_ANNOTATION, and AUTHOR_SIGNATURE_ANNOTATION: an HMAC with a key only the operator
holds, over the policy's namespace, name and generation and the author), and its validating webhook
refuses a policy whose author may not do what the policy would make depgate do (`required`: patch
each target workload, create a template's Deployment, read each Secret or ConfigMap it makes depgate
use or reveal, read each object it asks depgate to judge). The reconcile checks the same again for the
recorded author, so that a right lost later stops the policy; a policy whose annotations are missing or
do not verify (it arrived while the webhook did not run, or someone wrote them by hand) is not trusted.

Why SubjectAccessReviews and not impersonation: to impersonate every author, the operator's own token
would need `impersonate` on users, groups and ServiceAccounts, which is every right in the cluster to
whoever steals it; a SubjectAccessReview only asks the API server's authorizer a question.

Everything here is pure: plain data in, decisions out. depgate.kube sends the reviews.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from depgate import registry, spec
from depgate.constants import AUTHOR_ANNOTATION, AUTHOR_SIGNATURE_ANNOTATION

SIGNATURE_VERSION = "v1"


@dataclass(frozen=True)
class Author:
    """Who wrote a policy, as the API server authenticated them (an AdmissionReview's userInfo)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_user_info(cls, info: Mapping[str, Any]) -> Author:
        extra = info.get("extra") or {}
        return cls(username=str(info.get("username") or ""), uid=str(info.get("uid") or ""),
                   groups=tuple(str(g) for g in info.get("groups") or ()),
                   extra={str(k): tuple(str(v) for v in vs or ()) for k, vs in sorted(extra.items())})

    def to_json(self) -> str:
        """The annotation's value: canonical (sorted keys, no spaces), so that it signs the same way."""
        body: dict[str, Any] = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            body["uid"] = self.uid
        if self.extra:
            body["extra"] = {k: list(v) for k, v in sorted(self.extra.items())}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Author | None:
        try:
            body = json.loads(text)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("username"), str) or not body["username"]:
            return None
        return cls.from_user_info(body)


@dataclass(frozen=True)
class Access:
    """One right the author must hold: `verb` on `resource` in `group` (in `namespace`; on the object
    `name`, or on every object of the kind when empty), because of the policy's field `field`."""

    field: str
    verb: str
    group: str
    resource: str
    namespace: str
    name: str = ""

    def describe(self) -> str:
        what = f"{self.resource}.{self.group}" if self.group else self.resource
        target = f" {self.name!r}" if self.name else ""
        return f"{self.verb} {what}{target} in namespace {self.namespace}"


@dataclass(frozen=True)
class Denied:
    access: Access
    reason: str = ""  # the authorizer's reason, when it gave one


# ------------------------------------------------------------------------ what a policy needs


Plurals = Callable[[str, str], str | None]
"""(apiVersion, kind) -> the resource's plural, or None when the API server does not serve the kind."""


def _group(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def required(policy: spec.Policy, namespace: str, plurals: Plurals, unserved: list[str] | None = None) -> list[Access]:
    """Every right the policy's author must hold for the policy to take effect, in document order.

    A `resource` precondition of a kind the API server does not serve (yet: its CRD may come later)
    needs no right now, since depgate can read nothing of it; its field goes to `unserved`, and the
    right is required as soon as the kind is served."""
    deployments = registry.DEPLOYMENT
    out: list[Access] = []
    if isinstance(policy.target, spec.WorkloadRef):
        # whatever the kind: depgate changes its pod template (a Job's, in the request that creates it)
        kind = registry.WORKLOAD_KINDS[policy.target.kind].api
        out.append(Access("spec.workloadRef", "patch", kind.group, kind.plural, namespace, policy.target.name))
    elif isinstance(policy.target, spec.Selector):
        # a selector can claim any workload of its kinds in the namespace, now or later
        for k in policy.target.kinds:
            kind = registry.WORKLOAD_KINDS[k].api
            out.append(Access("spec.selector", "patch", kind.group, kind.plural, namespace))
    else:
        name = spec.template_name(policy)
        out.append(Access("spec.template", "create", deployments.group, deployments.plural, namespace))
        out.append(Access("spec.template", "patch", deployments.group, deployments.plural, namespace, name))
    for path, name in spec.secret_refs(policy):
        out.append(Access(path, "get", "", "secrets", namespace, name))
    for path, name in spec.config_map_refs(policy):
        out.append(Access(path, "get", "", "configmaps", namespace, name))
    for i, pre in enumerate(policy.preconditions):
        at, body = f"spec.preconditions[{i}].{pre.type}", pre.body
        if isinstance(body, spec.ServiceCheck):
            out.append(Access(at, "get", "", "services", namespace, body.name))
            out.append(Access(at, "list", "discovery.k8s.io", "endpointslices", namespace))
        elif isinstance(body, spec.JobCheck):
            out.append(Access(at, "get", "batch", "jobs", namespace, body.name))
        elif isinstance(body, spec.WorkloadCheck):
            kind = registry.WORKLOAD_KINDS[body.kind].api
            out.append(Access(at, "get", kind.group, kind.plural, namespace, body.name))
        elif isinstance(body, spec.ResourceCheck):
            plural = plurals(body.api_version, body.kind)
            if plural is None:
                if unserved is not None:
                    unserved.append(f"{at}: the API server serves no kind {body.kind} in {body.api_version} (yet)")
                continue
            out.append(Access(at, "get", _group(body.api_version), plural, namespace, body.name))
    return _unique(out)


def _unique(accesses: Sequence[Access]) -> list[Access]:
    """One review per right: the first field that needs it names it."""
    seen: set[tuple[str, str, str, str, str]] = set()
    out: list[Access] = []
    for a in accesses:
        key = (a.verb, a.group, a.resource, a.namespace, a.name)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def review_body(author: Author, access: Access) -> dict[str, Any]:
    """The SubjectAccessReview that asks whether `author` holds `access`."""
    attributes = {"namespace": access.namespace, "verb": access.verb, "group": access.group,
                  "resource": access.resource}
    if access.name:
        attributes["name"] = access.name
    body: dict[str, Any] = {"user": author.username, "groups": list(author.groups),
                            "resourceAttributes": attributes}
    if author.uid:
        body["uid"] = author.uid
    if author.extra:
        body["extra"] = {k: list(v) for k, v in author.extra.items()}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": body}


def refusal(author: Author, denied: Sequence[Denied]) -> str:
    """What the author is told (at admission) or the status says (at reconcile), naming each field."""
    parts = [f"{d.access.field}: {author.username} may not {d.access.describe()}" for d in denied]
    return ("; ".join(parts) + " (a policy can make depgate do only what its author could do directly; "
            "see docs/operations.md, Threat model)")


# ------------------------------------------------------------------------ the signed authorship


def signature(key: bytes, namespace: str, name: str, generation: int, author_json: str) -> str:
    message = json.dumps([namespace, name, int(generation), author_json], separators=(",", ":"))
    return f"{SIGNATURE_VERSION}:" + hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = (obj or {}).get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    annotations = _meta(obj).get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


@dataclass(frozen=True)
class Verified:
    author: Author | None  # None: not trusted
    problem: str = ""  # why not


def signed_fields(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything `verify`'s answer depends on besides the key (two objects equal here verify alike)."""
    annotations, meta = _annotations(obj), _meta(obj)
    return (meta.get("namespace"), meta.get("name"), meta.get("generation"),
            annotations.get(AUTHOR_ANNOTATION), annotations.get(AUTHOR_SIGNATURE_ANNOTATION))


def verify(key: bytes, obj: Mapping[str, Any]) -> Verified:
    """Who the policy's recorded author is, if its annotations verify for its current generation
    (it reads only `signed_fields(obj)`)."""
    annotations, meta = _annotations(obj), _meta(obj)
    text, sig = annotations.get(AUTHOR_ANNOTATION), annotations.get(AUTHOR_SIGNATURE_ANNOTATION)
    if not isinstance(text, str) or not isinstance(sig, str):
        return Verified(None, "the policy carries no author recorded by depgate's admission webhook (it was "
                              "created or changed while the webhook did not run)")
    author = Author.from_json(text)
    generation = meta.get("generation")
    if author is None or not isinstance(generation, int):
        return Verified(None, f"the annotation {AUTHOR_ANNOTATION} is not an author depgate recorded")
    want = signature(key, str(meta.get("namespace") or ""), str(meta.get("name") or ""), generation, text)
    if not hmac.compare_digest(want, sig):
        return Verified(None, f"the annotation {AUTHOR_SIGNATURE_ANNOTATION} does not verify for generation "
                              f"{generation} (the policy changed while depgate's admission webhook did not "
                              "run, or the annotations were written by hand)")
    return Verified(author)


def _spec_part(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """What bumps metadata.generation of a custom resource with a status subresource: all but
    metadata and status."""
    return {k: v for k, v in (obj or {}).items() if k not in ("metadata", "status", "apiVersion", "kind")}


@dataclass(frozen=True)
class Authorship:
    """What the mutating webhook writes: the two annotations (None: remove them), and the author
    whose rights the validating webhook must check (None: nothing changed that needs a check)."""

    annotations: Mapping[str, str | None]
    new_author: Author | None


def authorship(key: bytes, operation: str, old: Mapping[str, Any] | None, new: Mapping[str, Any],
               user: Author, operator_user: str) -> Authorship:
    """Who the policy's author is after this CREATE or UPDATE by `user`.

    CREATE: the creator. UPDATE that changes the spec: the one who changes it. An UPDATE that leaves
    the spec alone (labels, annotations, finalizers) keeps the recorded author, and the annotations
    are put back if the request changed them; if there was no valid author, the one who touches the
    policy becomes it (and must hold its rights): the way to have an old policy checked. The operator's
    own writes (finalizers, its bookkeeping) never make it an author.
    """
    old_ann = _annotations(old)
    keep = {AUTHOR_ANNOTATION: _str_or_none(old_ann.get(AUTHOR_ANNOTATION)),
            AUTHOR_SIGNATURE_ANNOTATION: _str_or_none(old_ann.get(AUTHOR_SIGNATURE_ANNOTATION))}
    if operation == "CREATE":
        generation = 1
    else:
        if user.username == operator_user:
            return Authorship(keep, None)
        changed = _spec_part(old) != _spec_part(new)
        if not changed and old is not None and verify(key, old).author is not None:
            return Authorship(keep, None)
        old_generation = _meta(old).get("generation")
        generation = (old_generation if isinstance(old_generation, int) else 0) + (1 if changed else 0)
    text = user.to_json()
    meta = _meta(new)
    sig = signature(key, str(meta.get("namespace") or ""), str(meta.get("name") or ""), generation, text)
    return Authorship({AUTHOR_ANNOTATION: text, AUTHOR_SIGNATURE_ANNOTATION: sig}, user)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def admitted_author(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str | None:
    """The author annotation the validating webhook must check: the new one, when it differs from the
    old one (a CREATE, a spec change, an unverified policy touched); None when it is unchanged."""
    text = _str_or_none(_annotations(new).get(AUTHOR_ANNOTATION))
    if old is not None and text == _str_or_none(_annotations(old).get(AUTHOR_ANNOTATION)) \
            and _spec_part(old) == _spec_part(new):
        return None
    return text or ""


def largest_field(obj: Mapping[str, Any]) -> tuple[str, int]:
    """The deepest field that holds most of `obj`'s size (compact JSON bytes): the one to name when a
    policy is too big. Follows the largest child while it holds more than half of its parent."""
    path, node = "", obj
    size = len(json.dumps(node, separators=(",", ":")))
    for _ in range(64):  # the schema bounds the depth; this bounds the walk
        children: list[tuple[str, Any]]
        if isinstance(node, Mapping):
            children = [(f"{path}.{k}" if path else str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        else:
            break
        if not children:
            break
        sizes = [(len(json.dumps(v, separators=(",", ":"))), p, v) for p, v in children]
        best = max(sizes, key=lambda t: t[0])
        if best[0] * 2 < size:
            break
        size, path, node = best
    return path or "(the whole object)", size
