"""Bad input is rejected by the API server itself (schema + CEL), with a message naming the field,
and nothing is created. No webhook: `kubectl apply` and GitOps tools see the error at once."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.kubehelp import get

TCP = "tcp: {host: db, port: 5432}"


def policy(spec: str, name: str = "bad") -> str:
    return textwrap.dedent(f"""
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {{name: {name}}}
    spec:
    """) + textwrap.indent(textwrap.dedent(spec).strip(), "  ") + "\n"


def pre(body: str, name: str = "p") -> str:
    return f"""
    workloadRef: {{name: app}}
    preconditions:
    - name: {name}
      {body}
    """


CASES = {
    "no target": ("preconditions: [{name: p, " + TCP + "}]",
                  ["spec: Invalid value", "exactly one of spec.workloadRef, spec.selector or spec.template"]),
    "two targets": ("workloadRef: {name: a}\nselector: {matchLabels: {a: b}}\npreconditions: [{name: p, " + TCP + "}]",
                    ["exactly one of spec.workloadRef, spec.selector or spec.template"]),
    "no preconditions": ("workloadRef: {name: a}\npreconditions: []",
                         ["spec.preconditions: Invalid value", "should have at least 1 items"]),
    "duplicate names": ("workloadRef: {name: a}\npreconditions: [{name: p, " + TCP + "}, {name: p, dns: {name: x}}]",
                        ['spec.preconditions[1]: Duplicate value: {"name":"p"}']),
    "name not a DNS label": (pre(TCP, name="Bad_Name"), ["spec.preconditions[0].name", "DNS label"]),
    "name too long": (pre(TCP, name="a" * 53), ["spec.preconditions[0].name: Too long",
                                                 "may not be more than 52"]),
    "zero types": ("workloadRef: {name: a}\npreconditions: [{name: p}]",
                   ["spec.preconditions[0]", "exactly one of tcp, redis, http, dns, service"]),
    "two types": ("workloadRef: {name: a}\npreconditions: [{name: p, " + TCP + ", dns: {name: x}}]",
                  ["spec.preconditions[0]", "exactly one of tcp, redis"]),
    "port out of range": (pre("tcp: {host: db, port: 70000}"),
                          ["spec.preconditions[0].tcp.port: Invalid value: 70000",
                           "less than or equal to 65535"]),
    "port zero": (pre("redis: {host: db, port: 0}"),
                  ["spec.preconditions[0].redis.port: Invalid value: 0", "greater than or equal to 1"]),
    "url not http": (pre("http: {url: 'ftp://x/y'}"),
                     ["spec.preconditions[0].http.url", "must be an http:// or https:// URL"]),
    "expectStatus out of range": (pre("http: {url: 'http://x/', expectStatus: [99]}"),
                                  ["spec.preconditions[0].http.expectStatus[0]", "greater than or equal to 100"]),
    "sha256 not hex": (pre("download: {url: 'https://x/a', sha256: 'abc', path: a}"),
                       ["spec.preconditions[0].download.sha256", "64 lowercase hexadecimal digits"]),
    "download path absolute": (pre(f"download: {{url: 'https://x/a', sha256: '{'a' * 64}', path: /etc/passwd}}"),
                               ["spec.preconditions[0].download.path", "relative path"]),
    "download path escapes": (pre(f"download: {{url: 'https://x/a', sha256: '{'a' * 64}', path: a/../../b}}"),
                              ["spec.preconditions[0].download.path", "relative path"]),
    "command without image or fromContainer": (pre("command: {command: ['true']}"),
                                               ["spec.preconditions[0].command",
                                                "exactly one of command.image or command.fromContainer"]),
    "command with both": (pre("command: {image: busybox, fromContainer: app, command: ['true']}"),
                          ["exactly one of command.image or command.fromContainer"]),
    "command with a readinessProbe": (
        pre("command: {image: busybox, command: ['true'], readinessProbe: {exec: {command: ['true']}}}"),
        ["spec.preconditions[0].command.readinessProbe",
         "init containers do not support readinessProbe, livenessProbe, startupProbe or lifecycle"]),
    "command with lifecycle": (
        pre("command: {image: busybox, command: ['true'], lifecycle: {postStart: {exec: {command: ['true']}}}}"),
        ["spec.preconditions[0].command.lifecycle", "init containers do not support"]),
    "negative timeout": ("workloadRef: {name: a}\ndefaults: {timeoutSeconds: -1}\npreconditions: [{name: p, "
                         + TCP + "}]",
                         ["spec.defaults.timeoutSeconds: Invalid value: -1", "greater than or equal to 0"]),
    "more than 32 preconditions": (
        "workloadRef: {name: a}\npreconditions:\n" + "".join(f"- {{name: p{i}, {TCP}}}\n" for i in range(33)),
        ["spec.preconditions: Too many: 33: must have at most 32 items"]),
    "a namespace field": ("workloadRef: {name: a}\nnamespace: other\npreconditions: [{name: p, " + TCP + "}]",
                          ['unknown field "spec.namespace"']),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_server_rejects_with_the_field_path(plane, crds, namespace, case):
    spec, expected = CASES[case]
    proc = plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=policy(spec), check=False)
    assert proc.returncode != 0, f"{case}: accepted:\n{policy(spec)}"
    for fragment in expected:
        assert fragment in proc.stderr, f"{case}: {fragment!r} not in:\n{proc.stderr}"
    assert get(plane, namespace, "dependencypolicy", "bad") is None


def test_a_valid_policy_is_accepted_with_defaults(plane, crds, namespace):
    proc = plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=policy(pre("redis: {host: db}")))
    assert "dependencypolicy.depgate.io/bad created" in proc.stdout
    obj = get(plane, namespace, "dependencypolicy", "bad")
    assert obj["spec"]["placement"] == "BeforeExisting"
    assert obj["spec"]["preconditions"][0]["redis"]["port"] == 6379
    explain = plane.run_kubectl("explain", "dependencypolicy.spec.preconditions.http.expectStatus")
    assert "expectStatus" in explain.stdout and "DESCRIPTION" in explain.stdout
