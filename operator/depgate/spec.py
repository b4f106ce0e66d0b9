"""The DependencyPolicy model: a dict (as the API server or a YAML file gives it) -> a validated Policy.

Pure: the standard library and depgate.registry (which types and kinds exist) only. `parse_policy`
applies the same rules as the CRD's schema and CEL rules (crds/dependencypolicies.depgate.io.yaml),
so the operator and `depgate render` refuse a policy that reached them without the API server's
validation (an old CRD, a file on disk) with the same field path the server would name:
`SpecError("spec.preconditions[2].http.url", "...")`.

JSON field names are the camelCase of the dataclass field names (`timeout_seconds` ->
`timeoutSeconds`); tests/unit/test_crd_schema.py walks both and checks they agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

from depgate import registry
from depgate.constants import API_VERSION as API_VERSION  # re-exported: the policy API, spelled once
from depgate.constants import KIND as KIND
from depgate.constants import container_name

MAX_PRECONDITIONS: Final = 32
MAX_NAME_LENGTH: Final = 52  # "depgate-" + 52 = 60 and "depgate-ca-" + 52 = 63 <= 63 (a DNS label)
MAX_TIMEOUT_SECONDS: Final = 2**31 - 1
MAX_PERIOD_SECONDS: Final = 300
DEFAULT_MAX_BYTES: Final = 100 * 1024 * 1024  # download.maxBytes: 100 MiB
MAX_MAX_BYTES: Final = 64 * 1024**3
QUANTITY_MAX_LENGTH: Final = 64
MAX_KEY_LENGTH: Final = 317
# Kopf copies the spec into an annotation (json.dumps, compact), and a Kubernetes object's
# annotations hold 256 KiB together: a larger spec is refused here, so the operator reports it.
MAX_SPEC_BYTES: Final = 128 * 1024

PLACEMENTS: Final = ("BeforeExisting", "AfterExisting")
WORKLOAD_KINDS: Final = registry.AWAITABLE_KINDS  # what a `workload` precondition can wait on
TARGET_KINDS: Final = registry.TARGET_KINDS  # what workloadRef.kind and selector.kinds name
DEFAULT_SELECTOR_KINDS: Final = (registry.DEPLOYMENT.kind,)
CONDITION_STATUSES: Final = ("True", "False", "Unknown")
SELECTOR_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")
FORBIDDEN_COMMAND_FIELDS: Final = ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle")
FORBIDDEN_COMMAND_MESSAGE: Final = (
    "init containers do not support readinessProbe, livenessProbe, startupProbe or lifecycle: "
    "they must run to completion"
)

DNS_LABEL_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CONFIG_KEY_RE: Final = re.compile(r"^[-._a-zA-Z0-9]+$")
SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
# Printable ASCII only (no space, no control character, no non-ASCII: the waiter sends the URL as is).
URL_RE: Final = re.compile(r'^https?://[!"$-.0-9:->A-~]+(@[!"$-.0-9:->A-~]+)?([/?#][!-~]*)?$')
# A label of the URL's host longer than 63 characters (no resolver takes it): refused.
URL_LONG_LABEL_RE: Final = re.compile(r"^https?://([^/?#@]*@)?[^/?#@]*[^./?#@:]{64}")
HEADER_NAME_RE: Final = re.compile(r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$")
HEADER_VALUE_RE: Final = re.compile(r"^[\t -~]*$")  # HTAB and printable ASCII: no NUL, no line break
# A DNS name (labels of 1-63 letters, digits, '-' or '_', an optional final dot) and a host: the same,
# or an IP address (IPv6 with ':', '[]', a zone after '%').
DNS_NAME_RE: Final = re.compile(r"^([-A-Za-z0-9_]{1,63}\.)*[-A-Za-z0-9_]{1,63}\.?$")
HOST_RE: Final = re.compile(r"^([-A-Za-z0-9_:%\[\]]{1,63}\.)*[-A-Za-z0-9_:%\[\]]{1,63}\.?$")
IMAGE_RE: Final = re.compile(r"^[!-~]+$")  # printable ASCII, no space
CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
DOTDOT_RE: Final = re.compile(r"(^|/)\.\.(/|$)")
QUANTITY_RE: Final = re.compile(
    r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
API_VERSION_RE: Final = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?v[0-9]+"
    r"((alpha|beta)[0-9]+)?$"
)
KIND_RE: Final = re.compile(r"^[A-Z][A-Za-z0-9]*$")
LABEL_KEY_RE: Final = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE: Final = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# A URL whose authority carries userinfo (`user:password@host`): refused, credentials come from a Secret.
URL_USERINFO_RE: Final = re.compile(r"^https?://[^/?#]*@")
# A normalised absolute path: '/'-separated non-empty segments, no trailing '/', and (DOT_SEGMENT_RE)
# no '.' or '..' segment.
NORMAL_PATH_RE: Final = re.compile(r"^(/[^/]+)+$")
DOT_SEGMENT_RE: Final = re.compile(r"(^|/)\.\.?(/|$)")
# Where spec.sharedVolume.mountPath may not go (nor above: a mount at /var hides /var/run/secrets): the
# system directories an image's programs and libraries, its CA bundle (/etc/ssl/certs) and the
# ServiceAccount token (/var/run/secrets/kubernetes.io/serviceaccount) live in. /lib, /lib32, /lib64
# and /libx32 are SYSTEM_LIB_RE (not every /lib* name: /library is a data directory).
SYSTEM_PATHS: Final = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/bin",
    "/sbin",
    "/usr",
    "/boot",
    "/var/run/secrets",
    "/run/secrets",
)
SYSTEM_LIB_RE: Final = re.compile(r"^/lib(32|64|x32)?(/|$)")
# Request headers that carry credentials: their value must come from a Secret (valueFrom.secretKeyRef).
CREDENTIAL_HEADERS: Final = ("authorization", "proxy-authorization", "cookie")

# The Kubernetes types the CRD embeds (generated from the API server's OpenAPI by depgate.dev.crdgen):
# their fields, and how deep their structure goes (tests/unit/test_crd_schema.py checks both against
# the CRD). Policies that bypassed the schema are held to the same fields and depth here; the API
# server judges the rest when depgate applies them.
RESOURCES_FIELDS: Final = ("claims", "limits", "requests")
SECURITY_CONTEXT_FIELDS: Final = (
    "allowPrivilegeEscalation",
    "appArmorProfile",
    "capabilities",
    "privileged",
    "procMount",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seLinuxOptions",
    "seccompProfile",
    "windowsOptions",
)
ENV_VAR_SOURCE_FIELDS: Final = ("configMapKeyRef", "fieldRef", "fileKeyRef", "resourceFieldRef", "secretKeyRef")
DEPLOYMENT_SPEC_FIELDS: Final = (
    "minReadySeconds",
    "paused",
    "progressDeadlineSeconds",
    "replicas",
    "revisionHistoryLimit",
    "selector",
    "strategy",
    "template",
)
TYPE_DEPTHS: Final[Mapping[str, int]] = {
    "ResourceRequirements": 3,
    "SecurityContext": 3,
    "EnvVarSource": 2,
    "DeploymentSpec": 13,
}
"""Levels of objects and arrays, the type's root included, at most (the generated schema's depth)."""

Json: TypeAlias = Any
"""A JSON value kept as given (a container's env entry, resources, securityContext, a DeploymentSpec)."""


class SpecError(ValueError):
    """A policy the operator must refuse, with the path of the offending field."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


# --- targets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadRef:
    """`spec.workloadRef`: one workload of the policy's namespace, by kind and name."""

    name: str
    kind: str = registry.DEPLOYMENT.kind


@dataclass(frozen=True)
class LabelSelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        return False  # an operator parse_policy refuses (SELECTOR_OPERATORS) matches nothing


@dataclass(frozen=True)
class Selector:
    """`spec.selector`: every workload of `kinds` (default: Deployments) in the policy's namespace whose
    labels match.

    The one label-selector matcher of depgate (a Service's selector is `Selector(match_labels=...)`)."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()
    kinds: tuple[str, ...] = DEFAULT_SELECTOR_KINDS

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True)
class TemplateMetadata:
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Template:
    """`spec.template`: a Deployment depgate creates (and owns) in the policy's namespace."""

    spec: Mapping[str, Json]
    metadata: TemplateMetadata = field(default_factory=TemplateMetadata)


Target: TypeAlias = WorkloadRef | Selector | Template

# --- policy-wide settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    timeout_seconds: int = 0
    period_seconds: int = 1
    resources: Mapping[str, Json] | None = None
    security_context: Mapping[str, Json] | None = None


@dataclass(frozen=True)
class SharedVolume:
    mount_path: str = "/depgate/shared"
    size_limit: str | int | None = None


# --- precondition bodies, one per type ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyRef:
    """A key of a Secret or ConfigMap in the policy's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class TCPCheck:
    host: str  # network checks have a `host`: where the pod connects (depgate graph follows it to a Service)
    port: int


@dataclass(frozen=True)
class RedisCheck:
    host: str
    port: int = 6379
    password_secret_ref: KeyRef | None = None
    tls: bool = False


@dataclass(frozen=True)
class BasicAuthRef:
    """`basicAuthSecretRef`: HTTP basic auth from a Secret of the policy's namespace (the keys of a
    kubernetes.io/basic-auth Secret by default). The waiter reads both from env vars that reference
    the Secret, so neither lands in the pod's args."""

    name: str
    username_key: str = "username"
    password_key: str = "password"


@dataclass(frozen=True)
class HTTPHeader:
    """One request header: its `value`, or `valueFrom.secretKeyRef` (value_from) naming a Secret key."""

    name: str
    value: str | None = None
    value_from: KeyRef | None = None  # valueFrom.secretKeyRef


@dataclass(frozen=True)
class HTTPCheck:
    url: str
    expect_status: tuple[int, ...] = (200,)
    ca_config_map: KeyRef | None = None
    headers: tuple[HTTPHeader, ...] = ()
    insecure_skip_verify: bool = False
    basic_auth_secret_ref: BasicAuthRef | None = None

    @property
    def host(self) -> str | None:
        return _url_host(self.url)


@dataclass(frozen=True)
class DNSCheck:
    name: str

    @property
    def host(self) -> str:
        return self.name


ObjectName: TypeAlias = tuple[str, str, str]
"""(apiVersion, kind, name) of the object an api precondition names, in the policy's namespace."""


@dataclass(frozen=True)
class ServiceCheck:
    name: str
    min_ready_endpoints: int = 1

    def named_object(self) -> ObjectName:  # api checks name one object (depgate.graph.dependencies)
        return (registry.SERVICE.api_version, registry.SERVICE.kind, self.name)


@dataclass(frozen=True)
class JobCheck:
    name: str

    def named_object(self) -> ObjectName:
        return (registry.JOB.api_version, registry.JOB.kind, self.name)


@dataclass(frozen=True)
class SecretCheck:
    name: str
    keys: tuple[str, ...] = ()

    def named_object(self) -> ObjectName:
        return (registry.SECRET.api_version, registry.SECRET.kind, self.name)


@dataclass(frozen=True)
class ConfigMapCheck:
    name: str
    keys: tuple[str, ...] = ()

    def named_object(self) -> ObjectName:
        return (registry.CONFIG_MAP.api_version, registry.CONFIG_MAP.kind, self.name)


@dataclass(frozen=True)
class WorkloadCheck:
    kind: str
    name: str
    min_available: int = 1

    def named_object(self) -> ObjectName:
        return (registry.WORKLOAD_KINDS[self.kind].api.api_version, self.kind, self.name)


@dataclass(frozen=True)
class ResourceCheck:
    api_version: str
    kind: str
    name: str
    condition: str = "Ready"
    status: str = "True"

    def named_object(self) -> ObjectName:
        return (self.api_version, self.kind, self.name)


@dataclass(frozen=True)
class DownloadTask:
    url: str
    sha256: str
    path: str
    max_bytes: int = DEFAULT_MAX_BYTES
    basic_auth_secret_ref: BasicAuthRef | None = None

    @property
    def host(self) -> str | None:
        return _url_host(self.url)


def _url_host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # parse_policy refuses such a URL; a hand-built body may still carry one
        return None


@dataclass(frozen=True)
class CommandTask:
    image: str | None = None
    from_container: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[Mapping[str, Json], ...] = ()
    working_dir: str | None = None
    resources: Mapping[str, Json] | None = None
    security_context: Mapping[str, Json] | None = None


Body: TypeAlias = (
    TCPCheck
    | RedisCheck
    | HTTPCheck
    | DNSCheck
    | ServiceCheck
    | JobCheck
    | SecretCheck
    | ConfigMapCheck
    | WorkloadCheck
    | ResourceCheck
    | DownloadTask
    | CommandTask
)

TYPES: Final = registry.TYPES
GROUPS: Final = registry.GROUPS
"""Where each type is judged: network and task in the pod, api by the operator (see depgate.registry)."""


@dataclass(frozen=True)
class Precondition:
    name: str
    type: str
    body: Body
    timeout_seconds: int | None = None  # None: spec.defaults.timeoutSeconds
    period_seconds: int | None = None  # None: spec.defaults.periodSeconds

    @property
    def group(self) -> str:
        return GROUPS[self.type]

    @property
    def judged_by_operator(self) -> bool:
        return registry.judged_by_operator(self.type)

    @property
    def container_name(self) -> str:
        return container_name(self.name)


@dataclass(frozen=True)
class Policy:
    name: str
    target: Target
    preconditions: tuple[Precondition, ...]
    placement: str = "BeforeExisting"
    defaults: Defaults = field(default_factory=Defaults)
    shared_volume: SharedVolume = field(default_factory=SharedVolume)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None

    @property
    def target_field(self) -> str:
        """`workloadRef`, `selector` or `template`."""
        if isinstance(self.target, WorkloadRef):
            return "workloadRef"
        if isinstance(self.target, Selector):
            return "selector"
        return "template"

    @property
    def uses_shared_volume(self) -> bool:
        return any(registry.PRECONDITION_TYPES[p.type].shared_volume for p in self.preconditions)

    def precondition(self, name: str) -> Precondition | None:
        return next((p for p in self.preconditions if p.name == name), None)

    def timeout_of(self, pre: Precondition) -> int:
        return self.defaults.timeout_seconds if pre.timeout_seconds is None else pre.timeout_seconds

    def period_of(self, pre: Precondition) -> int:
        return self.defaults.period_seconds if pre.period_seconds is None else pre.period_seconds


def template_name(policy: Policy) -> str:
    """The name of the Deployment a template-mode policy creates: template.metadata.name, else the
    policy's own name."""
    if isinstance(policy.target, Template) and policy.target.metadata.name:
        return policy.target.metadata.name
    return policy.name


# --- what a policy makes depgate use or reveal ----------------------------------------------------------

ObjectRef: TypeAlias = tuple[str, str]
"""(field path in the policy, object name in the policy's namespace), e.g.
("spec.preconditions[2].redis.passwordSecretRef", "payments-db")."""


def _env_refs(env: Sequence[Mapping[str, Json]], path: str, source: str) -> list[ObjectRef]:
    out: list[ObjectRef] = []
    for i, entry in enumerate(env):
        value_from = entry.get("valueFrom") if isinstance(entry, Mapping) else None
        ref = value_from.get(source) if isinstance(value_from, Mapping) else None
        name = ref.get("name") if isinstance(ref, Mapping) else None
        if isinstance(name, str) and name:
            out.append((f"{path}.env[{i}].valueFrom.{source}", name))
    return out


def secret_refs(policy: Policy) -> list[ObjectRef]:
    """Every Secret the policy makes depgate use (render into a pod) or reveal (judge), in document order.

    A redis `passwordSecretRef`, a `secret` precondition (its existence and key names), a command's
    `env[].valueFrom.secretKeyRef`, an http or download `basicAuthSecretRef`, an http header's
    `valueFrom.secretKeyRef`. Not the Secrets the target's own pod template already uses (a command's
    `fromContainer` copies them: changing the workload is what the author needs the right to do), nor
    those a `template` Deployment's pod spec names (whoever may create the Deployment may run its pods).
    The authority check (depgate.authority) asks that the policy's author may `get` each of these.
    """
    out: list[ObjectRef] = []
    for i, pre in enumerate(policy.preconditions):
        at = f"spec.preconditions[{i}].{pre.type}"
        body = pre.body
        if isinstance(body, RedisCheck) and body.password_secret_ref is not None:
            out.append((f"{at}.passwordSecretRef", body.password_secret_ref.name))
        elif isinstance(body, SecretCheck):
            out.append((at, body.name))
        elif isinstance(body, CommandTask):
            out += _env_refs(body.env, at, "secretKeyRef")
        if isinstance(body, HTTPCheck | DownloadTask) and body.basic_auth_secret_ref is not None:
            out.append((f"{at}.basicAuthSecretRef", body.basic_auth_secret_ref.name))
        if isinstance(body, HTTPCheck):
            out += [
                (f"{at}.headers[{j}].valueFrom.secretKeyRef", h.value_from.name)
                for j, h in enumerate(body.headers)
                if h.value_from is not None
            ]
    return out


def config_map_refs(policy: Policy) -> list[ObjectRef]:
    """Every ConfigMap the policy makes depgate use or reveal, like secret_refs: a `configMap`
    precondition, an http `caConfigMap`, a command's `env[].valueFrom.configMapKeyRef`."""
    out: list[ObjectRef] = []
    for i, pre in enumerate(policy.preconditions):
        at = f"spec.preconditions[{i}].{pre.type}"
        body = pre.body
        if isinstance(body, ConfigMapCheck):
            out.append((at, body.name))
        elif isinstance(body, HTTPCheck) and body.ca_config_map is not None:
            out.append((f"{at}.caConfigMap", body.ca_config_map.name))
        elif isinstance(body, CommandTask):
            out += _env_refs(body.env, at, "configMapKeyRef")
    return out


# --- parsing -----------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


class _Obj:
    """An object being parsed: typed getters that name the field path in every error."""

    def __init__(self, value: object, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(value, Mapping):
            raise SpecError(path, f"must be an object, not {_type_name(value)}")
        for key in value:
            if key not in allowed:
                raise SpecError(_join(path, str(key)), f"unknown field (expected one of: {', '.join(allowed)})")
        self.value: Mapping[str, Json] = value
        self.path = path

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def raw(self, key: str) -> Json:
        return self.value.get(key)

    def obj(self, key: str, allowed: Sequence[str]) -> _Obj | None:
        if not self.has(key):
            return None
        return _Obj(self.value[key], self.at(key), allowed)

    def req_obj(self, key: str, allowed: Sequence[str]) -> _Obj:
        got = self.obj(key, allowed)
        if got is None:
            raise SpecError(self.at(key), "required")
        return got

    def typed_obj(self, key: str, fields: Sequence[str], type_name: str) -> Mapping[str, Json] | None:
        """An object of a Kubernetes type: its own fields only, no deeper than the type goes."""
        got = self.obj(key, fields)
        if got is None:
            return None
        _check_depth(got.value, got.path, TYPE_DEPTHS[type_name], type_name)
        return got.value

    def free_obj(self, key: str) -> Mapping[str, Json] | None:
        """An object kept as given (resources, securityContext, ...)."""
        if not self.has(key):
            return None
        value = self.value[key]
        if not isinstance(value, Mapping):
            raise SpecError(self.at(key), f"must be an object, not {_type_name(value)}")
        return value

    def opt_str(
        self,
        key: str,
        *,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        pattern_message: str = "",
        max_length: int = 253,
        choices: Sequence[str] = (),
    ) -> str | None:
        if not self.has(key):
            return default
        return _check_str(self.value[key], self.at(key), pattern, pattern_message, max_length, choices)

    def req_str(
        self,
        key: str,
        *,
        pattern: re.Pattern[str] | None = None,
        pattern_message: str = "",
        max_length: int = 253,
        choices: Sequence[str] = (),
    ) -> str:
        got = self.opt_str(
            key, pattern=pattern, pattern_message=pattern_message, max_length=max_length, choices=choices
        )
        if got is None:
            raise SpecError(self.at(key), "required")
        return got

    def opt_int(self, key: str, *, default: int | None, minimum: int, maximum: int) -> int | None:
        if not self.has(key):
            return default
        return _check_int(self.value[key], self.at(key), minimum, maximum)

    def req_int(self, key: str, *, minimum: int, maximum: int) -> int:
        got = self.opt_int(key, default=None, minimum=minimum, maximum=maximum)
        if got is None:
            raise SpecError(self.at(key), "required")
        return got

    def flag(self, key: str) -> bool:
        if not self.has(key):
            return False
        value = self.value[key]
        if not isinstance(value, bool):
            raise SpecError(self.at(key), f"must be a boolean, not {_type_name(value)}")
        return value

    def array(self, key: str, *, min_items: int = 0, max_items: int) -> list[Json] | None:
        if not self.has(key):
            return None
        value = self.value[key]
        if not isinstance(value, list | tuple):
            raise SpecError(self.at(key), f"must be an array, not {_type_name(value)}")
        if len(value) < min_items:
            raise SpecError(self.at(key), f"must have at least {min_items} item{'s' if min_items > 1 else ''}")
        if len(value) > max_items:
            raise SpecError(self.at(key), f"must have at most {max_items} items")
        return list(value)

    def str_list(
        self,
        key: str,
        *,
        max_items: int,
        max_length: int,
        pattern: re.Pattern[str] | None = None,
        pattern_message: str = "",
        unique: bool = False,
        choices: tuple[str, ...] = (),
    ) -> tuple[str, ...]:
        items = self.array(key, max_items=max_items) or []
        out: list[str] = []
        for i, item in enumerate(items):
            path = f"{self.at(key)}[{i}]"
            text = _check_str(item, path, pattern, pattern_message, max_length, choices)
            if unique and text in out:
                raise SpecError(path, f"duplicate value {text!r}")
            out.append(text)
        return tuple(out)

    def str_map(self, key: str, *, max_properties: int) -> dict[str, str]:
        value = self.free_obj(key) or {}
        if len(value) > max_properties:
            raise SpecError(self.at(key), f"must have at most {max_properties} entries")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(v, str):
                raise SpecError(f"{self.at(key)}.{k}", f"must be a string, not {_type_name(v)}")
            out[str(k)] = v
        return out


def _check_depth(value: Json, path: str, limit: int, type_name: str) -> None:
    """Iteratively (a hostile value may be nested deeper than Python's recursion limit)."""
    stack: list[tuple[Json, str, int]] = [(value, path, 0)]
    while stack:
        node, at, depth = stack.pop()
        children: list[tuple[Json, str]]
        if isinstance(node, Mapping):
            children = [(v, _join(at, str(k))) for k, v in node.items()]
        elif isinstance(node, list | tuple):
            children = [(v, f"{at}[{i}]") for i, v in enumerate(node)]
        else:
            continue
        if depth + 1 >= limit and children and any(isinstance(v, Mapping | list | tuple) for v, _ in children):
            raise SpecError(at, f"nested deeper than a {type_name} can be ({limit} levels)")
        stack.extend((v, p, depth + 1) for v, p in children)


def _check_quantities(resources: Mapping[str, Json] | None, path: str) -> None:
    for key in ("limits", "requests"):
        values = (resources or {}).get(key)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise SpecError(f"{path}.{key}", f"must be an object, not {_type_name(values)}")
        for name, q in values.items():
            at = f"{path}.{key}.{name}"
            if len(str(name)) > MAX_KEY_LENGTH:
                raise SpecError(f"{path}.{key}", f"keys must be at most {MAX_KEY_LENGTH} characters")
            if (
                isinstance(q, bool)
                or not isinstance(q, str | int)
                or len(str(q)) > QUANTITY_MAX_LENGTH
                or not QUANTITY_RE.fullmatch(str(q))
            ):
                raise SpecError(at, f"must be a quantity such as 64Mi or 250m (got {q!r})")


def _resources(o: _Obj) -> Mapping[str, Json] | None:
    got = o.typed_obj("resources", RESOURCES_FIELDS, "ResourceRequirements")
    _check_quantities(got, o.at("resources"))
    return got


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_str(
    value: object,
    path: str,
    pattern: re.Pattern[str] | None,
    pattern_message: str,
    max_length: int,
    choices: Sequence[str],
) -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, not {_type_name(value)}")
    if choices and value not in choices:
        raise SpecError(path, f"must be one of {', '.join(choices)} (got {value!r})")
    if value == "":
        raise SpecError(path, "must not be empty")
    if len(value) > max_length:
        raise SpecError(path, f"must be at most {max_length} characters (got {len(value)})")
    if pattern is not None and not pattern.fullmatch(value):
        raise SpecError(path, f"{pattern_message} (got {value!r})")
    return value


def _check_int(value: object, path: str, minimum: int, maximum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, not {_type_name(value)}")
    if not minimum <= value <= maximum:
        if maximum >= MAX_TIMEOUT_SECONDS and value < minimum:
            raise SpecError(path, f"must be at least {minimum} (got {value})")
        raise SpecError(path, f"must be between {minimum} and {maximum} (got {value})")
    return value


_DNS_LABEL_MSG = "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
_DNS_SUBDOMAIN_MSG = (
    "must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
)
_URL_MSG = (
    "must be an http:// or https:// URL with a host, in printable ASCII without spaces "
    "(percent-encode anything else)"
)
_URL_LABEL_MSG = "must not have a host label longer than 63 characters"
_PORT = {"minimum": 1, "maximum": 65535}
_HOST_MSG = (
    "must be a host name or IP address: ASCII letters, digits, '-', '_', ':', '%', '[', ']', "
    "labels of 1-63 characters separated by '.'"
)
_DNS_NAME_MSG = "must be a DNS name: ASCII letters, digits, '-' or '_', labels of 1-63 characters separated by '.'"


def _name(o: _Obj, key: str = "name") -> str:
    return o.req_str(key, pattern=DNS_SUBDOMAIN_RE, pattern_message=_DNS_SUBDOMAIN_MSG)


def _key_ref(o: _Obj | None) -> KeyRef | None:
    if o is None:
        return None
    return KeyRef(
        name=_name(o),
        key=o.req_str("key", pattern=CONFIG_KEY_RE, pattern_message="must consist of letters, digits, '-', '_' or '.'"),
    )


def _keys(o: _Obj) -> tuple[str, ...]:
    return o.str_list(
        "keys",
        max_items=64,
        max_length=253,
        pattern=CONFIG_KEY_RE,
        pattern_message="must consist of letters, digits, '-', '_' or '.'",
        unique=True,
    )


def _url(o: _Obj) -> str:
    url = o.req_str("url", pattern=URL_RE, pattern_message=_URL_MSG, max_length=2048)
    if URL_LONG_LABEL_RE.search(url):
        raise SpecError(o.at("url"), f"{_URL_LABEL_MSG} (got {url!r})")
    if URL_USERINFO_RE.search(url):  # never echo the URL: it holds a password
        raise SpecError(o.at("url"), _URL_USERINFO_MSG)
    return url


def _basic_auth(o: _Obj) -> BasicAuthRef | None:
    ref = o.obj("basicAuthSecretRef", ("name", "usernameKey", "passwordKey"))
    if ref is None:
        return None
    return BasicAuthRef(
        name=_name(ref),
        username_key=ref.opt_str("usernameKey", default="username", pattern=CONFIG_KEY_RE, pattern_message=_KEY_MSG)
        or "username",
        password_key=ref.opt_str("passwordKey", default="password", pattern=CONFIG_KEY_RE, pattern_message=_KEY_MSG)
        or "password",
    )


def _parse_tcp(o: _Obj) -> TCPCheck:
    return TCPCheck(
        host=o.req_str("host", pattern=HOST_RE, pattern_message=_HOST_MSG),
        port=o.req_int("port", **_PORT),
    )


def _parse_redis(o: _Obj) -> RedisCheck:
    return RedisCheck(
        host=o.req_str("host", pattern=HOST_RE, pattern_message=_HOST_MSG),
        port=o.opt_int("port", default=6379, **_PORT) or 6379,
        password_secret_ref=_key_ref(o.obj("passwordSecretRef", ("name", "key"))),
        tls=o.flag("tls"),
    )


def _parse_http(o: _Obj) -> HTTPCheck:
    url = _url(o)
    codes = o.array("expectStatus", min_items=1, max_items=32)
    expect: list[int] = []
    for i, code in enumerate(codes or [200]):
        path = f"{o.at('expectStatus')}[{i}]"
        value = _check_int(code, path, 100, 599)
        if value in expect:
            raise SpecError(path, f"duplicate value {value}")
        expect.append(value)
    ca_config_map = _key_ref(o.obj("caConfigMap", ("name", "key")))
    headers: list[HTTPHeader] = []
    for i, item in enumerate(o.array("headers", max_items=32) or []):
        h = _Obj(item, f"{o.at('headers')}[{i}]", ("name", "value", "valueFrom"))
        name = h.req_str(
            "name",
            pattern=HEADER_NAME_RE,
            pattern_message="must be an HTTP header name (a token)",
            max_length=256,
        )
        if ("value" in h.value) == h.has("valueFrom"):
            raise SpecError(h.path, "exactly one of value or valueFrom must be set")
        if "value" in h.value:
            if name.lower() in CREDENTIAL_HEADERS:
                raise SpecError(h.at("value"), _CREDENTIAL_HEADER_MSG.format(name=name))
            headers.append(HTTPHeader(name=name, value=_header_value(h)))
        else:
            source = h.req_obj("valueFrom", ("secretKeyRef",))
            ref = _key_ref(source.req_obj("secretKeyRef", ("name", "key")))
            headers.append(HTTPHeader(name=name, value_from=ref))
    basic_auth = _basic_auth(o)
    if basic_auth is not None:
        for i, header in enumerate(headers):
            if header.name.lower() == "authorization":
                raise SpecError(
                    f"{o.at('headers')}[{i}].name",
                    "an Authorization header and basicAuthSecretRef cannot both be set",
                )
    return HTTPCheck(
        url=url,
        expect_status=tuple(expect),
        ca_config_map=ca_config_map,
        headers=tuple(headers),
        insecure_skip_verify=o.flag("insecureSkipVerify"),
        basic_auth_secret_ref=basic_auth,
    )


def _header_value(h: _Obj) -> str:
    value = h.raw("value")
    path = h.at("value")
    if value is None:
        raise SpecError(path, "required")
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, not {_type_name(value)}")
    if len(value) > 4096:
        raise SpecError(path, f"must be at most 4096 characters (got {len(value)})")
    if not HEADER_VALUE_RE.fullmatch(value):
        raise SpecError(path, f"{_HEADER_VALUE_MSG} (got {value!r})")
    return value


_HEADER_VALUE_MSG = "must be printable ASCII or tabs: no line break, NUL or other control character"
_CREDENTIAL_HEADER_MSG = (
    "must not be given inline for a {name} header (it would land in the pod's args): "
    "use valueFrom.secretKeyRef, or basicAuthSecretRef for basic auth"
)
_URL_USERINFO_MSG = (
    "must not contain credentials (user:password@ before the host: they would land in the pod's args); "
    "put them in a Secret and use basicAuthSecretRef"
)
_KEY_MSG = "must consist of letters, digits, '-', '_' or '.'"


def _parse_dns(o: _Obj) -> DNSCheck:
    return DNSCheck(name=o.req_str("name", pattern=DNS_NAME_RE, pattern_message=_DNS_NAME_MSG))


def _parse_service(o: _Obj) -> ServiceCheck:
    return ServiceCheck(
        name=o.req_str("name", pattern=DNS_LABEL_RE, pattern_message=_DNS_LABEL_MSG, max_length=63),
        min_ready_endpoints=o.opt_int("minReadyEndpoints", default=1, minimum=0, maximum=MAX_TIMEOUT_SECONDS) or 0,
    )


def _parse_job(o: _Obj) -> JobCheck:
    return JobCheck(name=_name(o))


def _parse_secret(o: _Obj) -> SecretCheck:
    return SecretCheck(name=_name(o), keys=_keys(o))


def _parse_config_map(o: _Obj) -> ConfigMapCheck:
    return ConfigMapCheck(name=_name(o), keys=_keys(o))


def _parse_workload(o: _Obj) -> WorkloadCheck:
    return WorkloadCheck(
        kind=o.req_str("kind", choices=WORKLOAD_KINDS),
        name=_name(o),
        min_available=o.opt_int("minAvailable", default=1, minimum=0, maximum=MAX_TIMEOUT_SECONDS) or 0,
    )


def _parse_resource(o: _Obj) -> ResourceCheck:
    return ResourceCheck(
        api_version=o.req_str("apiVersion", pattern=API_VERSION_RE, pattern_message="must be <group>/<version> or v1"),
        kind=o.req_str("kind", pattern=KIND_RE, pattern_message="must be a kind in CamelCase", max_length=63),
        name=_name(o),
        condition=o.opt_str(
            "condition",
            default="Ready",
            pattern=KIND_RE,
            pattern_message="must be a condition type in CamelCase",
            max_length=316,
        )
        or "Ready",
        status=o.opt_str("status", default="True", choices=CONDITION_STATUSES) or "True",
    )


def _parse_download(o: _Obj) -> DownloadTask:
    url = _url(o)
    sha = o.req_str(
        "sha256", pattern=SHA256_RE, pattern_message="must be 64 lowercase hexadecimal digits", max_length=64
    )
    path = o.req_str("path", max_length=1024)
    if path.startswith("/") or DOTDOT_RE.search(path):
        raise SpecError(o.at("path"), f"must be a relative path inside the shared volume, without '..' (got {path!r})")
    if CONTROL_RE.search(path):
        raise SpecError(o.at("path"), f"must not contain control characters (got {path!r})")
    max_bytes = o.opt_int("maxBytes", default=DEFAULT_MAX_BYTES, minimum=1, maximum=MAX_MAX_BYTES)
    return DownloadTask(
        url=url, sha256=sha, path=path, max_bytes=max_bytes or DEFAULT_MAX_BYTES, basic_auth_secret_ref=_basic_auth(o)
    )


_COMMAND_FIELDS = (
    "image",
    "fromContainer",
    "command",
    "args",
    "env",
    "workingDir",
    "resources",
    "securityContext",
    *FORBIDDEN_COMMAND_FIELDS,
)


def _parse_command(o: _Obj) -> CommandTask:
    for key in FORBIDDEN_COMMAND_FIELDS:
        if key in o.value:
            raise SpecError(o.at(key), FORBIDDEN_COMMAND_MESSAGE)
    image = o.opt_str(
        "image",
        pattern=IMAGE_RE,
        pattern_message="must be an image reference in printable ASCII without spaces",
        max_length=1024,
    )
    source = o.opt_str("fromContainer", pattern=DNS_LABEL_RE, pattern_message=_DNS_LABEL_MSG, max_length=63)
    if (image is None) == (source is None):
        raise SpecError(
            o.path,
            "exactly one of image or fromContainer must be set" + (" (found both)" if image else " (found neither)"),
        )
    command = o.str_list("command", max_items=1024, max_length=32768)
    args = o.str_list("args", max_items=1024, max_length=32768)
    if not command and not args:
        raise SpecError(
            o.path,
            "command or args must be set: without them the init container would run the "
            "image's own entrypoint (your app), which never completes",
        )
    env: list[Mapping[str, Json]] = []
    for i, item in enumerate(o.array("env", max_items=256) or []):
        e = _Obj(item, f"{o.at('env')}[{i}]", ("name", "value", "valueFrom"))
        env_name = e.req_str("name", max_length=1024)
        if any(prev["name"] == env_name for prev in env):
            raise SpecError(e.at("name"), f"duplicate name {env_name!r}")
        if e.has("value") and not isinstance(e.raw("value"), str):
            raise SpecError(e.at("value"), f"must be a string, not {_type_name(e.raw('value'))}")
        e.typed_obj("valueFrom", ENV_VAR_SOURCE_FIELDS, "EnvVarSource")
        env.append(dict(item))
    return CommandTask(
        image=image,
        from_container=source,
        command=command,
        args=args,
        env=tuple(env),
        working_dir=o.opt_str("workingDir", max_length=4096),
        resources=_resources(o),
        security_context=o.typed_obj("securityContext", SECURITY_CONTEXT_FIELDS, "SecurityContext"),
    )


@dataclass(frozen=True)
class _BodyParser:
    cls: type[Any]  # the body dataclass
    fields: tuple[str, ...]  # the JSON fields it takes
    parse: Callable[[_Obj], Any]


_BODIES: Final[Mapping[str, _BodyParser]] = {
    "tcp": _BodyParser(TCPCheck, ("host", "port"), _parse_tcp),
    "redis": _BodyParser(RedisCheck, ("host", "port", "passwordSecretRef", "tls"), _parse_redis),
    "http": _BodyParser(
        HTTPCheck,
        ("url", "expectStatus", "caConfigMap", "headers", "insecureSkipVerify", "basicAuthSecretRef"),
        _parse_http,
    ),
    "dns": _BodyParser(DNSCheck, ("name",), _parse_dns),
    "service": _BodyParser(ServiceCheck, ("name", "minReadyEndpoints"), _parse_service),
    "job": _BodyParser(JobCheck, ("name",), _parse_job),
    "secret": _BodyParser(SecretCheck, ("name", "keys"), _parse_secret),
    "configMap": _BodyParser(ConfigMapCheck, ("name", "keys"), _parse_config_map),
    "workload": _BodyParser(WorkloadCheck, ("kind", "name", "minAvailable"), _parse_workload),
    "resource": _BodyParser(ResourceCheck, ("apiVersion", "kind", "name", "condition", "status"), _parse_resource),
    "download": _BodyParser(DownloadTask, ("url", "sha256", "path", "maxBytes", "basicAuthSecretRef"), _parse_download),
    "command": _BodyParser(CommandTask, _COMMAND_FIELDS, _parse_command),
}
"""Each precondition type's body: its dataclass, JSON fields and parser (keyed as depgate.registry)."""

BODY_TYPES: Final[Mapping[str, type[Any]]] = {name: _BODIES[name].cls for name in TYPES}
"""Precondition type (its field name in the spec) -> body class, in the CRD's order."""


def _parse_precondition(value: object, path: str) -> Precondition:
    o = _Obj(value, path, ("name", "timeoutSeconds", "periodSeconds", *TYPES))
    name = o.req_str(
        "name",
        pattern=DNS_LABEL_RE,
        max_length=MAX_NAME_LENGTH,
        pattern_message=_DNS_LABEL_MSG + f", at most {MAX_NAME_LENGTH} characters",
    )
    found = [t for t in TYPES if t in o.value]
    if len(found) != 1:
        got = "none" if not found else " and ".join(found)
        raise SpecError(path, f"exactly one of {', '.join(TYPES)} must be set (found {got})")
    kind = found[0]
    timeout = o.opt_int("timeoutSeconds", default=None, minimum=0, maximum=MAX_TIMEOUT_SECONDS)
    period = o.opt_int("periodSeconds", default=None, minimum=1, maximum=MAX_PERIOD_SECONDS)
    if kind == "command" and (timeout is not None or period is not None):
        key = "timeoutSeconds" if timeout is not None else "periodSeconds"
        raise SpecError(
            o.at(key),
            "not allowed on a command precondition: it runs your own command, not "
            "depgate's waiter (put a timeout in the command itself)",
        )
    parser = _BODIES[kind]
    body = parser.parse(o.req_obj(kind, parser.fields))
    return Precondition(name=name, type=kind, body=body, timeout_seconds=timeout, period_seconds=period)


# What depgate's own containers may not be given (spec.defaults.securityContext): (field path inside
# the securityContext, the value refused, why). A `command` precondition's own securityContext is the
# author's (its image too), judged by the authority check, not here.
_WAITER_SECURITY_REFUSALS: Final = (
    ("privileged", True, "depgate's waiters never need a privileged container"),
    ("allowPrivilegeEscalation", True, "depgate's waiters never need to gain privileges"),
    ("runAsUser", 0, "depgate's waiters run as a non-root user"),
    ("runAsNonRoot", False, "depgate's waiters run as a non-root user"),
    ("procMount", "Unmasked", "depgate's waiters need the default /proc masking"),
    ("windowsOptions.hostProcess", True, "depgate's waiters never run as a host process"),
    ("seccompProfile.type", "Unconfined", "depgate's waiters run with a seccomp profile"),
    ("appArmorProfile.type", "Unconfined", "depgate's waiters run with an AppArmor profile"),
)


def _same(value: Json, refused: object) -> bool:
    """JSON equality that keeps booleans apart from numbers (false is not 0 here)."""
    if isinstance(value, bool) or isinstance(refused, bool):
        return value is refused
    return bool(value == refused)


def _waiter_security_context(d: _Obj) -> Mapping[str, Json] | None:
    """spec.defaults.securityContext: a SecurityContext without privilege, root or added capabilities."""
    sc = d.typed_obj("securityContext", SECURITY_CONTEXT_FIELDS, "SecurityContext")
    if sc is None:
        return None
    at = d.at("securityContext")
    for dotted, refused, why in _WAITER_SECURITY_REFUSALS:
        node: Json = sc
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None and _same(node, refused):
            shown = json.dumps(refused)
            raise SpecError(f"{at}.{dotted}", f"must not be {shown}: {why}")
    caps = sc.get("capabilities")
    added = caps.get("add") if isinstance(caps, Mapping) else None
    if added:
        raise SpecError(
            f"{at}.capabilities.add",
            "must be empty: depgate's waiters need no capability (drop ALL is the default)",
        )
    return sc


def _check_mount_path(path: str, at: str) -> None:
    """A normalised absolute path outside (and not above) the system directories."""
    if path != "/" and (not NORMAL_PATH_RE.fullmatch(path) or DOT_SEGMENT_RE.search(path)):
        raise SpecError(at, f"{_MOUNT_PATH_NORMAL_MSG} (got {path!r})")
    if path == "/" or SYSTEM_LIB_RE.search(path) or any(
        path == root or path.startswith(root + "/") or root.startswith(path + "/") for root in SYSTEM_PATHS
    ):
        raise SpecError(at, f"{_MOUNT_PATH_SYSTEM_MSG} (got {path!r})")


_MOUNT_PATH_NORMAL_MSG = "must be a normalised absolute path: no '//', no '.' or '..' segment, no trailing '/'"
_MOUNT_PATH_SYSTEM_MSG = (
    "must not be /, a system directory (/etc, /proc, /sys, /dev, /bin, /sbin, /lib, /lib64, /usr, /boot, "
    "/var/run/secrets, /run/secrets), inside one or above one: the volume is mounted in every app "
    "container and would hide what is there (its CA bundle, its ServiceAccount token)"
)


def _parse_selector(o: _Obj) -> Selector:
    kinds = o.str_list("kinds", max_items=len(TARGET_KINDS), max_length=32, choices=TARGET_KINDS,
                       unique=True) if o.has("kinds") else None
    if kinds is not None and not kinds:
        raise SpecError(o.at("kinds"), f"must name at least one of {', '.join(TARGET_KINDS)} (or be left out: "
                                       "Deployment)")
    labels = o.str_map("matchLabels", max_properties=64)
    for k, v in labels.items():
        _check_label(o.at("matchLabels"), k, v)
    reqs: list[LabelSelectorRequirement] = []
    for i, item in enumerate(o.array("matchExpressions", max_items=64) or []):
        r = _Obj(item, f"{o.at('matchExpressions')}[{i}]", ("key", "operator", "values"))
        key = r.req_str("key", pattern=LABEL_KEY_RE, pattern_message="must be a label key", max_length=317)
        op = r.req_str("operator", choices=SELECTOR_OPERATORS)
        values = r.str_list(
            "values",
            max_items=256,
            max_length=63,
            pattern=LABEL_VALUE_RE,
            pattern_message="must be a label value",
        )
        if op in ("In", "NotIn") and not values:
            raise SpecError(r.at("values"), f"must not be empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise SpecError(r.at("values"), f"must be empty when operator is {op}")
        reqs.append(LabelSelectorRequirement(key=key, operator=op, values=values))
    if not labels and not reqs:
        raise SpecError(
            o.path,
            "must have at least one matchLabels entry or matchExpressions requirement "
            "(an empty selector would gate every workload of the namespace)",
        )
    if not labels and not any(r.operator in POSITIVE_OPERATORS for r in reqs):
        raise SpecError(o.path, _NO_POSITIVE_SELECTOR_MSG)
    return Selector(match_labels=labels, match_expressions=tuple(reqs),
                    kinds=tuple(kinds) if kinds else DEFAULT_SELECTOR_KINDS)


POSITIVE_OPERATORS: Final = ("In", "Exists")
_NO_POSITIVE_SELECTOR_MSG = (
    "must have a matchLabels entry or an In or Exists requirement: with only NotIn and DoesNotExist "
    "it matches every workload that lacks a label, which is nearly every workload of the namespace"
)


def _check_label(path: str, key: str, value: str) -> None:
    # Label keys are left to the API server (the CRD cannot check map keys cheaply); values are checked.
    if len(value) > 63 or not LABEL_VALUE_RE.fullmatch(value):
        raise SpecError(f"{path}.{key}", f"must be a label value of at most 63 characters (got {value!r})")


def _parse_template(o: _Obj) -> Template:
    meta = o.obj("metadata", ("name", "labels", "annotations"))
    name = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if meta is not None:
        name = meta.opt_str("name", pattern=DNS_SUBDOMAIN_RE, pattern_message=_DNS_SUBDOMAIN_MSG)
        labels = meta.str_map("labels", max_properties=256)
        for k, v in labels.items():
            _check_label(meta.at("labels"), k, v)
        annotations = meta.str_map("annotations", max_properties=256)
    spec = o.typed_obj("spec", DEPLOYMENT_SPEC_FIELDS, "DeploymentSpec")
    if spec is None:
        raise SpecError(o.at("spec"), "required")
    return Template(metadata=TemplateMetadata(name=name, labels=labels, annotations=annotations), spec=spec)


_TARGETS: Final = ("workloadRef", "selector", "template")
_SPEC_FIELDS: Final = (*_TARGETS, "placement", "defaults", "sharedVolume", "preconditions")


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A DependencyPolicy object (apiVersion, kind, metadata, spec[, status]) -> a validated Policy.

    Raises SpecError naming the first offending field, in document order.
    """
    if not isinstance(obj, Mapping):
        raise SpecError("", f"a DependencyPolicy must be an object, not {_type_name(obj)}")
    if obj.get("apiVersion") not in (None, API_VERSION):
        raise SpecError("apiVersion", f"must be {API_VERSION} (got {obj.get('apiVersion')!r})")
    if obj.get("kind") not in (None, KIND):
        raise SpecError("kind", f"must be {KIND} (got {obj.get('kind')!r})")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise SpecError("metadata", "required")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "required")
    if len(name) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(name):
        raise SpecError("metadata.name", _DNS_SUBDOMAIN_MSG)
    namespace = meta.get("namespace")
    uid = meta.get("uid")
    generation = meta.get("generation")

    spec = _Obj(obj.get("spec"), "spec", _SPEC_FIELDS) if obj.get("spec") is not None else None
    if spec is None:
        raise SpecError("spec", "required")

    found = [t for t in _TARGETS if spec.has(t)]
    if len(found) != 1:
        got = "none" if not found else " and ".join(found)
        raise SpecError("spec", f"exactly one of workloadRef, selector or template must be set (found {got})")
    target: Target
    if found[0] == "workloadRef":
        ref = spec.req_obj("workloadRef", ("kind", "name"))
        default_kind = registry.TARGET_KINDS[0]
        target = WorkloadRef(
            kind=ref.opt_str("kind", default=default_kind, choices=registry.TARGET_KINDS) or default_kind,
            name=_name(ref),
        )
    elif found[0] == "selector":
        target = _parse_selector(spec.req_obj("selector", ("matchLabels", "matchExpressions", "kinds")))
    else:
        target = _parse_template(spec.req_obj("template", ("metadata", "spec")))

    placement = spec.opt_str("placement", default="BeforeExisting", choices=PLACEMENTS) or "BeforeExisting"

    d = spec.obj("defaults", ("timeoutSeconds", "periodSeconds", "resources", "securityContext"))
    defaults = Defaults()
    if d is not None:
        defaults = Defaults(
            timeout_seconds=d.opt_int("timeoutSeconds", default=0, minimum=0, maximum=MAX_TIMEOUT_SECONDS) or 0,
            period_seconds=d.opt_int("periodSeconds", default=1, minimum=1, maximum=MAX_PERIOD_SECONDS) or 1,
            resources=_resources(d),
            security_context=_waiter_security_context(d),
        )

    sv = spec.obj("sharedVolume", ("mountPath", "sizeLimit"))
    shared = SharedVolume()
    if sv is not None:
        mount_path = sv.opt_str("mountPath", default="/depgate/shared", max_length=1024) or "/depgate/shared"
        if not mount_path.startswith("/") or ":" in mount_path or DOTDOT_RE.search(mount_path):
            raise SpecError(sv.at("mountPath"), f"must be an absolute path without ':' or '..' (got {mount_path!r})")
        if CONTROL_RE.search(mount_path):
            raise SpecError(sv.at("mountPath"), f"must not contain control characters (got {mount_path!r})")
        _check_mount_path(mount_path, sv.at("mountPath"))
        size = sv.raw("sizeLimit")
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, str | int) or not QUANTITY_RE.fullmatch(str(size))
        ):
            raise SpecError(sv.at("sizeLimit"), f"must be a quantity such as 64Mi (got {size!r})")
        shared = SharedVolume(mount_path=mount_path, size_limit=size)

    items = spec.array("preconditions", min_items=1, max_items=MAX_PRECONDITIONS)
    if items is None:
        raise SpecError("spec.preconditions", "required")
    preconditions: list[Precondition] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        path = f"spec.preconditions[{i}]"
        pre = _parse_precondition(item, path)
        if pre.name in seen:
            raise SpecError(f"{path}.name", f"duplicate name {pre.name!r} (also spec.preconditions[{seen[pre.name]}])")
        seen[pre.name] = i
        preconditions.append(pre)

    size = len(json.dumps(obj.get("spec"), separators=(",", ":")))
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            "spec",
            f"is {size} bytes as JSON, more than {MAX_SPEC_BYTES} (depgate's bookkeeping keeps a copy of "
            "the spec in an annotation, and annotations hold 256 KiB in all)",
        )

    return Policy(
        name=name,
        namespace=namespace if isinstance(namespace, str) and namespace else None,
        uid=uid if isinstance(uid, str) and uid else None,
        generation=generation if isinstance(generation, int) and not isinstance(generation, bool) else None,
        target=target,
        placement=placement,
        defaults=defaults,
        shared_volume=shared,
        preconditions=tuple(preconditions),
    )


@dataclass(frozen=True)
class Refused:
    """A policy parse_policies could not read: its namespace, name and the error."""

    namespace: str | None
    name: str
    error: SpecError


def parse_policies(objs: Iterable[Mapping[str, Any]]) -> tuple[list[Policy], list[Refused]]:
    """parse_policy over many objects: the policies that parse, and those refused (in given order)."""
    policies: list[Policy] = []
    refused: list[Refused] = []
    for obj in objs:
        try:
            policies.append(parse_policy(obj))
        except SpecError as e:
            meta = obj.get("metadata") if isinstance(obj, Mapping) else None
            meta = meta if isinstance(meta, Mapping) else {}
            ns, name = meta.get("namespace"), meta.get("name")
            refused.append(Refused(ns if isinstance(ns, str) else None, name if isinstance(name, str) else "", e))
    return policies, refused
