"""depgate.spec: defaults, typed bodies, groups, and every SpecError with its field path."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from depgate.spec import (
    GROUPS,
    TYPES,
    CommandTask,
    ConfigMapCheck,
    DNSCheck,
    DownloadTask,
    HTTPCheck,
    HTTPHeader,
    JobCheck,
    KeyRef,
    LabelSelectorRequirement,
    RedisCheck,
    ResourceCheck,
    SecretCheck,
    Selector,
    ServiceCheck,
    SpecError,
    TCPCheck,
    Template,
    WorkloadCheck,
    WorkloadRef,
    parse_policy,
)

SHA = "0" * 63 + "a"


def policy(*preconditions: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"workloadRef": {"name": "app"}}
    body.update(spec)
    body = {k: v for k, v in body.items() if v is not None}
    body["preconditions"] = list(preconditions) or [{"name": "db", "tcp": {"host": "db", "port": 5432}}]
    return {
        "apiVersion": "depgate.io/v1alpha1",
        "kind": "DependencyPolicy",
        "metadata": {"name": "app", "namespace": "shop", "uid": "u-1", "generation": 3},
        "spec": body,
    }


EVERY_TYPE: list[dict[str, Any]] = [
    {"name": "t", "tcp": {"host": "db", "port": 5432}},
    {"name": "r", "redis": {"host": "cache"}},
    {"name": "h", "http": {"url": "https://api/healthz"}},
    {"name": "d", "dns": {"name": "api.example.com"}},
    {"name": "s", "service": {"name": "api"}},
    {"name": "j", "job": {"name": "migrate"}},
    {"name": "sec", "secret": {"name": "creds", "keys": ["user", "password"]}},
    {"name": "cm", "configMap": {"name": "settings"}},
    {"name": "w", "workload": {"kind": "StatefulSet", "name": "db"}},
    {"name": "res", "resource": {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "name": "tls"}},
    {"name": "dl", "download": {"url": "http://files/model.bin", "sha256": SHA, "path": "models/model.bin"}},
    {"name": "cmd", "command": {"image": "busybox:1.36", "command": ["sh", "-c", "true"]}},
]


def test_minimal_policy_gets_every_default() -> None:
    p = parse_policy(policy())
    assert (p.name, p.namespace, p.uid, p.generation) == ("app", "shop", "u-1", 3)
    assert p.target == WorkloadRef(name="app", kind="Deployment")
    assert p.target_field == "workloadRef"
    assert p.placement == "BeforeExisting"
    assert (p.defaults.timeout_seconds, p.defaults.period_seconds) == (0, 1)
    assert p.defaults.resources is None and p.defaults.security_context is None
    assert p.shared_volume.mount_path == "/depgate/shared" and p.shared_volume.size_limit is None
    (pre,) = p.preconditions
    assert pre.body == TCPCheck(host="db", port=5432)
    assert (pre.timeout_seconds, pre.period_seconds) == (None, None)
    assert (p.timeout_of(pre), p.period_of(pre)) == (0, 1)
    assert pre.container_name == "depgate-db"


def test_every_type_parses_to_its_typed_body_and_group() -> None:
    p = parse_policy(policy(*EVERY_TYPE))
    assert [pre.type for pre in p.preconditions] == list(TYPES)
    bodies = [pre.body for pre in p.preconditions]
    assert bodies == [
        TCPCheck("db", 5432),
        RedisCheck("cache", 6379, None, False),
        HTTPCheck("https://api/healthz", (200,), None, (), False),
        DNSCheck("api.example.com"),
        ServiceCheck("api", 1),
        JobCheck("migrate"),
        SecretCheck("creds", ("user", "password")),
        ConfigMapCheck("settings", ()),
        WorkloadCheck("StatefulSet", "db", 1),
        ResourceCheck("cert-manager.io/v1", "Certificate", "tls", "Ready", "True"),
        DownloadTask("http://files/model.bin", SHA, "models/model.bin"),
        CommandTask(image="busybox:1.36", command=("sh", "-c", "true")),
    ]
    assert [pre.group for pre in p.preconditions] == [
        "network",
        "network",
        "network",
        "network",
        "api",
        "api",
        "api",
        "api",
        "api",
        "api",
        "task",
        "task",
    ]
    assert set(GROUPS) == set(TYPES)
    assert p.uses_shared_volume
    assert p.precondition("dl") is p.preconditions[10] and p.precondition("nope") is None


def test_overrides_and_full_bodies() -> None:
    p = parse_policy(
        policy(
            {
                "name": "cache",
                "timeoutSeconds": 30,
                "periodSeconds": 5,
                "redis": {
                    "host": "cache",
                    "port": 6380,
                    "tls": True,
                    "passwordSecretRef": {"name": "r", "key": "pw"},
                },
            },
            {
                "name": "api",
                "http": {
                    "url": "https://api:8443/ready?x=1",
                    "expectStatus": [200, 204],
                    "caConfigMap": {"name": "ca", "key": "ca.crt"},
                    "headers": [{"name": "Host", "value": "api.local"}],
                    "insecureSkipVerify": True,
                },
            },
            {"name": "ep", "service": {"name": "api", "minReadyEndpoints": 0}},
            {
                "name": "ready",
                "resource": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": "x",
                    "condition": "Done",
                    "status": "False",
                },
            },
            placement="AfterExisting",
            defaults={"timeoutSeconds": 120, "periodSeconds": 10, "resources": {"limits": {"cpu": "1"}}},
            sharedVolume={"mountPath": "/data", "sizeLimit": "1Gi"},
        )
    )
    cache, api, ep, ready = p.preconditions
    assert cache.body == RedisCheck("cache", 6380, KeyRef("r", "pw"), True)
    assert (p.timeout_of(cache), p.period_of(cache)) == (30, 5)
    assert (p.timeout_of(api), p.period_of(api)) == (120, 10)
    assert api.body == HTTPCheck(
        "https://api:8443/ready?x=1",
        (200, 204),
        KeyRef("ca", "ca.crt"),
        (HTTPHeader("Host", "api.local"),),
        True,
    )
    assert ep.body == ServiceCheck("api", 0)
    assert ready.body == ResourceCheck("v1", "Pod", "x", "Done", "False")
    assert p.placement == "AfterExisting"
    assert p.defaults.resources == {"limits": {"cpu": "1"}}
    assert (p.shared_volume.mount_path, p.shared_volume.size_limit) == ("/data", "1Gi")
    assert not p.uses_shared_volume


def test_command_from_container_keeps_free_form_fields() -> None:
    cmd = {
        "fromContainer": "server",
        "command": ["npm", "run", "await-redis"],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
        "workingDir": "/app",
        "resources": {"requests": {"cpu": "50m"}},
        "securityContext": {"runAsUser": 1000},
    }
    (pre,) = parse_policy(policy({"name": "await-redis", "command": cmd})).preconditions
    assert pre.body == CommandTask(
        from_container="server",
        command=("npm", "run", "await-redis"),
        env=(
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ),
        working_dir="/app",
        resources={"requests": {"cpu": "50m"}},
        security_context={"runAsUser": 1000},
    )


def test_selector_and_template_targets() -> None:
    sel = parse_policy(
        policy(
            workloadRef=None,
            selector={
                "matchLabels": {"tier": "app"},
                "matchExpressions": [
                    {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                    {"key": "legacy", "operator": "DoesNotExist"},
                ],
            },
        )
    )
    assert isinstance(sel.target, Selector)
    assert sel.target.match_expressions[0] == LabelSelectorRequirement("env", "In", ("prod", "staging"))
    assert sel.target.matches({"tier": "app", "env": "prod"})
    assert not sel.target.matches({"tier": "app", "env": "dev"})
    assert not sel.target.matches({"tier": "app", "env": "prod", "legacy": "1"})
    assert not sel.target.matches(None)
    assert Selector(match_expressions=(LabelSelectorRequirement("a", "NotIn", ("x",)),)).matches({})
    assert Selector(match_expressions=(LabelSelectorRequirement("a", "Exists"),)).matches({"a": ""})

    tmpl = parse_policy(
        policy(workloadRef=None, template={"metadata": {"labels": {"a": "b"}}, "spec": {"replicas": 1}})
    )
    assert isinstance(tmpl.target, Template)
    assert tmpl.target_field == "template"
    assert tmpl.target.metadata.name is None and tmpl.target.metadata.labels == {"a": "b"}
    assert tmpl.target.spec == {"replicas": 1}


def test_api_server_defaults_are_accepted_as_given() -> None:
    """What the API server stores after defaulting parses to the same policy."""
    raw = policy({"name": "r", "redis": {"host": "cache"}})
    stored = copy.deepcopy(raw)
    stored["spec"]["placement"] = "BeforeExisting"
    stored["spec"]["defaults"] = {"timeoutSeconds": 0, "periodSeconds": 1}
    stored["spec"]["workloadRef"]["kind"] = "Deployment"
    stored["spec"]["preconditions"][0]["redis"]["port"] = 6379
    stored["status"] = {"observedGeneration": 1}
    assert parse_policy(stored) == parse_policy(raw)


def test_whole_numbers_as_floats_are_integers() -> None:
    (pre,) = parse_policy(policy({"name": "t", "tcp": {"host": "db", "port": 80.0}})).preconditions
    assert pre.body == TCPCheck("db", 80)


def with_spec(**spec: Any) -> dict[str, Any]:
    obj = policy()
    obj["spec"] = spec
    return obj


def pre(body: dict[str, Any], name: str = "p", **extra: Any) -> dict[str, Any]:
    return policy({"name": name, **body, **extra})


def deep(levels: int) -> dict[str, Any]:
    """JSON nested `levels` objects deep, built without recursion."""
    node: dict[str, Any] = {}
    for _ in range(levels):
        node = {"a": node}
    return node


ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    # (case id, policy, field path, part of the message)
    # values the waiter cannot use (issue 12): refused with the field's path, as the CRD does
    ("url-non-ascii", pre({"http": {"url": "http://exämple.com/"}}), "spec.preconditions[0].http.url", "ASCII"),
    ("url-control", pre({"http": {"url": "http://a/\x07b"}}), "spec.preconditions[0].http.url", "ASCII"),
    ("url-space", pre({"download": {"url": "http://a/b c", "sha256": "a" * 64, "path": "f"}}),
     "spec.preconditions[0].download.url", "without spaces"),
    ("url-long-label", pre({"http": {"url": f"http://{'a' * 64}.com/"}}), "spec.preconditions[0].http.url",
     "longer than 63"),
    ("dns-long-label", pre({"dns": {"name": "a" * 64 + ".com"}}), "spec.preconditions[0].dns.name", "1-63"),
    ("dns-unicode", pre({"dns": {"name": "bücher.de"}}), "spec.preconditions[0].dns.name", "DNS name"),
    ("tcp-nul", pre({"tcp": {"host": "db\x00", "port": 1}}), "spec.preconditions[0].tcp.host", "host name"),
    ("redis-long-label", pre({"redis": {"host": "b" * 64}}), "spec.preconditions[0].redis.host", "1-63"),
    ("header-nul", pre({"http": {"url": "http://a", "headers": [{"name": "X", "value": "a\x00"}]}}),
     "spec.preconditions[0].http.headers[0].value", "NUL"),
    ("header-unicode", pre({"http": {"url": "http://a", "headers": [{"name": "X", "value": "é"}]}}),
     "spec.preconditions[0].http.headers[0].value", "ASCII"),
    ("header-name-nul", pre({"http": {"url": "http://a", "headers": [{"name": "X\x00", "value": "1"}]}}),
     "spec.preconditions[0].http.headers[0].name", "token"),
    ("download-path-nul", pre({"download": {"url": "http://a/b", "sha256": "a" * 64, "path": "f\x00"}}),
     "spec.preconditions[0].download.path", "control"),
    ("max-bytes-zero", pre({"download": {"url": "http://a/b", "sha256": "a" * 64, "path": "f", "maxBytes": 0}}),
     "spec.preconditions[0].download.maxBytes", "at least 1"),
    ("max-bytes-huge", pre({"download": {"url": "http://a/b", "sha256": "a" * 64, "path": "f",
                                         "maxBytes": 2**36 + 1}}),
     "spec.preconditions[0].download.maxBytes", "between 1 and 68719476736"),
    # Kubernetes-typed fields: their own fields, no deeper than the type, quantities
    ("resources-bad-quantity", policy({"name": "p", "dns": {"name": "x"}}, defaults={"resources": {
        "limits": {"memory": "lots"}}}), "spec.defaults.resources.limits.memory", "quantity"),
    ("resources-unknown", policy({"name": "p", "dns": {"name": "x"}}, defaults={"resources": {"x": 1}}),
     "spec.defaults.resources.x", "unknown field"),
    ("security-context-unknown", pre({"command": {"image": "b", "command": ["x"], "securityContext": {
        "bogus": True}}}), "spec.preconditions[0].command.securityContext.bogus", "unknown field"),
    ("security-context-deep", pre({"command": {"image": "b", "command": ["x"], "securityContext": {
        "capabilities": {"add": [{"a": [[1]]}]}}}}), "spec.preconditions[0].command.securityContext.capabilities.add",
     "nested deeper"),
    ("value-from-unknown", pre({"command": {"image": "b", "command": ["x"], "env": [{"name": "A", "valueFrom": {
        "bogus": {}}}]}}), "spec.preconditions[0].command.env[0].valueFrom.bogus", "unknown field"),
    ("template-deep", policy({"name": "p", "dns": {"name": "x"}}, workloadRef=None, template={
        "spec": {"template": deep(2000)}}), "spec.template.spec.template" + ".a" * 11, "nested deeper"),
    ("spec-too-large", policy({"name": "p", "command": {"image": "b", "args": ["x" * 8192] * 20}}),
     "spec", "more than 131072"),
    ("not-object", [], "", "must be an object"),  # type: ignore[list-item]
    ("api-version", {**policy(), "apiVersion": "v1"}, "apiVersion", "depgate.io/v1alpha1"),
    ("kind", {**policy(), "kind": "Deployment"}, "kind", "DependencyPolicy"),
    ("no-metadata", {"spec": policy()["spec"]}, "metadata", "required"),
    ("no-name", {**policy(), "metadata": {}}, "metadata.name", "required"),
    ("no-spec", {"metadata": {"name": "a"}}, "spec", "required"),
    ("spec-not-object", {"metadata": {"name": "a"}, "spec": []}, "spec", "must be an object"),
    ("unknown-spec-field", policy(replicas=2), "spec.replicas", "unknown field"),
    ("no-target", with_spec(preconditions=policy()["spec"]["preconditions"]), "spec", "found none"),
    ("two-targets", policy(selector={"matchLabels": {"a": "b"}}), "spec", "found workloadRef and selector"),
    (
        "workloadref-kind",
        policy(workloadRef={"kind": "ReplicaSet", "name": "x"}),
        "spec.workloadRef.kind",
        "one of",
    ),
    ("workloadref-name", policy(workloadRef={"name": "Bad_Name"}), "spec.workloadRef.name", "DNS subdomain"),
    (
        "workloadref-namespace",
        policy(workloadRef={"name": "a", "namespace": "b"}),
        "spec.workloadRef.namespace",
        "unknown field",
    ),
    ("empty-selector", policy(workloadRef=None, selector={}), "spec.selector", "at least one"),
    (
        "selector-values-in",
        policy(workloadRef=None, selector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
        "spec.selector.matchExpressions[0].values",
        "must not be empty",
    ),
    (
        "selector-values-exists",
        policy(
            workloadRef=None,
            selector={"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        ),
        "spec.selector.matchExpressions[0].values",
        "must be empty",
    ),
    (
        "selector-operator",
        policy(workloadRef=None, selector={"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        "spec.selector.matchExpressions[0].operator",
        "one of",
    ),
    (
        "selector-label-value",
        policy(workloadRef=None, selector={"matchLabels": {"a": "b c"}}),
        "spec.selector.matchLabels.a",
        "label value",
    ),
    (
        "template-no-spec",
        policy(workloadRef=None, template={"metadata": {"name": "x"}}),
        "spec.template.spec",
        "required",
    ),
    (
        "template-namespace",
        policy(workloadRef=None, template={"metadata": {"namespace": "x"}, "spec": {}}),
        "spec.template.metadata.namespace",
        "unknown field",
    ),
    ("placement", policy(placement="First"), "spec.placement", "BeforeExisting, AfterExisting"),
    (
        "defaults-timeout",
        policy(defaults={"timeoutSeconds": -1}),
        "spec.defaults.timeoutSeconds",
        "at least 0",
    ),
    (
        "defaults-period-0",
        policy(defaults={"periodSeconds": 0}),
        "spec.defaults.periodSeconds",
        "between 1 and 300",
    ),
    (
        "defaults-period-301",
        policy(defaults={"periodSeconds": 301}),
        "spec.defaults.periodSeconds",
        "between 1",
    ),
    (
        "defaults-timeout-type",
        policy(defaults={"timeoutSeconds": "10"}),
        "spec.defaults.timeoutSeconds",
        "must be an integer",
    ),
    ("defaults-bool", policy(defaults={"timeoutSeconds": True}), "spec.defaults.timeoutSeconds", "integer"),
    (
        "defaults-resources",
        policy(defaults={"resources": "small"}),
        "spec.defaults.resources",
        "must be an object",
    ),
    ("mount-relative", policy(sharedVolume={"mountPath": "data"}), "spec.sharedVolume.mountPath", "absolute"),
    ("mount-dotdot", policy(sharedVolume={"mountPath": "/a/../b"}), "spec.sharedVolume.mountPath", "'..'"),
    ("size-limit", policy(sharedVolume={"sizeLimit": "lots"}), "spec.sharedVolume.sizeLimit", "quantity"),
    ("no-preconditions", with_spec(workloadRef={"name": "a"}), "spec.preconditions", "required"),
    (
        "zero-preconditions",
        with_spec(workloadRef={"name": "a"}, preconditions=[]),
        "spec.preconditions",
        "at least 1 item",
    ),
    (
        "33-preconditions",
        with_spec(
            workloadRef={"name": "a"},
            preconditions=[{"name": f"p{i}", "dns": {"name": "x"}} for i in range(33)],
        ),
        "spec.preconditions",
        "at most 32",
    ),
    (
        "precondition-not-object",
        with_spec(workloadRef={"name": "a"}, preconditions=["tcp"]),
        "spec.preconditions[0]",
        "must be an object",
    ),
    ("no-name", policy({"tcp": {"host": "a", "port": 1}}), "spec.preconditions[0].name", "required"),
    ("name-upper", pre({"dns": {"name": "x"}}, name="Redis"), "spec.preconditions[0].name", "DNS label"),
    ("name-dash", pre({"dns": {"name": "x"}}, name="redis-"), "spec.preconditions[0].name", "DNS label"),
    ("name-53", pre({"dns": {"name": "x"}}, name="a" * 53), "spec.preconditions[0].name", "at most 52"),
    (
        "duplicate-name",
        policy(
            {"name": "a", "dns": {"name": "x"}},
            {"name": "b", "dns": {"name": "x"}},
            {"name": "a", "dns": {"name": "y"}},
        ),
        "spec.preconditions[2].name",
        "also spec.preconditions[0]",
    ),
    ("no-type", policy({"name": "a"}), "spec.preconditions[0]", "found none"),
    (
        "two-types",
        pre({"dns": {"name": "x"}, "tcp": {"host": "a", "port": 1}}),
        "spec.preconditions[0]",
        "found tcp and dns",
    ),
    ("unknown-type", pre({"postgres": {"host": "x"}}), "spec.preconditions[0].postgres", "unknown field"),
    (
        "timeout",
        pre({"dns": {"name": "x"}}, timeoutSeconds=-5),
        "spec.preconditions[0].timeoutSeconds",
        "at least 0",
    ),
    (
        "period",
        pre({"dns": {"name": "x"}}, periodSeconds=0),
        "spec.preconditions[0].periodSeconds",
        "between 1 and 300",
    ),
    (
        "tcp-port-0",
        pre({"tcp": {"host": "a", "port": 0}}),
        "spec.preconditions[0].tcp.port",
        "between 1 and 65535",
    ),
    ("tcp-port-65536", pre({"tcp": {"host": "a", "port": 65536}}), "spec.preconditions[0].tcp.port", "65535"),
    (
        "tcp-port-string",
        pre({"tcp": {"host": "a", "port": "80"}}),
        "spec.preconditions[0].tcp.port",
        "integer",
    ),
    ("tcp-no-port", pre({"tcp": {"host": "a"}}), "spec.preconditions[0].tcp.port", "required"),
    ("tcp-no-host", pre({"tcp": {"port": 1}}), "spec.preconditions[0].tcp.host", "required"),
    (
        "tcp-host-space",
        pre({"tcp": {"host": "a b", "port": 1}}),
        "spec.preconditions[0].tcp.host",
        "must be a host name or IP address",
    ),
    ("tcp-not-object", pre({"tcp": "db:5432"}), "spec.preconditions[0].tcp", "must be an object"),
    (
        "tcp-unknown",
        pre({"tcp": {"host": "a", "port": 1, "tls": True}}),
        "spec.preconditions[0].tcp.tls",
        "unknown field",
    ),
    ("redis-port", pre({"redis": {"host": "a", "port": 70000}}), "spec.preconditions[0].redis.port", "65535"),
    ("redis-tls", pre({"redis": {"host": "a", "tls": "yes"}}), "spec.preconditions[0].redis.tls", "boolean"),
    (
        "redis-secret-key",
        pre({"redis": {"host": "a", "passwordSecretRef": {"name": "s"}}}),
        "spec.preconditions[0].redis.passwordSecretRef.key",
        "required",
    ),
    (
        "http-scheme",
        pre({"http": {"url": "ftp://a/"}}),
        "spec.preconditions[0].http.url",
        "http:// or https://",
    ),
    ("http-no-host", pre({"http": {"url": "http:///x"}}), "spec.preconditions[0].http.url", "with a host"),
    ("http-space", pre({"http": {"url": "http://a/b c"}}), "spec.preconditions[0].http.url", "http"),
    (
        "http-status-99",
        pre({"http": {"url": "http://a", "expectStatus": [200, 99]}}),
        "spec.preconditions[0].http.expectStatus[1]",
        "between 100 and 599",
    ),
    (
        "http-status-600",
        pre({"http": {"url": "http://a", "expectStatus": [600]}}),
        "spec.preconditions[0].http.expectStatus[0]",
        "599",
    ),
    (
        "http-status-empty",
        pre({"http": {"url": "http://a", "expectStatus": []}}),
        "spec.preconditions[0].http.expectStatus",
        "at least 1",
    ),
    (
        "http-status-dup",
        pre({"http": {"url": "http://a", "expectStatus": [200, 200]}}),
        "spec.preconditions[0].http.expectStatus[1]",
        "duplicate",
    ),
    (
        "http-header-name",
        pre({"http": {"url": "http://a", "headers": [{"name": "X Y", "value": "1"}]}}),
        "spec.preconditions[0].http.headers[0].name",
        "header name",
    ),
    (
        "http-header-crlf",
        pre({"http": {"url": "http://a", "headers": [{"name": "X", "value": "1\r\nY: 2"}]}}),
        "spec.preconditions[0].http.headers[0].value",
        "no line break",
    ),
    (
        "http-ca-name",
        pre({"http": {"url": "https://a", "caConfigMap": {"key": "ca.crt"}}}),
        "spec.preconditions[0].http.caConfigMap.name",
        "required",
    ),
    ("dns-empty", pre({"dns": {"name": ""}}), "spec.preconditions[0].dns.name", "must not be empty"),
    ("service-name", pre({"service": {"name": "api.v1"}}), "spec.preconditions[0].service.name", "DNS label"),
    (
        "service-min",
        pre({"service": {"name": "a", "minReadyEndpoints": -1}}),
        "spec.preconditions[0].service.minReadyEndpoints",
        "at least 0",
    ),
    ("job-no-name", pre({"job": {}}), "spec.preconditions[0].job.name", "required"),
    (
        "secret-key",
        pre({"secret": {"name": "s", "keys": ["a/b"]}}),
        "spec.preconditions[0].secret.keys[0]",
        "letters",
    ),
    (
        "configmap-dup-key",
        pre({"configMap": {"name": "s", "keys": ["a", "a"]}}),
        "spec.preconditions[0].configMap.keys[1]",
        "duplicate",
    ),
    (
        "workload-kind",
        pre({"workload": {"kind": "Job", "name": "a"}}),
        "spec.preconditions[0].workload.kind",
        "Deployment, StatefulSet, DaemonSet",
    ),
    ("workload-no-kind", pre({"workload": {"name": "a"}}), "spec.preconditions[0].workload.kind", "required"),
    (
        "workload-min",
        pre({"workload": {"kind": "Deployment", "name": "a", "minAvailable": -1}}),
        "spec.preconditions[0].workload.minAvailable",
        "at least 0",
    ),
    (
        "resource-api-version",
        pre({"resource": {"apiVersion": "example.com", "kind": "Db", "name": "a"}}),
        "spec.preconditions[0].resource.apiVersion",
        "<group>/<version>",
    ),
    (
        "resource-status",
        pre({"resource": {"apiVersion": "v1", "kind": "Db", "name": "a", "status": "Yes"}}),
        "spec.preconditions[0].resource.status",
        "True, False, Unknown",
    ),
    (
        "resource-status-bool",
        pre({"resource": {"apiVersion": "v1", "kind": "Db", "name": "a", "status": True}}),
        "spec.preconditions[0].resource.status",
        "must be a string",
    ),
    (
        "download-url",
        pre({"download": {"url": "file:///etc/passwd", "sha256": SHA, "path": "a"}}),
        "spec.preconditions[0].download.url",
        "http:// or https://",
    ),
    (
        "download-sha-upper",
        pre({"download": {"url": "http://a", "sha256": SHA.upper(), "path": "a"}}),
        "spec.preconditions[0].download.sha256",
        "64 lowercase hexadecimal",
    ),
    (
        "download-sha-short",
        pre({"download": {"url": "http://a", "sha256": "abc", "path": "a"}}),
        "spec.preconditions[0].download.sha256",
        "64 lowercase hexadecimal",
    ),
    (
        "download-absolute",
        pre({"download": {"url": "http://a", "sha256": SHA, "path": "/etc/x"}}),
        "spec.preconditions[0].download.path",
        "relative",
    ),
    (
        "download-dotdot",
        pre({"download": {"url": "http://a", "sha256": SHA, "path": "a/../../x"}}),
        "spec.preconditions[0].download.path",
        "'..'",
    ),
    (
        "download-no-path",
        pre({"download": {"url": "http://a", "sha256": SHA}}),
        "spec.preconditions[0].download.path",
        "required",
    ),
    (
        "command-neither",
        pre({"command": {"command": ["true"]}}),
        "spec.preconditions[0].command",
        "found neither",
    ),
    (
        "command-both",
        pre({"command": {"image": "a", "fromContainer": "b", "command": ["true"]}}),
        "spec.preconditions[0].command",
        "found both",
    ),
    (
        "command-no-command",
        pre({"command": {"image": "a"}}),
        "spec.preconditions[0].command",
        "command or args must be set",
    ),
    *[
        (
            f"command-{probe}",
            pre({"command": {"image": "a", "command": ["true"], probe: {}}}),
            f"spec.preconditions[0].command.{probe}",
            "init containers do not support readinessProbe, livenessProbe, startupProbe or lifecycle: "
            "they must run to completion",
        )
        for probe in ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle")
    ],
    (
        "command-timeout",
        pre({"command": {"image": "a", "command": ["true"]}}, timeoutSeconds=5),
        "spec.preconditions[0].timeoutSeconds",
        "not allowed on a command",
    ),
    (
        "command-period",
        pre({"command": {"image": "a", "command": ["true"]}}, periodSeconds=5),
        "spec.preconditions[0].periodSeconds",
        "not allowed on a command",
    ),
    (
        "command-from-bad",
        pre({"command": {"fromContainer": "Server", "command": ["true"]}}),
        "spec.preconditions[0].command.fromContainer",
        "DNS label",
    ),
    (
        "command-args-type",
        pre({"command": {"image": "a", "args": "true"}}),
        "spec.preconditions[0].command.args",
        "must be an array",
    ),
    (
        "command-arg-type",
        pre({"command": {"image": "a", "args": ["--n", 3]}}),
        "spec.preconditions[0].command.args[1]",
        "must be a string",
    ),
    (
        "command-env-name",
        pre({"command": {"image": "a", "command": ["true"], "env": [{"value": "1"}]}}),
        "spec.preconditions[0].command.env[0].name",
        "required",
    ),
    (
        "command-env-dup",
        pre(
            {
                "command": {
                    "image": "a",
                    "command": ["true"],
                    "env": [{"name": "A"}, {"name": "A", "value": "2"}],
                }
            }
        ),
        "spec.preconditions[0].command.env[1].name",
        "duplicate",
    ),
    (
        "command-env-value",
        pre({"command": {"image": "a", "command": ["true"], "env": [{"name": "A", "value": 1}]}}),
        "spec.preconditions[0].command.env[0].value",
        "must be a string",
    ),
    (
        "command-security",
        pre({"command": {"image": "a", "command": ["true"], "securityContext": []}}),
        "spec.preconditions[0].command.securityContext",
        "must be an object",
    ),
    (
        "second-precondition",
        policy({"name": "ok", "dns": {"name": "x"}}, {"name": "bad", "tcp": {"host": "a", "port": 99999}}),
        "spec.preconditions[1].tcp.port",
        "65535",
    ),
]


@pytest.mark.parametrize(("obj", "path", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_spec_errors_name_the_field(obj: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_policy(obj)
    assert info.value.field_path == path
    assert message in info.value.message
    assert str(info.value) == f"{path}: {info.value.message}"


def test_every_precondition_type_has_an_error_case() -> None:
    covered = {e[2].split(".")[2] for e in ERRORS if e[2].startswith("spec.preconditions[") and e[2].count(".") >= 3}
    assert set(TYPES) <= covered
