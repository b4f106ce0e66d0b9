"""Policy + Deployment -> the server-side-apply body depgate sends, and the Deployment it yields.

Pure: the standard library and depgate's spec, registry and constants only. Every function returns
new dicts and never mutates its arguments; the same inputs give the same output, key order included
(no timestamps, no set or dict-order luck), so re-applying an unchanged policy is a no-op on the server.

Names starting with `depgate-` (constants.CONTAINER_PREFIX) in a pod template (init containers,
volumes, the volume mounts that use those volumes) are depgate's: they are dropped and rebuilt on
every render, which makes `rendered(rendered(d))` equal `rendered(d)`.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from depgate import registry
from depgate.constants import API_VERSION, CA_VOLUME_PREFIX, CONTAINER_PREFIX, KIND, POLICY_ANNOTATION
from depgate.constants import SHARED_VOLUME as SHARED_VOLUME
from depgate.constants import TOKEN_VOLUME as TOKEN_VOLUME
from depgate.constants import WAIT_ROLE_PREFIX as WAIT_ROLE_PREFIX
from depgate.spec import (
    BasicAuthRef,
    CommandTask,
    DNSCheck,
    DownloadTask,
    HTTPCheck,
    Policy,
    Precondition,
    RedisCheck,
    TCPCheck,
    Template,
)
from depgate.spec import template_name as template_name

PREFIX: Final = CONTAINER_PREFIX  # (the old names of the constants, importable from here)
ANNOTATION: Final = POLICY_ANNOTATION
DEFAULT_WAITER_IMAGE: Final = "depgate/depgate:0.1.0"
TOKEN_MOUNT_PATH: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_EXPIRATION_SECONDS: Final = 3600
CA_MOUNT_ROOT: Final = "/depgate/ca"
REDIS_PASSWORD_ENV: Final = "DEPGATE_REDIS_PASSWORD"
HTTP_USERNAME_ENV: Final = "DEPGATE_HTTP_USERNAME"  # basicAuthSecretRef, http and download
HTTP_PASSWORD_ENV: Final = "DEPGATE_HTTP_PASSWORD"
HEADER_ENV_PREFIX: Final = "DEPGATE_HEADER_"  # + the header's index: headers[i].valueFrom.secretKeyRef
NAMESPACE_ENV: Final = "DEPGATE_NAMESPACE"

DEFAULT_RESOURCES: Final[Mapping[str, Any]] = {
    "requests": {"cpu": "10m", "memory": "32Mi"},
    "limits": {"memory": "64Mi"},
}
RESTRICTED_SECURITY_CONTEXT: Final[Mapping[str, Any]] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

Obj = dict[str, Any]


@dataclass(frozen=True)
class RenderConfig:
    """The operator's settings that shape what it renders (never taken from a policy)."""

    waiter_image: str = DEFAULT_WAITER_IMAGE
    image_pull_policy: str = "IfNotPresent"


@dataclass(frozen=True)
class RenderError:
    """A problem the operator judges against a Deployment (the CRD cannot see it): report, don't apply."""

    field_path: str  # the policy field at fault, e.g. spec.preconditions[3].command.fromContainer
    reason: str  # CamelCase, for status conditions
    message: str

    def __str__(self) -> str:
        return f"{self.field_path}: {self.message}"


class RenderProblem(ValueError):
    """Raised by apply_body/rendered when render_errors is not empty (callers should check first)."""

    def __init__(self, errors: Sequence[RenderError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = tuple(errors)


# --- reading a Deployment --------------------------------------------------------------------------


def is_ours(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def template_path(workload: Mapping[str, Any]) -> tuple[str, ...]:
    """Where the workload's pod template lives (registry.WorkloadKind.pod_template; a Deployment's
    when the object names no kind, as `depgate render` files may not)."""
    wk = registry.WORKLOAD_KINDS.get(str(workload.get("kind") or registry.DEPLOYMENT.kind))
    return wk.pod_template if wk is not None else ("spec", "template")


def _pod_spec(deployment: Mapping[str, Any]) -> Mapping[str, Any]:
    pod = registry.pod_template(deployment).get("spec") or {}
    return pod if isinstance(pod, Mapping) else {}


def _template_of(obj: Obj, path: tuple[str, ...]) -> Obj:
    """The pod template at `path` in `obj`, made (as empty objects) where missing."""
    node = obj
    for key in path:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    return node


def _nest(path: tuple[str, ...], leaf: Obj) -> Obj:
    """{path[0]: {path[1]: ... leaf}}: the apply body's skeleton down to the pod template."""
    out = leaf
    for key in reversed(path):
        out = {key: out}
    return out


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return list(value) if isinstance(value, list) else []


def _mounts_without_ours(container: Mapping[str, Any]) -> list[Any]:
    return [copy.deepcopy(m) for m in _list(container, "volumeMounts") if not is_ours(m.get("name"))]


def _app_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in _list(pod, "containers") if isinstance(c, Mapping)]


def _describe(deployment: Mapping[str, Any]) -> str:
    meta = deployment.get("metadata") or {}
    name = meta.get("name", "?")
    kind = deployment.get("kind") or registry.DEPLOYMENT.kind
    return f"{kind} {meta['namespace']}/{name}" if meta.get("namespace") else f"{kind} {name}"


# --- what depgate adds ------------------------------------------------------------------------------


def _ca_volume_name(pre: Precondition) -> str:
    return CA_VOLUME_PREFIX + pre.name


def _shared_mount(policy: Policy) -> Obj:
    return {"name": SHARED_VOLUME, "mountPath": policy.shared_volume.mount_path}


def _resources(policy: Policy) -> Obj:
    given = policy.defaults.resources
    return copy.deepcopy(dict(DEFAULT_RESOURCES if given is None else given))


def _security_context(policy: Policy) -> Obj:
    given = policy.defaults.security_context
    return copy.deepcopy(dict(RESTRICTED_SECURITY_CONTEXT if given is None else given))


def _needs_token(policy: Policy, pod: Mapping[str, Any]) -> bool:
    """The pod mounts no ServiceAccount token, and `depgate wait verdict` must read the policy."""
    return pod.get("automountServiceAccountToken") is False and any(
        p.judged_by_operator for p in policy.preconditions
    )


@dataclass
class WaiterArgs:
    """What one precondition's `depgate wait <subcommand>` needs beyond --timeout and --period."""

    args: list[str] = field(default_factory=list)
    env: list[Obj] = field(default_factory=list)
    mounts: list[Obj] = field(default_factory=list)


def _tcp_args(policy: Policy, pre: Precondition, pod: Mapping[str, Any]) -> WaiterArgs:
    body = pre.body
    assert isinstance(body, TCPCheck)
    return WaiterArgs([f"--host={body.host}", f"--port={body.port}"])


def _redis_args(policy: Policy, pre: Precondition, pod: Mapping[str, Any]) -> WaiterArgs:
    body = pre.body
    assert isinstance(body, RedisCheck)
    out = WaiterArgs([f"--host={body.host}", f"--port={body.port}"])
    if body.tls:
        out.args.append("--tls")
    if body.password_secret_ref is not None:
        out.args.append(f"--password-env={REDIS_PASSWORD_ENV}")
        ref = body.password_secret_ref
        out.env.append(
            {
                "name": REDIS_PASSWORD_ENV,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    return out


def _secret_env(name: str, secret: str, key: str) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _basic_auth(out: WaiterArgs, ref: BasicAuthRef | None) -> None:
    """Username and password as env vars from the Secret; the args name the variables only."""
    if ref is None:
        return
    out.args += [f"--username-env={HTTP_USERNAME_ENV}", f"--password-env={HTTP_PASSWORD_ENV}"]
    out.env.append(_secret_env(HTTP_USERNAME_ENV, ref.name, ref.username_key))
    out.env.append(_secret_env(HTTP_PASSWORD_ENV, ref.name, ref.password_key))


def _http_args(policy: Policy, pre: Precondition, pod: Mapping[str, Any]) -> WaiterArgs:
    body = pre.body
    assert isinstance(body, HTTPCheck)
    out = WaiterArgs([f"--url={body.url}"])
    out.args += [f"--expect-status={code}" for code in body.expect_status]
    if body.ca_config_map is not None:
        mount_path = f"{CA_MOUNT_ROOT}/{pre.name}"
        out.args.append(f"--ca-file={mount_path}/ca.crt")
        out.mounts.append({"name": _ca_volume_name(pre), "mountPath": mount_path, "readOnly": True})
    for i, h in enumerate(body.headers):
        if h.value_from is None:
            out.args.append(f"--header={h.name}: {h.value}")
        else:
            var = f"{HEADER_ENV_PREFIX}{i}"
            out.args.append(f"--header-env={h.name}={var}")
            out.env.append(_secret_env(var, h.value_from.name, h.value_from.key))
    _basic_auth(out, body.basic_auth_secret_ref)
    if body.insecure_skip_verify:
        out.args.append("--insecure")
    return out


def _dns_args(policy: Policy, pre: Precondition, pod: Mapping[str, Any]) -> WaiterArgs:
    body = pre.body
    assert isinstance(body, DNSCheck)
    return WaiterArgs([f"--name={body.name}"])


def _download_args(policy: Policy, pre: Precondition, pod: Mapping[str, Any]) -> WaiterArgs:
    body = pre.body
    assert isinstance(body, DownloadTask)
    dest = policy.shared_volume.mount_path.rstrip("/") + "/" + body.path
    out = WaiterArgs(
        [f"--url={body.url}", f"--sha256={body.sha256}", f"--dest={dest}", f"--max-bytes={body.max_bytes}"],
        mounts=[_shared_mount(policy)],
    )
    _basic_auth(out, body.basic_auth_secret_ref)
    return out


def _verdict_args(policy: Policy, pre: Precondition, pod: Mapping[str, Any]) -> WaiterArgs:
    """Every type the operator judges: the pod reads the verdict back from the policy's status."""
    out = WaiterArgs([f"--policy={policy.name}", f"--precondition={pre.name}"])
    out.env.append(
        {
            "name": NAMESPACE_ENV,
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        }
    )
    if _needs_token(policy, pod):
        out.mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": True})
    return out


_WAITER_ARGS: Final[Mapping[str, Callable[[Policy, Precondition, Mapping[str, Any]], WaiterArgs]]] = {
    "tcp": _tcp_args,
    "redis": _redis_args,
    "http": _http_args,
    "dns": _dns_args,
    "download": _download_args,
    registry.VERDICT_WAITER: _verdict_args,
}
"""`depgate wait <subcommand>` (registry.PreconditionType.waiter) -> its flags for one precondition."""


def _waiter(policy: Policy, pre: Precondition, pod: Mapping[str, Any], config: RenderConfig) -> Obj:
    sub = registry.PRECONDITION_TYPES[pre.type].waiter
    assert sub is not None, f"{pre.type} runs the user's own container, not the waiter"
    own = _WAITER_ARGS[sub](policy, pre, pod)
    args = [f"--timeout={policy.timeout_of(pre)}", f"--period={policy.period_of(pre)}", *own.args]
    env, mounts = own.env, own.mounts
    container: Obj = {
        "name": pre.container_name,
        "image": config.waiter_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["depgate", "wait", sub],
        "args": args,
    }
    if env:
        container["env"] = env
    container["resources"] = _resources(policy)
    container["securityContext"] = _security_context(policy)
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _merge_env(copied: Sequence[Any], overrides: Sequence[Mapping[str, Any]]) -> list[Any]:
    out = [copy.deepcopy(e) for e in copied]
    for entry in overrides:
        at = next((i for i, e in enumerate(out) if isinstance(e, Mapping) and e.get("name") == entry["name"]), None)
        if at is None:
            out.append(copy.deepcopy(dict(entry)))
        else:
            out[at] = copy.deepcopy(dict(entry))
    return out


def _own_or_copied(
    given: Mapping[str, Any] | None, source: Mapping[str, Any] | None, key: str, default: Obj
) -> Obj | None:
    """A command's resources or securityContext: its own value, else (fromContainer) the source
    container's, or none when the source has none; `default` (depgate's restricted ones) only for a
    command with its own image. The API server shows an absent `resources` as `{}`: both are none,
    so a Deployment read back from the server renders as its file does."""
    if given is not None:
        return copy.deepcopy(dict(given))
    if source is None:
        return default
    copied = source.get(key)
    return copy.deepcopy(dict(copied)) if isinstance(copied, Mapping) and copied else None


def default_pull_policy(image: str) -> str:
    """The imagePullPolicy the API server gives a container of `image` without one: Always for `:latest` or
    no tag, IfNotPresent for any other tag or a digest."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _command(policy: Policy, pre: Precondition, body: CommandTask, pod: Mapping[str, Any]) -> Obj:
    """The user's own container: `image`, or a copy of app container `fromContainer` (its image and
    imagePullPolicy, env, envFrom, volumeMounts, workingDir, resources and securityContext) with the
    command's fields on top."""
    source: Mapping[str, Any] = {}
    if body.from_container is not None:
        source = next((c for c in _app_containers(pod) if c.get("name") == body.from_container), {})
    copied_from = source if body.from_container is not None else None
    container: Obj = {"name": pre.container_name, "image": body.image or source.get("image")}
    pull = source.get("imagePullPolicy")
    if not body.image and isinstance(pull, str) and isinstance(source.get("image"), str) \
            and pull != default_pull_policy(source["image"]):
        # the app's own image is pulled as the app's is (a `Never` image of the node's own would otherwise be
        # pulled, `:latest` defaulting to Always: Init:ErrImagePull on a real node, invisible under kwok). Only
        # when it differs from the API server's default for that image, which the init container gets anyway:
        # `depgate render` of a file without the field then equals what the operator applies to the live one.
        container["imagePullPolicy"] = pull
    if body.command:
        container["command"] = list(body.command)
    if body.args:
        container["args"] = list(body.args)
    working_dir = body.working_dir or source.get("workingDir")
    if working_dir:
        container["workingDir"] = working_dir
    env = _merge_env(_list(source, "env"), body.env)
    if env:
        container["env"] = env
    if _list(source, "envFrom"):
        container["envFrom"] = copy.deepcopy(_list(source, "envFrom"))
    resources = _own_or_copied(body.resources, copied_from, "resources", _resources(policy))
    if resources is not None:
        container["resources"] = resources
    security_context = _own_or_copied(body.security_context, copied_from, "securityContext", _security_context(policy))
    if security_context is not None:
        container["securityContext"] = security_context
    mounts = _mounts_without_ours(source)
    if policy.uses_shared_volume:
        mounts.append(_shared_mount(policy))
    if mounts:
        container["volumeMounts"] = mounts
    return container


def init_containers(policy: Policy, deployment: Mapping[str, Any], config: RenderConfig) -> list[Obj]:
    """depgate's init containers for this Deployment, in declared order."""
    pod = _pod_spec(deployment)
    out: list[Obj] = []
    for pre in policy.preconditions:
        if isinstance(pre.body, CommandTask):  # registry: the one type without a waiter
            out.append(_command(policy, pre, pre.body, pod))
        else:
            out.append(_waiter(policy, pre, pod, config))
    return out


def volumes(policy: Policy, deployment: Mapping[str, Any]) -> list[Obj]:
    """depgate's volumes: one per http caConfigMap (declared order), the shared volume, the token."""
    out: list[Obj] = []
    for pre in policy.preconditions:
        if isinstance(pre.body, HTTPCheck) and pre.body.ca_config_map is not None:
            ref = pre.body.ca_config_map
            out.append(
                {
                    "name": _ca_volume_name(pre),
                    "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": "ca.crt"}]},
                }
            )
    if policy.uses_shared_volume:
        size = policy.shared_volume.size_limit
        out.append({"name": SHARED_VOLUME, "emptyDir": {} if size is None else {"sizeLimit": size}})
    if _needs_token(policy, _pod_spec(deployment)):
        out.append(
            {
                "name": TOKEN_VOLUME,
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "path": "token",
                                "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                            }
                        },
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            }
        )
    return out


# --- problems judged against the Deployment ---------------------------------------------------------


def render_errors(policy: Policy, deployment: Mapping[str, Any], config: RenderConfig) -> list[RenderError]:
    """What keeps this policy from being applied to this Deployment, as data (empty: go ahead)."""
    errors: list[RenderError] = []
    if not config.waiter_image:
        errors.append(RenderError("waiterImage", "InvalidConfig", "the operator has no waiter image configured"))
    what = _describe(deployment)
    if deployment.get("kind", registry.DEPLOYMENT.kind) not in registry.TARGET_KINDS:
        errors.append(RenderError(f"spec.{policy.target_field}", "InvalidTarget",
                                  f"{what} is not one of {', '.join(registry.TARGET_KINDS)}"))
        return errors
    pod = _pod_spec(deployment)
    containers = _app_containers(pod)
    if not containers:
        at = ".".join((*template_path(deployment), "spec", "containers"))
        errors.append(RenderError(f"spec.{policy.target_field}", "InvalidTarget", f"{what} has no {at}"))
        return errors
    names = [str(c.get("name")) for c in containers]
    for i, pre in enumerate(policy.preconditions):
        source = pre.body.from_container if isinstance(pre.body, CommandTask) else None
        if source is not None and source not in names:
            errors.append(
                RenderError(
                    f"spec.preconditions[{i}].command.fromContainer",
                    "ContainerNotFound",
                    f"{what} has no container {source!r} (it has: {', '.join(names)})",
                )
            )
    if policy.uses_shared_volume:
        path = policy.shared_volume.mount_path.rstrip("/") or "/"
        for c in containers:
            for m in _mounts_without_ours(c):
                theirs = str(m.get("mountPath", "")).rstrip("/") or "/"
                if theirs == path:
                    how = f"already mounts volume {m.get('name')!r} at {path}"
                elif _inside(theirs, path):
                    how = f"mounts volume {m.get('name')!r} at {theirs}, inside {path}"
                elif _inside(path, theirs):
                    how = f"mounts volume {m.get('name')!r} at {theirs}, which {path} is inside"
                else:
                    continue
                errors.append(
                    RenderError(
                        "spec.sharedVolume.mountPath",
                        "MountPathConflict",
                        f"container {c.get('name')!r} of {what} {how}: choose another spec.sharedVolume.mountPath",
                    )
                )
    return errors


def _inside(path: str, parent: str) -> bool:
    """`path` is below `parent` (both without a trailing '/')."""
    return parent == "/" or path.startswith(parent + "/")


def _check(policy: Policy, deployment: Mapping[str, Any], config: RenderConfig) -> None:
    errors = render_errors(policy, deployment, config)
    if errors:
        raise RenderProblem(errors)


# --- the apply body and the result ------------------------------------------------------------------


def apply_body(policy: Policy, deployment: Mapping[str, Any], config: RenderConfig) -> Obj:
    """The server-side-apply body for field manager `depgate`: only the fields depgate owns.

    Raises RenderProblem when render_errors() is not empty.
    """
    _check(policy, deployment, config)
    meta = deployment.get("metadata") or {}
    metadata: Obj = {"name": meta.get("name")}
    namespace = meta.get("namespace") or policy.namespace
    if namespace:
        metadata["namespace"] = namespace
    metadata["annotations"] = {ANNOTATION: policy.name}
    pod_spec: Obj = {"initContainers": init_containers(policy, deployment, config)}
    vols = volumes(policy, deployment)
    if vols:
        pod_spec["volumes"] = vols
    if policy.uses_shared_volume:
        pod_spec["containers"] = [
            {"name": c.get("name"), "volumeMounts": [_shared_mount(policy)]}
            for c in _app_containers(_pod_spec(deployment))
        ]
    kind = str(deployment.get("kind") or registry.DEPLOYMENT.kind)
    wk = registry.WORKLOAD_KINDS.get(kind)
    return {
        "apiVersion": wk.api.api_version if wk else registry.DEPLOYMENT.api_version,
        "kind": kind,
        "metadata": metadata,
        **_nest(template_path(deployment), {"spec": pod_spec}),
    }


def _strip(obj: Obj, key: str, keep: Any) -> None:
    """Drop depgate's entries of obj[key]; drop the key too when only depgate's entries were there."""
    if not isinstance(obj.get(key), list):
        return
    before = obj[key]
    after = [item for item in before if keep(item)]
    if not after and len(after) < len(before):
        del obj[key]
    else:
        obj[key] = after


def without_ours(deployment: Mapping[str, Any]) -> Obj:
    """A copy of the Deployment without depgate's init containers, volumes and mounts."""
    out: Obj = copy.deepcopy(dict(deployment))
    pod = _pod_spec(out)
    if not isinstance(pod, dict):
        return out

    def not_ours(item: Any) -> bool:
        return not (isinstance(item, Mapping) and is_ours(item.get("name")))

    _strip(pod, "initContainers", not_ours)
    _strip(pod, "volumes", not_ours)
    for key in ("containers", "initContainers"):
        for container in _list(pod, key):
            if isinstance(container, dict):
                _strip(container, "volumeMounts", not_ours)
    return out


def rendered(policy: Policy, deployment: Mapping[str, Any], config: RenderConfig) -> Obj:
    """The whole Deployment as it looks once depgate's apply (and placement_patch) went through.

    The user's fields are untouched; ours are placed per spec.placement. Raises RenderProblem when
    render_errors() is not empty.
    """
    _check(policy, deployment, config)
    out = without_ours(deployment)
    meta = out.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations[ANNOTATION] = policy.name
    meta["annotations"] = annotations
    template = _template_of(out, template_path(out))
    pod = template.setdefault("spec", {})
    ours = init_containers(policy, out, config)
    theirs = _list(pod, "initContainers")
    if "initContainers" not in pod:  # a new key goes first, where people look for it
        template["spec"] = pod = {"initContainers": [], **pod}
    pod["initContainers"] = ours + theirs if policy.placement == "BeforeExisting" else theirs + ours
    vols = volumes(policy, out)
    if vols:
        pod["volumes"] = _list(pod, "volumes") + vols
    if policy.uses_shared_volume:
        for container in _list(pod, "containers"):
            container["volumeMounts"] = [*_list(container, "volumeMounts"), _shared_mount(policy)]
    return out


# --- names derived from the policy's name -----------------------------------------------------------

MAX_OBJECT_NAME: Final = 253
NAME_HASH_LENGTH: Final = 10


def derived_name(prefix: str, name: str, limit: int = MAX_OBJECT_NAME) -> str:
    """`prefix + name` when it fits in `limit` characters; else a truncation of it with '-' and a stable
    hash of the whole name, so two long names that share a prefix still get two names."""
    natural = prefix + name
    if len(natural) <= limit:
        return natural
    digest = hashlib.sha256(name.encode()).hexdigest()[:NAME_HASH_LENGTH]
    head = natural[: limit - NAME_HASH_LENGTH - 1].rstrip(".-")
    return f"{head}-{digest}"


def wait_role_name(policy_name: str) -> str:
    """The Role and RoleBinding that let the targets' pods read this policy (`depgate wait verdict`)."""
    return derived_name(WAIT_ROLE_PREFIX, policy_name)


# --- template mode ----------------------------------------------------------------------------------


# template_name (spec.template_name): the name of the Deployment a template-mode policy creates


def base_from_template(policy: Policy) -> Obj:
    """The Deployment of a template-mode policy, before depgate's additions."""
    if not isinstance(policy.target, Template):
        raise ValueError(f"policy {policy.name} has no spec.template")
    tmpl = policy.target
    metadata: Obj = {"name": template_name(policy)}
    if policy.namespace:
        metadata["namespace"] = policy.namespace
    if tmpl.metadata.labels:
        metadata["labels"] = dict(tmpl.metadata.labels)
    if tmpl.metadata.annotations:
        metadata["annotations"] = dict(tmpl.metadata.annotations)
    return {
        "apiVersion": registry.DEPLOYMENT.api_version,
        "kind": registry.DEPLOYMENT.kind,
        "metadata": metadata,
        "spec": copy.deepcopy(dict(tmpl.spec)),
    }


def owner_reference(policy: Policy) -> Obj | None:
    """The ownerReference a template-mode Deployment carries (None while the policy has no uid)."""
    if not policy.uid:
        return None
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": policy.name,
        "uid": policy.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def rendered_template(policy: Policy, config: RenderConfig, owner: Mapping[str, Any] | None) -> Obj:
    """The Deployment a template-mode policy creates, init containers included (also its apply body:
    depgate owns every field of it). `owner` is the ownerReference to set (see owner_reference)."""
    out = rendered(policy, base_from_template(policy), config)
    if owner is not None:
        out["metadata"]["ownerReferences"] = [dict(owner)]
    return out


# --- placement under server-side apply --------------------------------------------------------------


def ssa_merged_order(live: Sequence[str], applied: Sequence[str]) -> list[str]:
    """The order of a list map's keys after server-side apply merges `applied` into `live`.

    A model of structured-merge-diff's list merge: items only in live keep their place and come
    first, items only in the applied config follow the live items they come after, shared items
    follow the applied order. So a new entry is appended after the user's entries; BeforeExisting
    then needs placement_patch().
    """
    in_live, in_applied = set(live), set(applied)
    shared = [k for k in applied if k in in_live]
    next_shared = shared.pop(0) if shared else None
    out: list[str] = []
    emitted: set[str] = set()
    li = ri = 0
    while li < len(live) or ri < len(applied):
        if li < len(live) and ri < len(applied):
            key = live[li]
            if key == applied[ri]:
                out.append(key)
                emitted.add(key)
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if key in in_applied and next_shared is not None and next_shared != key:
                li += 1
                continue
        if li < len(live):
            key = live[li]
            if key not in in_applied:
                out.append(key)
                li += 1
                continue
            if key in emitted:
                li += 1
                continue
        if ri < len(applied):
            key = applied[ri]
            out.append(key)
            emitted.add(key)
            ri += 1
            if next_shared is not None and next_shared == key:
                next_shared = shared.pop(0) if shared else None
        else:
            li += 1
    return out


def placement_patch(policy: Policy, live: Mapping[str, Any]) -> list[Obj] | None:
    """A JSON patch that puts the live Deployment's init containers in the order placement asks for,
    or None when they already are. Reordering changes no field's value, so no field changes owner.
    Guarded by a test of metadata.resourceVersion when the live object has one."""
    inits = [c for c in _list(_pod_spec(live), "initContainers") if isinstance(c, Mapping)]
    wanted = [p.container_name for p in policy.preconditions]
    by_name = {c.get("name"): c for c in inits}
    ours = [by_name[n] for n in wanted if n in by_name]
    theirs = [c for c in inits if c.get("name") not in wanted]
    desired = ours + theirs if policy.placement == "BeforeExisting" else theirs + ours
    if [c.get("name") for c in desired] == [c.get("name") for c in inits]:
        return None
    patch: list[Obj] = []
    version = (live.get("metadata") or {}).get("resourceVersion")
    if version:
        patch.append({"op": "test", "path": "/metadata/resourceVersion", "value": version})
    at = "/" + "/".join((*template_path(live), "spec", "initContainers"))
    patch.append({"op": "replace", "path": at, "value": copy.deepcopy(desired)})
    return patch
