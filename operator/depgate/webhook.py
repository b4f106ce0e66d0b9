"""depgate's admission webhook, the I/O side (the decisions are depgate.authority's).

- The Secret WEBHOOK_SECRET in the operator's namespace holds the signing key of the authorship
  annotations and the webhook's self-signed certificate; the first replica to start makes it, every
  other replica (and every restart) reads it, so that signatures and the certificate outlive pods.
- The webhook configurations (ValidatingWebhookConfiguration and MutatingWebhookConfiguration, both
  named WEBHOOK_CONFIGURATION) come with the install (manifests/base/webhook.yaml, the Helm chart); the
  operator only points their clientConfig at itself (caBundle, and the URL when it runs outside the
  cluster). Run with rights to create them (a local plane's admin), it creates them from
  `configurations()` when they are missing.
- Gate answers the two admission requests and the reconcile's question "may this policy act?", with
  SubjectAccessReviews for the policy's author.
- The MutatingWebhookConfiguration's second webhook, WORKLOADS_PATH, renders depgate's init
  containers into the workloads a policy targets as they are created or updated (depgate.admission
  decides; failurePolicy Ignore: a workload is never held up or refused because of depgate).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from depgate import authority, gates, registry, spec, tls
from depgate.constants import (
    DEFAULT_OPERATOR_NAMESPACE,
    GROUP,
    PLURAL,
    WEBHOOK_CONFIGURATION,
    WEBHOOK_SECRET,
)
from depgate.kube import ApiError, Forbidden, Kube

log = logging.getLogger("depgate.webhook")

VALIDATE_PATH = "authority"  # Kopf serves each admission handler at /<its id>
MUTATE_PATH = "author"
WORKLOADS_PATH = "workloads"  # the workload kinds' mutating handlers (one per kind, all at this path)
ADMISSION = "admissionregistration.k8s.io/v1"
VALIDATING, MUTATING = "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"
TIMEOUT_SECONDS = 10
# The workloads' webhook answers from memory in about a millisecond: a slow or unreachable operator
# must not slow every Deployment of the cluster by more than this (then admitted ungated: Ignore).
WORKLOADS_TIMEOUT_SECONDS = 2
SYSTEM_NAMESPACE = "kube-system"
PODS_PATH = "pods"  # the pods' scheduling gate at admission (depgate.gates.gate_patch)
PODS_TIMEOUT_SECONDS = 2  # answered from memory; a pod is never held up longer (then created ungated)
REVIEW_TTL_SECONDS = 60.0  # a reconcile trusts an answer of the authorizer this long
MAX_VERIFIED = 50_000  # remembered signature checks (a policy's is a few hundred bytes)
MAX_POLICY_BYTES = 512 * 1024  # a policy is a few KiB; the API server's own limit (~1.5 MiB) names no field


def service_account_user(namespace: str, name: str = "depgate") -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def workloads_webhook(client: Callable[[str], Mapping[str, Any]], operator_user: str,
                      operator_namespace: str) -> dict[str, Any]:
    """The mutating webhook that renders depgate's init containers into targeted workloads at admission
    (depgate.admission). Scoped so that it never holds up an object no policy names: failurePolicy
    Ignore and a short timeout (an operator down or slow admits the workload as it is), never the
    operator's own writes, never kube-system or the operator's namespace (depgate gates neither), no
    subresource (a status write is not matched)."""
    rules = [{"apiGroups": [api.group], "apiVersions": [api.version], "operations": ["CREATE", "UPDATE"],
              "resources": [k.api.plural for k in registry.WORKLOAD_KINDS.values()
                            if k.gated and k.api.api_version == api.api_version], "scope": "Namespaced"}
             for api in {k.api.api_version: k.api for k in registry.WORKLOAD_KINDS.values() if k.gated}.values()]
    return {"name": f"{WORKLOADS_PATH}.{GROUP}", "clientConfig": dict(client(WORKLOADS_PATH)),
            "reinvocationPolicy": "IfNeeded",  # another mutator adding a container: rendered again after it
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
            "matchPolicy": "Equivalent", "timeoutSeconds": WORKLOADS_TIMEOUT_SECONDS,
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": sorted({SYSTEM_NAMESPACE, operator_namespace})}]},
            "rules": rules,
            "matchConditions": [
                {"name": "not-depgate-itself",
                 "expression": f"request.userInfo.username != {json.dumps(operator_user)}"},
                {"name": "not-being-deleted", "expression": "!has(object.metadata.deletionTimestamp)"}]}


def _namespace_of(user: str) -> str:
    """The namespace of a ServiceAccount's user name (system:serviceaccount:<ns>:<name>)."""
    parts = user.split(":")
    return parts[2] if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"] else DEFAULT_OPERATOR_NAMESPACE


def configurations(client: Callable[[str], Mapping[str, Any]], operator_user: str,
                   operator_namespace: str | None = None) -> tuple[dict[str, Any], ...]:
    """Both webhook configurations, as the install ships them (manifests/base/webhook.yaml is tested
    against this), with `client(path)` as each webhook's clientConfig. `operator_namespace` (default:
    the ServiceAccount's, from `operator_user`) is left out of the workloads' webhook."""
    rule = {"apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
            "resources": [PLURAL], "scope": "Namespaced"}
    conditions = [
        # The operator's own writes (its finalizer, its bookkeeping annotations) never change a spec
        # and never need its own webhook: a restarting operator must not wait for itself.
        {"name": "not-depgate-itself", "expression": f"request.userInfo.username != {json.dumps(operator_user)}"},
        # A policy being deleted only loses finalizers: never refuse that, even with depgate down.
        {"name": "not-being-deleted", "expression": "!has(object.metadata.deletionTimestamp)"},
    ]
    common = {"admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
              "matchPolicy": "Equivalent", "timeoutSeconds": TIMEOUT_SECONDS, "rules": [rule],
              "matchConditions": conditions}
    meta = {"name": WEBHOOK_CONFIGURATION, "labels": {"app.kubernetes.io/name": "depgate",
                                                       "app.kubernetes.io/part-of": "depgate"}}
    validating = {"apiVersion": ADMISSION, "kind": VALIDATING, "metadata": meta,
                  "webhooks": [{"name": f"{VALIDATE_PATH}.{GROUP}", "clientConfig": dict(client(VALIDATE_PATH)),
                                **common}]}
    mutating_hooks: list[dict[str, Any]] = [
        {"name": f"{MUTATE_PATH}.{GROUP}", "clientConfig": dict(client(MUTATE_PATH)), "reinvocationPolicy": "IfNeeded",
         **common},
        workloads_webhook(client, operator_user, operator_namespace or _namespace_of(operator_user))]
    mutating: dict[str, Any] = {"apiVersion": ADMISSION, "kind": MUTATING, "metadata": meta, "webhooks": mutating_hooks}
    mutating["webhooks"].append(pods_webhook(client, operator_namespace or _namespace_of(operator_user)))
    return validating, mutating


def pods_webhook(client: Callable[[str], Mapping[str, Any]], operator_namespace: str) -> dict[str, Any]:
    """The mutating webhook that holds the pods of workloads at depgate's scheduling gate in namespaces
    that opt in (depgate.gates; docs/operations.md, Workload first). Only pods a workload controller
    creates, not bound to a node and not rendered already (those carry depgate's init containers) reach
    the operator; failurePolicy Ignore and a short timeout: with the operator down or slow a pod is
    created as it is, ungated (never refused, never held up longer)."""
    owners = json.dumps(list(gates.OWNER_KINDS))
    return {"name": f"{PODS_PATH}.{GROUP}", "clientConfig": dict(client(PODS_PATH)),
            "reinvocationPolicy": "Never", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "matchPolicy": "Equivalent", "timeoutSeconds": PODS_TIMEOUT_SECONDS,
            "namespaceSelector": {"matchExpressions": [
                {"key": gates.OPT_IN_LABEL, "operator": "In", "values": [gates.OPT_IN_VALUE]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                 "values": sorted({SYSTEM_NAMESPACE, operator_namespace})}]},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                       "scope": "Namespaced"}],
            "matchConditions": [
                {"name": "made-by-a-workload",
                 "expression": "has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists("
                               f"o, has(o.controller) && o.controller && o.kind in {owners})"},
                {"name": "not-bound", "expression": "!has(object.spec.nodeName)"},
                {"name": "not-rendered", "expression": "!has(object.spec.initContainers) || "
                                                       "!object.spec.initContainers.exists(c, c.name.startsWith("
                                                       f"{json.dumps(gates.RENDERED_PREFIX)}))"}]}


# ------------------------------------------------------------------------ the Secret


@dataclass(frozen=True)
class Keys:
    signing: bytes
    cert: bytes
    key: bytes


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    import base64

    return base64.b64decode(text) if isinstance(text, str) else b""


def load_keys(kube: Kube, namespace: str, names: list[str]) -> Keys:
    """The signing key and the certificate from the Secret, made (or the certificate renewed) when
    missing; another replica making it at the same moment wins, and its keys are read."""
    for _ in range(5):
        secret = kube.get("v1", "Secret", namespace, WEBHOOK_SECRET)
        if secret is None:
            cert, key = tls.make_certificate_apart(names)
            labels = {"app.kubernetes.io/name": "depgate", "app.kubernetes.io/part-of": "depgate"}
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": WEBHOOK_SECRET, "namespace": namespace, "labels": labels},
                    "data": {"signing.key": _b64(tls.signing_key()), "tls.crt": _b64(cert), "tls.key": _b64(key)}}
            if kube.create(body) is None:  # made by another replica meanwhile (or no such namespace)
                if kube.get("v1", "Namespace", None, namespace) is None:
                    raise RuntimeError(f"the namespace {namespace} does not exist (create it, or point "
                                       "--operator-namespace at the namespace depgate runs in)")
                continue
            log.info("made the webhook Secret %s/%s (signing key and certificate)", namespace, WEBHOOK_SECRET)
            continue
        data = secret.get("data") or {}
        signing, cert, key = _unb64(data.get("signing.key")), _unb64(data.get("tls.crt")), _unb64(data.get("tls.key"))
        if len(signing) < 32:
            raise RuntimeError(f"Secret {namespace}/{WEBHOOK_SECRET} has no usable signing.key")
        if not tls.usable_apart(cert, names) or not key:
            cert, key = tls.make_certificate_apart(names)
            ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": secret["metadata"]["resourceVersion"]},
                   {"op": "add", "path": "/data/tls.crt", "value": _b64(cert)},
                   {"op": "add", "path": "/data/tls.key", "value": _b64(key)}]
            try:
                kube.json_patch("v1", "Secret", namespace, WEBHOOK_SECRET, ops)
            except Exception as e:  # another replica renewed it first: read theirs
                log.info("the webhook certificate was renewed meanwhile (%s); reading it again", e)
                continue
            log.info("renewed the webhook certificate in %s/%s", namespace, WEBHOOK_SECRET)
        return Keys(signing, cert, key)
    raise RuntimeError("it kept changing while being read (five attempts)")


def write_cert_files(keys: Keys, directory: Path) -> tuple[Path, Path]:
    """The certificate and key as files for the HTTPS server (0600, in a directory of the process's own)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = directory / "tls.crt", directory / "tls.key"
    for path, data in ((cert, keys.cert), (key, keys.key)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return cert, key


# ------------------------------------------------------------------------ the configurations


_MISSING = {f"{WORKLOADS_PATH}.{GROUP}": "workloads a policy targets are not rendered at admission, only by the "
                                      "reconcile afterwards (a rollout; a Job created meanwhile runs ungated)"}


def register(kube: Kube, client: Callable[[str], Mapping[str, Any]], operator_user: str) -> list[str]:
    """Point both webhook configurations at this process (their clientConfig only); create them when
    missing if depgate may. Returns what could not be done, to log (empty: all registered)."""
    problems: list[str] = []
    for want in configurations(client, operator_user):
        kind = want["kind"]
        live = kube.get(ADMISSION, kind, None, WEBHOOK_CONFIGURATION)
        if live is None:
            try:
                kube.create(want)
                log.info("created the %s %s", kind, WEBHOOK_CONFIGURATION)
            except Forbidden as e:
                problems.append(f"{kind} {WEBHOOK_CONFIGURATION} does not exist and depgate may not create it "
                                f"({e}); install it (kubectl apply -k manifests/, or the Helm chart)")
            continue
        wanted = {w["name"]: w["clientConfig"] for w in want["webhooks"]}
        # An install older than this operator: depgate may change only clientConfig there (the VAP).
        for missing in sorted(set(wanted) - {h.get("name") for h in live.get("webhooks") or []}):
            log.warning("the %s %s has no webhook %s (installed by an older depgate): %s; re-apply the "
                        "install (kubectl apply --server-side -k manifests/, or helm upgrade) to add it",
                        kind, WEBHOOK_CONFIGURATION, missing, _MISSING.get(missing, "it is not served"))
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(live.get("webhooks") or []):
            config = wanted.get(hook.get("name"))
            if config is None or hook.get("clientConfig") == config:
                continue
            ops += [{"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]},
                    {"op": "replace", "path": f"/webhooks/{i}/clientConfig", "value": config}]
        if ops:
            try:
                kube.json_patch(ADMISSION, kind, None, WEBHOOK_CONFIGURATION, ops)
                log.info("pointed the %s %s at this process", kind, WEBHOOK_CONFIGURATION)
            except (Forbidden, ApiError) as e:
                problems.append(f"could not update the {kind} {WEBHOOK_CONFIGURATION}: {e}")
    return problems


# ------------------------------------------------------------------------ the checks


class Gate:
    """The author's rights: at admission (mutate: record the author; admit: check their rights) and
    at each reconcile (authorize)."""

    def __init__(self, kube: Kube, signing_key: bytes, operator_user: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.key = signing_key
        self.operator_user = operator_user
        self.clock = clock
        self._lock = threading.Lock()
        self._reviews: dict[tuple[str, authority.Access], tuple[float, bool, str]] = {}
        # authority.verify's answers by signed_fields: every workload review and every reconcile asks about
        # each policy of its namespace, and an HMAC per policy per question was quadratic in a busy namespace.
        self._verified: dict[tuple[Any, ...], authority.Verified] = {}

    # --- admission

    def mutate(self, operation: str, old: Mapping[str, Any] | None, new: Mapping[str, Any],
               user_info: Mapping[str, Any]) -> Mapping[str, str | None]:
        user = authority.Author.from_user_info(user_info)
        return authority.authorship(self.key, operation, old, new, user, self.operator_user).annotations

    def admit(self, operation: str, old: Mapping[str, Any] | None, new: Mapping[str, Any],
              user_info: Mapping[str, Any], warnings: list[str]) -> str | None:
        """Why the request is refused (None: allowed). Warnings go back to the client (kubectl prints them)."""
        size = len(json.dumps(new, separators=(",", ":")))
        if size > MAX_POLICY_BYTES:
            path, biggest = authority.largest_field(new)
            return (f"{path}: the policy is {size} bytes, over depgate's limit of {MAX_POLICY_BYTES}; "
                    f"{path} alone is {biggest} bytes")
        user = authority.Author.from_user_info(user_info)
        if user.username == self.operator_user:
            return None
        text = authority.admitted_author(old, new)
        if text is None:
            return None  # neither the spec nor the recorded author changes
        verified = self.verify(new)
        if verified.author is None:
            return f"depgate's mutating webhook did not record this policy's author: {verified.problem}"
        if verified.author.username != user.username:
            return (f"metadata.annotations: the recorded author {verified.author.username} is not the one "
                    f"making this request ({user.username})")
        try:
            policy = spec.parse_policy(new)
        except spec.SpecError as e:
            warnings.append(f"depgate will not act on this policy: {e}")
            return None
        unserved: list[str] = []
        denied = self.denied(verified.author, policy, str(new["metadata"]["namespace"]), fresh=True, unserved=unserved)
        warnings += [f"{u}; its author's right to read it is checked once it is" for u in unserved]
        return authority.refusal(verified.author, denied) if denied else None

    # --- the reconcile

    def authorize(self, obj: Mapping[str, Any], policy: spec.Policy) -> str | None:
        """Why this policy may not act now (None: it may). Errors of the API server raise (retried)."""
        verified = self.verify(obj)
        if verified.author is None:
            return (f"{verified.problem}; depgate does not act on it until someone with the rights it needs "
                    "changes it (any change, e.g. `kubectl annotate`, is checked)")
        denied = self.denied(verified.author, policy, str(obj["metadata"]["namespace"]), fresh=False)
        return authority.refusal(verified.author, denied) if denied else None

    def trusted(self, obj: Mapping[str, Any]) -> bool:
        """Whether the policy's recorded author verifies (the signature only; no review)."""
        return self.verify(obj).author is not None

    def verify(self, obj: Mapping[str, Any]) -> authority.Verified:
        """authority.verify with this key, remembered for the last MAX_VERIFIED distinct signed states."""
        fields = authority.signed_fields(obj)
        try:
            hash(fields)
        except TypeError:  # not as the API server stores a policy (annotations are strings): not remembered
            return authority.verify(self.key, obj)
        with self._lock:
            hit = self._verified.get(fields)
        if hit is not None:
            return hit
        verified = authority.verify(self.key, obj)
        with self._lock:
            while len(self._verified) >= MAX_VERIFIED:  # bounded: the oldest answers go first
                self._verified.pop(next(iter(self._verified)))
            self._verified[fields] = verified
        return verified

    def denied(self, author: authority.Author, policy: spec.Policy, namespace: str, *,
               fresh: bool, unserved: list[str] | None = None) -> list[authority.Denied]:
        out = []
        for access in authority.required(policy, namespace, self._plural, unserved):
            allowed, reason = self._review(author, access, fresh)
            if not allowed:
                out.append(authority.Denied(access, reason))
        return out

    def _plural(self, api_version: str, kind: str) -> str | None:
        try:
            return self.kube.plural(api_version, kind)
        except LookupError:
            return None

    def _review(self, author: authority.Author, access: authority.Access, fresh: bool) -> tuple[bool, str]:
        key, now = (author.to_json(), access), self.clock()
        if not fresh:
            with self._lock:
                hit = self._reviews.get(key)
            if hit is not None and now - hit[0] < REVIEW_TTL_SECONDS:
                return hit[1], hit[2]
        allowed, reason = self.kube.review_access(authority.review_body(author, access))
        with self._lock:
            if len(self._reviews) > 10_000:  # bounded: old answers go first
                self._reviews = {k: v for k, v in self._reviews.items() if now - v[0] < REVIEW_TTL_SECONDS}
            self._reviews[key] = (now, allowed, reason)
        return allowed, reason
