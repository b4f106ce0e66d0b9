"""Hostile policies against the real API server (issue 12): the CRD's Kubernetes-typed fields have the
real structure, so nested junk is pruned or refused; values the waiter cannot use are refused naming
their field; names derived from long policy names stay unique."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from depgate import render
from depgate.dev import crdgen
from tests.conftest import REPO, wait_for
from tests.integration.kubehelp import SETTINGS, apply, deployment, get, policy

SHA = "a" * 64


def depth(value: Any) -> int:
    level, frontier = 0, [value]
    while frontier:
        level += 1
        frontier = [c for v in frontier if isinstance(v, dict | list)
                    for c in (v.values() if isinstance(v, dict) else v)]
    return level


def doc(spec: dict[str, Any], name: str = "hostile") -> str:
    return json.dumps({"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
                       "metadata": {"name": name}, "spec": spec})


def pre(body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"workloadRef": {"name": "app"}, "preconditions": [{"name": "p", **body}], **spec}


def create(plane, ns: str, text: str, *flags: str):
    return plane.run_kubectl("create", "-n", ns, *flags, "-f", "-", input=text, check=False)


def test_the_generated_schema_is_what_the_api_server_serves(plane, crds):
    """The committed CRD's Kubernetes-typed fields are crdgen's conversion of this API server's
    /openapi/v3/apis/apps/v1 (regenerate with `python -m depgate.dev.crdgen` when it changes)."""
    served = json.loads(plane.run_kubectl("get", "--raw", crdgen.OPENAPI_PATH).stdout)
    committed = yaml.safe_load(crdgen.CRD_PATH.read_text())
    regenerated = crdgen.place(committed, crdgen.generated_types(served))
    assert crdgen.embedded(regenerated) == crdgen.embedded(committed)
    assert crdgen.dump(regenerated) == crdgen.CRD_PATH.read_text()


DEEP = "__DEEP__"  # replaced in the JSON text by 2,000 nested objects (json.dumps would recurse too deep)
DEEP_TEXT = '{"a":' * 2000 + "{}" + "}" * 2000
COMMAND = {"image": "busybox", "command": ["true"]}
# Every field that used to take any JSON, with 2,000 levels of nesting under an unknown key.
NESTED = {
    "template.spec": {"template": {"spec": {"x": DEEP, "replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                                            "template": {"metadata": {"labels": {"a": "b"}, "x": DEEP},
                                                         "spec": {"x": DEEP, "containers": [
                                                             {"name": "c", "image": "i", "x": DEEP}]}}},
                                   "x": DEEP},
                      "preconditions": [{"name": "p", "dns": {"name": "x"}}]},
    "defaults.resources": pre({"dns": {"name": "x"}}, defaults={"resources": {"x": DEEP}}),
    "defaults.securityContext": pre({"dns": {"name": "x"}}, defaults={"securityContext": {
        "x": DEEP, "capabilities": {"x": DEEP}}}),
    "command.resources": pre({"command": {**COMMAND, "resources": {"x": DEEP}}}),
    "command.securityContext": pre({"command": {**COMMAND, "securityContext": {"x": DEEP}}}),
    "command.env[].valueFrom": pre({"command": {**COMMAND, "env": [{"name": "A", "valueFrom": {
        "x": DEEP, "fieldRef": {"fieldPath": "metadata.name", "x": DEEP}}}]}}),
}


UNKNOWN = {
    "template.spec": "spec.template.spec.x",
    "defaults.resources": "spec.defaults.resources.x",
    "defaults.securityContext": "spec.defaults.securityContext.x",
    "command.resources": "spec.preconditions[0].command.resources.x",
    "command.securityContext": "spec.preconditions[0].command.securityContext.x",
    "command.env[].valueFrom": "spec.preconditions[0].command.env[0].valueFrom.x",
}


@pytest.mark.parametrize("field", list(NESTED), ids=list(NESTED))
def test_json_nested_2000_deep_is_pruned_or_refused(plane, crds, namespace, field):
    spec = NESTED[field]
    if field == "template.spec":
        spec = {"template": spec["template"], "preconditions": spec["preconditions"]}
    text = doc(spec).replace(json.dumps(DEEP), DEEP_TEXT)
    assert text.count(DEEP_TEXT) >= 1
    # kubectl's default (strict field validation): refused, naming the unknown field
    strict = create(plane, namespace, text)
    assert strict.returncode != 0, f"{field}: accepted with strict validation"
    assert f'unknown field "{UNKNOWN[field]}"' in strict.stderr, strict.stderr[:2000]
    assert get(plane, namespace, "dependencypolicy", "hostile") is None
    # a client that does not ask for validation: stored, with the junk pruned
    loose = create(plane, namespace, text, "--validate=false")
    assert loose.returncode == 0, loose.stderr
    stored = get(plane, namespace, "dependencypolicy", "hostile")
    assert stored is not None
    assert depth(stored["spec"]) < 20, f"{field}: stored {depth(stored['spec'])} levels deep"
    assert '"x":' not in json.dumps(stored["spec"], separators=(",", ":"))


# Each: (spec, fragments the API server's message must contain: the field's path, and why).
REFUSED = {
    "invalid quantity in defaults.resources": (
        pre({"dns": {"name": "x"}}, defaults={"resources": {"limits": {"memory": "lots"}}}),
        ["spec.defaults.resources.limits.memory", "should match"]),
    "quantity nested in command.resources": (
        pre({"command": {**COMMAND, "resources": {"requests": {"cpu": {"a": 1}}}}}),
        ["spec.preconditions[0].command.resources.requests.cpu"]),
    "unknown field in command.securityContext": (
        pre({"command": {**COMMAND, "securityContext": {"bogus": True}}}),
        ['unknown field "spec.preconditions[0].command.securityContext.bogus"']),
    "bogus valueFrom": (
        pre({"command": {**COMMAND, "env": [{"name": "A", "valueFrom": {"fieldRef": "metadata.name"}}]}}),
        ["spec.preconditions[0].command.env[0].valueFrom.fieldRef", "must be of type object"]),
    "template.spec.replicas many": (
        {"template": {"spec": {"replicas": "many", "selector": {"matchLabels": {"a": "b"}},
                               "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}},
         "preconditions": [{"name": "p", "dns": {"name": "x"}}]},
        ["spec.template.spec.replicas", "must be of type integer"]),
    "non-ASCII URL": (pre({"http": {"url": "http://exämple.com/"}}),
                      ["spec.preconditions[0].http.url", "printable ASCII"]),
    "URL with a control character": (pre({"http": {"url": "http://a/\u0007"}}),
                                      ["spec.preconditions[0].http.url", "printable ASCII"]),
    "URL with a space": (pre({"download": {"url": "https://a/b c", "sha256": SHA, "path": "f"}}),
                         ["spec.preconditions[0].download.url", "without spaces"]),
    "URL host label of 64": (pre({"http": {"url": f"http://{'a' * 64}.example/"}}),
                             ["spec.preconditions[0].http.url", "host label longer than 63"]),
    "dns.name label of 64": (pre({"dns": {"name": "a" * 64 + ".example"}}),
                             ["spec.preconditions[0].dns.name", "labels of 1-63 characters"]),
    "tcp host label of 64": (pre({"tcp": {"host": "a" * 64, "port": 1}}),
                             ["spec.preconditions[0].tcp.host", "labels of 1-63 characters"]),
    "NUL in a tcp host": (pre({"tcp": {"host": "db\u0000", "port": 1}}),
                          ["spec.preconditions[0].tcp.host", "host name or IP address"]),
    "NUL in a redis host": (pre({"redis": {"host": "cache\u0000x"}}),
                            ["spec.preconditions[0].redis.host", "host name or IP address"]),
    "NUL in a header value": (pre({"http": {"url": "http://a/", "headers": [{"name": "X", "value": "a\u0000"}]}}),
                              ["spec.preconditions[0].http.headers[0].value", "NUL"]),
    "control character in a header name": (
        pre({"http": {"url": "http://a/", "headers": [{"name": "X\u0001", "value": "1"}]}}),
        ["spec.preconditions[0].http.headers[0].name", "should match"]),
    "download.maxBytes zero": (pre({"download": {"url": "https://a/b", "sha256": SHA, "path": "f", "maxBytes": 0}}),
                               ["spec.preconditions[0].download.maxBytes", "greater than or equal to 1"]),
    "download.maxBytes over 64 GiB": (
        pre({"download": {"url": "https://a/b", "sha256": SHA, "path": "f", "maxBytes": 2**36 + 1}}),
        ["spec.preconditions[0].download.maxBytes", "less than or equal to 68719476736"]),
    "ephemeral containers in a template": (
        {"template": {"spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {
            "containers": [{"name": "c", "image": "i"}],
            "ephemeralContainers": [{"name": "e", "image": "i"}]}}}},
         "preconditions": [{"name": "p", "dns": {"name": "x"}}]},
        ["spec.template.spec.template.spec.ephemeralContainers", "Too many"]),
    "a label key of 400 characters": (
        {"selector": {"matchLabels": {"k" * 400: "v"}}, "preconditions": [{"name": "p", "dns": {"name": "x"}}]},
        ["spec.selector.matchLabels", "keys must be at most 317 characters"]),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_the_api_server_refuses_with_the_field_path(plane, crds, namespace, case):
    spec, fragments = REFUSED[case]
    proc = create(plane, namespace, doc(spec))
    assert proc.returncode != 0, f"{case}: accepted"
    for fragment in fragments:
        assert fragment in proc.stderr, f"{case}: {fragment!r} not in:\n{proc.stderr}"
    assert get(plane, namespace, "dependencypolicy", "hostile") is None


def test_download_max_bytes_defaults_to_100_mib(plane, crds, namespace):
    proc = create(plane, namespace, doc(pre({"download": {"url": "https://a/b", "sha256": SHA, "path": "f"}})))
    assert proc.returncode == 0, proc.stderr
    stored = get(plane, namespace, "dependencypolicy", "hostile")
    assert stored["spec"]["preconditions"][0]["download"]["maxBytes"] == 104857600


def test_examples_and_golden_policies_are_still_accepted(plane, crds, namespace):
    for path in sorted((REPO / "tests" / "golden").glob("*/policy.yaml")):
        body = yaml.safe_load(path.read_text())
        body["metadata"] = {"name": path.parent.name}
        proc = plane.run_kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-",
                                 input=json.dumps(body), check=False)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


def test_two_long_policy_names_sharing_a_prefix_each_keep_their_own_role(plane, operator, namespace):
    """Names of 240+ characters used to be cut to the same Role name, and the two policies
    overwrote each other's Role on every resync."""
    names = ["p" * 245 + "-one", "p" * 245 + "-two"]
    roles = [render.wait_role_name(n) for n in names]
    assert roles[0] != roles[1] and all(len(r) <= 253 for r in roles)
    for i, name in enumerate(names):
        apply(plane, namespace, deployment(f"app{i}"))
        apply(plane, namespace, policy(name, f"app{i}", SETTINGS))
    for name, role in zip(names, roles, strict=True):
        got = wait_for(lambda role=role: get(plane, namespace, "role", role), 30, what=f"Role {role}")
        assert got["rules"][0]["resourceNames"] == [name]
        binding = wait_for(lambda role=role: get(plane, namespace, "rolebinding", role), 30, what="RoleBinding")
        assert binding["roleRef"]["name"] == role
    # Nothing rewrites them afterwards (they used to flip between the two policies on every reconcile).
    versions = [get(plane, namespace, "role", r)["metadata"]["resourceVersion"] for r in roles]
    for i, name in enumerate(names):  # wake both policies: a spec change, reconciled
        plane.run_kubectl("annotate", "-n", namespace, "dependencypolicy", name, f"poke=now{i}")
    plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"},
         "data": {"redis.conf": "x"}}))
    for name in names:
        wait_for(lambda name=name: any(e.get("state") == "Satisfied" for e in (
            (get(plane, namespace, "dependencypolicy", name) or {}).get("status") or {}).get("preconditions") or []),
            30, what=f"{name[-3:]} satisfied")
    assert [get(plane, namespace, "role", r)["metadata"]["resourceVersion"] for r in roles] == versions
    assert [get(plane, namespace, "role", r)["rules"][0]["resourceNames"] for r in roles] == [[n] for n in names]
