"""Hostile policies against the real API server (issue 12): the CRD's Kubernetes-typed fields have the
real structure, so nested junk is pruned or refused; values the waiter cannot use are refused naming
their field; names derived from long policy names stay unique."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from depgate import plan
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


# Issue 14: what would let a policy make depgate escalate, refused by the CRD itself (no webhook needed),
# naming the field; depgate.spec refuses the same (tests/unit/test_spec_refusals.py).
DNS = {"dns": {"name": "x"}}
DOWNLOAD = {"download": {"url": "https://files/m", "sha256": SHA, "path": "m"}}
SC = "spec.defaults.securityContext"
MOUNT = "spec.sharedVolume.mountPath"
SECRET_REF = {"secretKeyRef": {"name": "s", "key": "k"}}


def sc(**fields: Any) -> dict[str, Any]:
    return pre(DNS, defaults={"securityContext": fields})


def mount(path: str) -> dict[str, Any]:
    return pre(DOWNLOAD, sharedVolume={"mountPath": path})


def http(**fields: Any) -> dict[str, Any]:
    return pre({"http": {"url": "https://api/healthz", **fields}})


def only(*exprs: dict[str, Any]) -> dict[str, Any]:
    return {"selector": {"matchExpressions": list(exprs)}, "preconditions": [{"name": "p", **DNS}]}


ESCALATIONS = {
    "privileged waiter": (sc(privileged=True), [f"{SC}.privileged: Forbidden", "must not be true"]),
    "privilege escalation": (sc(allowPrivilegeEscalation=True),
                             [f"{SC}.allowPrivilegeEscalation: Forbidden", "must not be true"]),
    "root waiter": (sc(runAsUser=0), [f"{SC}.runAsUser: Forbidden", "must not be 0"]),
    "runAsNonRoot false": (sc(runAsNonRoot=False), [f"{SC}.runAsNonRoot: Forbidden", "must not be false"]),
    "added capability": (sc(capabilities={"add": ["SYS_ADMIN"]}), [f"{SC}.capabilities.add: Forbidden",
                                                                    "must be empty"]),
    "unmasked proc": (sc(procMount="Unmasked"), [f"{SC}.procMount: Forbidden"]),
    "host process": (sc(windowsOptions={"hostProcess": True}), [f"{SC}.windowsOptions.hostProcess: Forbidden"]),
    "seccomp unconfined": (sc(seccompProfile={"type": "Unconfined"}), [f"{SC}.seccompProfile.type: Forbidden"]),
    "apparmor unconfined": (sc(appArmorProfile={"type": "Unconfined"}), [f"{SC}.appArmorProfile.type: Forbidden"]),
    "mount over the SA token": (mount("/var/run/secrets/kubernetes.io/serviceaccount"),
                                [MOUNT, "ServiceAccount token"]),
    "mount above the SA token": (mount("/var/run"), [MOUNT, "system directory"]),
    "mount over the CA bundle": (mount("/etc/ssl/certs"), [MOUNT, "system directory"]),
    "mount at /": (mount("/"), [MOUNT, "system directory"]),
    "mount at /run/secrets": (mount("/run/secrets"), [MOUNT, "system directory"]),
    "mount at /proc": (mount("/proc"), [MOUNT, "system directory"]),
    "mount at /sys": (mount("/sys"), [MOUNT, "system directory"]),
    "mount at /dev/shm": (mount("/dev/shm"), [MOUNT, "system directory"]),
    "mount at /bin": (mount("/bin"), [MOUNT, "system directory"]),
    "mount at /sbin": (mount("/sbin"), [MOUNT, "system directory"]),
    "mount at /lib64": (mount("/lib64"), [MOUNT, "system directory"]),
    "mount at /usr/lib": (mount("/usr/lib"), [MOUNT, "system directory"]),
    "mount at /boot": (mount("/boot"), [MOUNT, "system directory"]),
    "mount with a trailing slash": (mount("/etc/"), [MOUNT, "normalised absolute path"]),
    "mount with //": (mount("//etc"), [MOUNT, "normalised absolute path"]),
    "mount with a . segment": (mount("/./etc"), [MOUNT, "normalised absolute path"]),
    "http URL with credentials": (http(url="https://user:pw@api/healthz"),
                                  ["spec.preconditions[0].http.url", "must not contain credentials"]),
    "download URL with credentials": (
        pre({"download": {"url": "https://u:p@files/m", "sha256": SHA, "path": "m"}}),
        ["spec.preconditions[0].download.url", "must not contain credentials"]),
    "inline Authorization header": (http(headers=[{"name": "Authorization", "value": "Bearer t"}]),
                                    ["spec.preconditions[0].http.headers[0].value: Forbidden",
                                     "valueFrom.secretKeyRef"]),
    "inline Cookie header": (http(headers=[{"name": "COOKIE", "value": "s=1"}]),
                             ["spec.preconditions[0].http.headers[0].value: Forbidden"]),
    "header with value and valueFrom": (http(headers=[{"name": "X", "value": "1", "valueFrom": SECRET_REF}]),
                                        ["spec.preconditions[0].http.headers[0]", "exactly one of value or valueFrom"]),
    "header with neither": (http(headers=[{"name": "X"}]),
                            ["spec.preconditions[0].http.headers[0]", "exactly one of value or valueFrom"]),
    "basic auth and an Authorization header": (
        http(basicAuthSecretRef={"name": "creds"}, headers=[{"name": "Authorization", "valueFrom": SECRET_REF}]),
        ["spec.preconditions[0].http.headers", "cannot both be set"]),
    "selector with only DoesNotExist": (only({"key": "no-such-label", "operator": "DoesNotExist"}),
                                        ["spec.selector: Forbidden", "In or Exists requirement"]),
    "selector with only NotIn": (only({"key": "team", "operator": "NotIn", "values": ["a"]}),
                                 ["spec.selector: Forbidden", "In or Exists requirement"]),
}
REFUSED.update(ESCALATIONS)

STILL_ACCEPTED = {
    "restricted securityContext": sc(runAsNonRoot=True, runAsUser=65532, allowPrivilegeEscalation=False,
                                     privileged=False, capabilities={"drop": ["ALL"], "add": []},
                                     seccompProfile={"type": "RuntimeDefault"}, procMount="Default"),
    "mount at /library": mount("/library"),
    "mount at /var/lib/app": mount("/var/lib/app"),
    "Secret-backed basic auth and headers": http(
        basicAuthSecretRef={"name": "creds"},
        headers=[{"name": "X-Probe", "value": "1"}, {"name": "X-Key", "valueFrom": SECRET_REF}]),
    "Secret-backed Authorization header": http(headers=[{"name": "authorization", "valueFrom": SECRET_REF}]),
    "download with basic auth": pre({"download": {**DOWNLOAD["download"], "basicAuthSecretRef": {
        "name": "files", "usernameKey": "u", "passwordKey": "p"}}}),
    "@ in a URL's path": http(url="https://api/users/@me"),
    "selector with Exists and DoesNotExist": only({"key": "tier", "operator": "Exists"},
                                                  {"key": "canary", "operator": "DoesNotExist"}),
    "selector with matchLabels and NotIn": {
        "selector": {"matchLabels": {"app": "web"},
                     "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]},
        "preconditions": [{"name": "p", **DNS}]},
}


@pytest.mark.parametrize("case", list(STILL_ACCEPTED), ids=list(STILL_ACCEPTED))
def test_what_the_escalation_rules_still_accept(plane, crds, namespace, case):
    proc = create(plane, namespace, doc(STILL_ACCEPTED[case]), "--dry-run=server")
    assert proc.returncode == 0, f"{case}: {proc.stderr}"


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


def test_two_long_policy_names_sharing_a_prefix_each_keep_their_own_rolebinding(plane, operator, namespace):
    """Names of 240+ characters used to be cut to the same name, and the two policies overwrote each
    other's RBAC for the verdict waiter on every resync."""
    names = ["p" * 245 + "-one", "p" * 245 + "-two"]
    bindings = [plan.verdict_binding_name(n) for n in names]
    assert bindings[0] != bindings[1] and all(len(b) <= 253 for b in bindings)
    for i, name in enumerate(names):
        apply(plane, namespace, deployment(f"app{i}"))
        apply(plane, namespace, policy(name, f"app{i}", SETTINGS))
    for i, binding_name in enumerate(bindings):
        got = wait_for(lambda b=binding_name: get(plane, namespace, "rolebinding", b), 30, what="RoleBinding")
        assert got["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "depgate-verdict-reader"}
        assert [s["name"] for s in got["subjects"]] == ["default"]
        assert got["metadata"]["ownerReferences"][0]["name"] == names[i]
    # Nothing rewrites them afterwards (they used to flip between the two policies on every reconcile).
    versions = [get(plane, namespace, "rolebinding", b)["metadata"]["resourceVersion"] for b in bindings]
    for i, name in enumerate(names):  # wake both policies
        plane.run_kubectl("annotate", "-n", namespace, "dependencypolicy", name, f"poke=now{i}")
    plane.run_kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"},
         "data": {"redis.conf": "x"}}))
    for name in names:
        wait_for(lambda name=name: any(e.get("state") == "Satisfied" for e in (
            (get(plane, namespace, "dependencypolicy", name) or {}).get("status") or {}).get("preconditions") or []),
            30, what=f"{name[-3:]} satisfied")
    assert [get(plane, namespace, "rolebinding", b)["metadata"]["resourceVersion"] for b in bindings] == versions
