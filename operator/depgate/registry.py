"""The tables every other module reads: the Kubernetes kinds depgate knows, the workload kinds, and
the precondition types (pure: the standard library and depgate.constants only).

Adding a precondition type:
  1. an entry in PRECONDITION_TYPES below (its name in the spec, group, who judges it, what it watches,
     the waiter subcommand that runs it in the pod);
  2. its body dataclass and parser in depgate.spec (`_BODIES`), and its schema in
     crds/dependencypolicies.depgate.io.yaml (tests/unit/test_crd_schema.py checks they agree);
  3. judged in the pod: its waiter flags in depgate.render (`_WAITER_ARGS`, keyed by the subcommand)
     and its check in depgate.waiter (config.py, checks.py);
     judged by the operator: its judge in depgate.verdicts and its read in the controller (the
     objects it names come from the body's `named_object()`).
tests/unit/test_registry.py fails while one of these is missing.

Adding a workload kind: an ApiKind and an entry in WORKLOAD_KINDS (`gated=True` if policies may
target it: render and the controller then need its pod template path and its apply body).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from depgate.constants import API, API_VERSION, KIND, NETWORK, PLURAL, TASK

# --------------------------------------------------------------------------- Kubernetes kinds


@dataclass(frozen=True)
class ApiKind:
    """A kind of object the API server serves: `apiVersion`, `kind` and the plural of its URL."""

    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        """The API group ("" for the core group of `v1`)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


DEPENDENCY_POLICY: Final = ApiKind(API_VERSION, KIND, PLURAL)
DEPLOYMENT: Final = ApiKind("apps/v1", "Deployment", "deployments")
STATEFUL_SET: Final = ApiKind("apps/v1", "StatefulSet", "statefulsets")
DAEMON_SET: Final = ApiKind("apps/v1", "DaemonSet", "daemonsets")
SERVICE: Final = ApiKind("v1", "Service", "services")
ENDPOINT_SLICE: Final = ApiKind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices")
JOB: Final = ApiKind("batch/v1", "Job", "jobs")
CRON_JOB: Final = ApiKind("batch/v1", "CronJob", "cronjobs")
SECRET: Final = ApiKind("v1", "Secret", "secrets")
CONFIG_MAP: Final = ApiKind("v1", "ConfigMap", "configmaps")
POD: Final = ApiKind("v1", "Pod", "pods")
ROLE: Final = ApiKind("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLE_BINDING: Final = ApiKind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")

API_KINDS: Final[Mapping[str, ApiKind]] = {
    k.kind: k
    for k in (
        DEPLOYMENT,
        STATEFUL_SET,
        DAEMON_SET,
        ROLE,
        ROLE_BINDING,
        SERVICE,
        SECRET,
        CONFIG_MAP,
        POD,
        JOB,
        CRON_JOB,
        ENDPOINT_SLICE,
        DEPENDENCY_POLICY,
    )
}
"""Every built-in kind depgate reads or writes, by kind (a `resource` precondition names others)."""

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"  # an EndpointSlice's Service


# --------------------------------------------------------------------------- workload kinds


@dataclass(frozen=True)
class WorkloadKind:
    """A kind with a pod template: `awaitable`: a `workload` precondition can wait on it; `gated`: a
    policy can target it (depgate renders its init containers into the pod template);
    `template_mutable`: the reconcile may change its pod template (a Job's cannot change after it is
    created: it is gated at admission only); `short`: kubectl's short name (status, printer columns)."""

    api: ApiKind
    gated: bool = False
    pod_template: tuple[str, ...] = ("spec", "template")  # where the pod template lives in the object
    template_mutable: bool = True
    awaitable: bool = True
    short: str = ""

    @property
    def kind(self) -> str:
        return self.api.kind


WORKLOAD_KINDS: Final[Mapping[str, WorkloadKind]] = {
    w.kind: w
    for w in (
        WorkloadKind(DEPLOYMENT, gated=True, short="deploy"),
        WorkloadKind(STATEFUL_SET, gated=True, short="sts"),
        WorkloadKind(DAEMON_SET, gated=True, short="ds"),
        WorkloadKind(CRON_JOB, gated=True, pod_template=("spec", "jobTemplate", "spec", "template"),
                     awaitable=False, short="cj"),
        WorkloadKind(JOB, gated=True, template_mutable=False, awaitable=False, short="job"),
    )
}
"""By kind, in the CRD's order (`workloadRef.kind`'s enum)."""

TARGET_KINDS: Final = tuple(w.kind for w in WORKLOAD_KINDS.values() if w.gated)
"""The kinds a policy can target (`workloadRef.kind`, `selector.kinds`)."""

AWAITABLE_KINDS: Final = tuple(w.kind for w in WORKLOAD_KINDS.values() if w.awaitable)
"""The kinds a `workload` precondition can wait on (`workload.kind`: those with availability)."""


def pod_template(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod template of a workload object, by its kind; one that names no kind (a `depgate render`
    file may not) or an unknown one is read where a Deployment's is. {} when absent."""
    wk = WORKLOAD_KINDS.get(str(obj.get("kind")))
    node: Any = obj
    for key in wk.pod_template if wk else ("spec", "template"):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def short_name(kind: str) -> str:
    """kubectl's short name of a workload kind ("deploy"), else the kind in lower case."""
    wk = WORKLOAD_KINDS.get(kind)
    return wk.short if wk and wk.short else kind.lower()


# --------------------------------------------------------------------------- precondition types

JUDGED_IN_POD: Final = "pod"
JUDGED_BY_OPERATOR: Final = "operator"
VERDICT_WAITER: Final = "verdict"  # `depgate wait verdict`: reads the operator's verdict from the policy


@dataclass(frozen=True)
class PreconditionType:
    """One precondition type.

    name: its field in spec.preconditions[] (and status.preconditions[].type).
    group: network | task | api (depgate.constants).
    judged_by: "pod" (its init container decides) or "operator" (depgate judges it from API objects and
        writes the verdict into the policy's status; the init container waits for Satisfied).
    watches: the built-in kinds whose events can change its verdict (operator-judged types).
    custom_kind: the kind it names is given in the precondition (a custom resource, on a shared watch).
    shared_watch: the built-in kind it names is watched like a custom resource, one shared watch per
        namespace that a policy needs (plan.custom_resources), never cluster-wide: Secrets, which the
        operator may read only where a namespace admin bound depgate-secret-reader to it.
    waiter: the `depgate wait <waiter>` subcommand of its init container; None when the init container
        runs the user's own image and command.
    shared_volume: it writes into the policy's shared volume (spec.sharedVolume is then mounted).
    """

    name: str
    group: str
    judged_by: str
    watches: tuple[ApiKind, ...] = ()
    custom_kind: bool = False
    waiter: str | None = None
    shared_volume: bool = False
    shared_watch: bool = False

    @property
    def judged_by_operator(self) -> bool:
        return self.judged_by == JUDGED_BY_OPERATOR


def _in_pod(name: str, group: str, waiter: str | None, shared_volume: bool = False) -> PreconditionType:
    return PreconditionType(name, group, JUDGED_IN_POD, waiter=waiter, shared_volume=shared_volume)


def _by_operator(name: str, watches: tuple[ApiKind, ...] = (), custom_kind: bool = False,
                 shared_watch: bool = False) -> PreconditionType:
    return PreconditionType(name, API, JUDGED_BY_OPERATOR, watches, custom_kind, VERDICT_WAITER,
                            shared_watch=shared_watch)


PRECONDITION_TYPES: Final[Mapping[str, PreconditionType]] = {
    t.name: t
    for t in (
        _in_pod("tcp", NETWORK, "tcp"),
        _in_pod("redis", NETWORK, "redis"),
        _in_pod("http", NETWORK, "http"),
        _in_pod("dns", NETWORK, "dns"),
        _by_operator("service", (SERVICE, ENDPOINT_SLICE)),
        _by_operator("job", (JOB,)),
        _by_operator("secret", shared_watch=True),  # no cluster-wide watch of Secrets
        _by_operator("configMap", (CONFIG_MAP,)),
        _by_operator("workload", tuple(w.api for w in WORKLOAD_KINDS.values() if w.awaitable)),
        _by_operator("resource", custom_kind=True),
        _in_pod("download", TASK, "download", shared_volume=True),
        _in_pod("command", TASK, None),
    )
}
"""By name, in the CRD's order (the order of `exactly one of ...` messages)."""

TYPES: Final = tuple(PRECONDITION_TYPES)
GROUPS: Final[Mapping[str, str]] = {t.name: t.group for t in PRECONDITION_TYPES.values()}
OPERATOR_JUDGED: Final = frozenset(t.name for t in PRECONDITION_TYPES.values() if t.judged_by_operator)


def judged_by_operator(type_name: str) -> bool:
    """Is a precondition of this type judged by the operator (else in the pod)?"""
    return type_name in OPERATOR_JUDGED


def watched_kinds() -> tuple[ApiKind, ...]:
    """The built-in kinds whose events can change some precondition's verdict, each once."""
    return tuple(dict.fromkeys(k for t in PRECONDITION_TYPES.values() for k in t.watches))
