"""depgate.spec.secret_refs / config_map_refs: every Secret and ConfigMap a policy makes depgate use
or reveal, with the field path that names it (the authority check asks the author may read each)."""

from __future__ import annotations

from typing import Any

from depgate.spec import config_map_refs, parse_policy, secret_refs


def policy(*preconditions: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "depgate.io/v1alpha1",
        "kind": "DependencyPolicy",
        "metadata": {"name": "app", "namespace": "shop"},
        "spec": {"workloadRef": {"name": "app"}, "preconditions": list(preconditions)},
    }


EVERY_REF = policy(
    {"name": "t", "tcp": {"host": "db", "port": 5432}},
    {"name": "r", "redis": {"host": "cache", "passwordSecretRef": {"name": "redis-pw", "key": "pw"}}},
    {"name": "r2", "redis": {"host": "cache2"}},
    {"name": "sec", "secret": {"name": "creds", "keys": ["user"]}},
    {"name": "cm", "configMap": {"name": "settings"}},
    {"name": "h", "http": {"url": "https://api/healthz", "caConfigMap": {"name": "ca-bundle", "key": "ca.crt"},
                           "basicAuthSecretRef": {"name": "api-creds"},
                           "headers": [
                               {"name": "X-Probe", "value": "1"},
                               {"name": "X-Key", "valueFrom": {"secretKeyRef": {"name": "api-key", "key": "k"}}},
                           ]}},
    {
        "name": "cmd",
        "command": {
            "image": "busybox:1.36",
            "command": ["true"],
            "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "flags", "key": "c"}}},
                {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
        },
    },
    {"name": "dl", "download": {"url": "https://files/m", "sha256": "a" * 64, "path": "m",
                                "basicAuthSecretRef": {"name": "files"}}},
)


def test_secret_refs_name_every_secret_with_its_field_path() -> None:
    assert secret_refs(parse_policy(EVERY_REF)) == [
        ("spec.preconditions[1].redis.passwordSecretRef", "redis-pw"),
        ("spec.preconditions[3].secret", "creds"),
        ("spec.preconditions[5].http.basicAuthSecretRef", "api-creds"),
        ("spec.preconditions[5].http.headers[1].valueFrom.secretKeyRef", "api-key"),
        ("spec.preconditions[6].command.env[1].valueFrom.secretKeyRef", "db"),
        ("spec.preconditions[7].download.basicAuthSecretRef", "files"),
    ]


def test_config_map_refs_name_every_config_map_with_its_field_path() -> None:
    assert config_map_refs(parse_policy(EVERY_REF)) == [
        ("spec.preconditions[4].configMap", "settings"),
        ("spec.preconditions[5].http.caConfigMap", "ca-bundle"),
        ("spec.preconditions[6].command.env[2].valueFrom.configMapKeyRef", "flags"),
    ]


def test_a_policy_without_refs_has_none() -> None:
    p = parse_policy(policy({"name": "t", "tcp": {"host": "db", "port": 5432}}))
    assert secret_refs(p) == [] and config_map_refs(p) == []
