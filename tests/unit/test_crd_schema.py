"""The DependencyPolicy CRD, offline: structural, described, CEL-budgeted, and in step with depgate.spec.

The API server's own verdicts (CEL messages, rejections) are tested against a real kube-apiserver
elsewhere; here nothing needs a cluster.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from depgate import spec as S
from depgate.dev import crdgen

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "dependencypolicies.depgate.io.yaml"
# The OpenAPI the generated parts came from, as the Kubernetes module ships it (the plane compiles
# from that module; tests/integration/test_hostile_schema.py compares with what the server serves).
KUBE_OPENAPI = Path.home() / "go/pkg/mod/k8s.io/kubernetes@v1.34.4/api/openapi-spec/v3/apis__apps__v1_openapi.json"
GENERATED = {".spec.template.spec", ".spec.defaults.resources", ".spec.defaults.securityContext",
             ".spec.preconditions[].command.resources", ".spec.preconditions[].command.securityContext",
             ".spec.preconditions[].command.env[].valueFrom"}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (v,) = crd["spec"]["versions"]
    return v


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def json_fields(cls: type[Any]) -> list[str]:
    return [camel(f.name) for f in dataclasses.fields(cls)]


def test_identity(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "dependencypolicies.depgate.io"
    spec = crd["spec"]
    assert spec["group"] == "depgate.io" and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "DependencyPolicy",
        "dependencypolicies",
        "dependencypolicy",
    )
    assert names["shortNames"] == ["dp"] and names["categories"] == ["depgate"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(cols) == ["Targets", "Blocking", "Ready", "Reason", "Pods", "Message", "Age"]
    assert cols["Targets"]["jsonPath"] == ".status.targetSummary"
    # -o wide only: a terminal-wide default table, and the detail one command away
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")] == ["Pods", "Message"]
    assert cols["Pods"]["jsonPath"] == ".status.podSummary"
    assert cols["Message"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].message'
    assert cols["Blocking"]["jsonPath"] == ".status.blockingSummary"
    assert cols["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert cols["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert (cols["Age"]["type"], cols["Age"]["jsonPath"]) == ("date", ".metadata.creationTimestamp")


def test_structural(schema: dict[str, Any]) -> None:
    """Every node has a type (or is int-or-string); metadata is only `type: object`; list maps key on
    required fields; preserve-unknown only where design.md says a free-form object goes."""
    assert schema["properties"]["metadata"] == {"type": "object"}
    free = set()
    for path, node in walk(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert node.get("type") in ("object", "array", "string", "integer", "boolean"), path
        if node["type"] == "array":
            assert "items" in node, path
        if node.get("x-kubernetes-list-type") == "map":
            for key in node["x-kubernetes-list-map-keys"]:  # required, or defaulted (ports: protocol TCP)
                item = node["items"]
                assert key in item.get("required", []) or "default" in item["properties"][key], path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object" and "properties" not in node, path
            free.add(path)
    # Free-form only where any value is refused by a CEL rule (init containers take no probes).
    assert free == {
        ".spec.preconditions[].command.readinessProbe",
        ".spec.preconditions[].command.livenessProbe",
        ".spec.preconditions[].command.startupProbe",
        ".spec.preconditions[].command.lifecycle",
    }


def test_every_field_is_described(schema: dict[str, Any]) -> None:
    missing = [
        p
        for p, node in walk(schema)
        if p != ".metadata"
        and not any(p.startswith(g) and p != g for g in GENERATED)  # `kubectl explain deployment` has those
        and not node.get("description", "").strip()
    ]
    assert missing == []


def test_no_namespace_field_anywhere(schema: dict[str, Any]) -> None:
    assert [p for p, _ in walk(schema["properties"]["spec"], ".spec") if p.endswith(".namespace")] == []


def test_every_cel_rule_has_a_message_and_bounded_inputs(schema: dict[str, Any]) -> None:
    rules = 0
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            rules += 1
            assert rule["message"].strip(), path
            assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, path
            assert rule.get("reason", "FieldValueInvalid") in (
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            )
    assert rules >= 15
    # The cost estimator needs bounds on everything CEL can see: every string, list and map of the spec.
    for path, node in walk(schema["properties"]["spec"], ".spec"):
        if node.get("type") == "string" or node.get("x-kubernetes-int-or-string"):
            assert "maxLength" in node or "enum" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path
            rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
            assert f"self.all(k, size(k) <= {S.MAX_KEY_LENGTH})" in rules, path  # map keys have no maxLength


def test_cel_messages_name_their_field(schema: dict[str, Any]) -> None:
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            leaf = path.rsplit(".", 1)[-1].rstrip("[]") or "spec"
            named = [leaf, *(node.get("properties") or {})]
            assert any(n in rule["message"] for n in named), (path, rule["message"])


def test_the_command_rule_message(schema: dict[str, Any]) -> None:
    command = schema["properties"]["spec"]["properties"]["preconditions"]["items"]["properties"]["command"]
    messages = {r.get("fieldPath"): r["message"] for r in command["x-kubernetes-validations"]}
    for field in S.FORBIDDEN_COMMAND_FIELDS:
        assert messages[f".{field}"] == S.FORBIDDEN_COMMAND_MESSAGE
        assert command["properties"][field]["x-kubernetes-preserve-unknown-fields"] is True


def test_preconditions_list(schema: dict[str, Any]) -> None:
    pre = schema["properties"]["spec"]["properties"]["preconditions"]
    assert pre["x-kubernetes-list-type"] == "map" and pre["x-kubernetes-list-map-keys"] == ["name"]
    assert (pre["minItems"], pre["maxItems"]) == (1, S.MAX_PRECONDITIONS)
    name = pre["items"]["properties"]["name"]
    assert name["maxLength"] == S.MAX_NAME_LENGTH
    (rule,) = name["x-kubernetes-validations"]
    assert rule["rule"] == f"self.matches(r'{S.DNS_LABEL_RE.pattern}')"
    assert "depgate-<name>" in rule["message"] and "63" in rule["message"]


def test_status_schema(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert set(status) == {
        "observedGeneration",
        "targets",
        "targetSummary",
        "blocking",
        "blockingSummary",
        "pods",
        "podSummary",
        "preconditions",
        "conditions",
    }
    target = status["targets"]["items"]
    assert target["required"] == ["kind", "name"]
    assert set(target["properties"]) == {"kind", "name", "pods", "blockedOn", "note"}
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    entry = status["preconditions"]["items"]["properties"]
    assert set(entry) == {
        "name",
        "type",
        "state",
        "reason",
        "message",
        "blockedPods",
        "timedOutPods",
        "since",
        "lastSatisfiedTime",
        "satisfiedUID",
    }
    assert entry["state"]["enum"] == ["Satisfied", "Blocking", "Pending", "Failed", "Unknown"]
    assert set(status["pods"]["properties"]) == {"total", "initializing", "ready"}


# --- the CRD and spec.py agree ------------------------------------------------------------------------


def props(node: dict[str, Any]) -> dict[str, Any]:
    return node.get("properties") or {}


def assert_same_fields(node: dict[str, Any], cls: type[Any], path: str, extra: tuple[str, ...] = ()) -> None:
    assert set(props(node)) == set(json_fields(cls)) | set(extra), path
    required = [
        camel(f.name)
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    assert set(node.get("required", [])) == set(required), path
    for f in dataclasses.fields(cls):
        crd_default = props(node)[camel(f.name)].get("default")
        if (
            f.default is not dataclasses.MISSING
            and f.default is not None
            and f.default is not False
            and f.default != ()
        ):
            want = list(f.default) if isinstance(f.default, tuple) else f.default
            assert crd_default == want, f"{path}.{camel(f.name)}"
        else:
            assert crd_default is None, f"{path}.{camel(f.name)}"


def test_spec_fields_agree(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    sp = props(spec)
    assert set(sp) == {
        "workloadRef",
        "selector",
        "template",
        "placement",
        "defaults",
        "sharedVolume",
        "preconditions",
    }
    assert_same_fields(sp["workloadRef"], S.WorkloadRef, "workloadRef")
    assert_same_fields(sp["selector"], S.Selector, "selector")
    assert_same_fields(props(sp["selector"])["matchExpressions"]["items"], S.LabelSelectorRequirement, "expr")
    assert_same_fields(sp["template"], S.Template, "template")
    assert_same_fields(props(sp["template"])["metadata"], S.TemplateMetadata, "template.metadata")
    assert_same_fields(sp["defaults"], S.Defaults, "defaults")
    assert_same_fields(sp["sharedVolume"], S.SharedVolume, "sharedVolume")
    assert sp["placement"]["enum"] == list(S.PLACEMENTS) and sp["placement"]["default"] == S.PLACEMENTS[0]

    item = sp["preconditions"]["items"]
    own = [camel(f.name) for f in dataclasses.fields(S.Precondition) if f.name not in ("type", "body")]
    assert set(props(item)) == set(own) | set(S.TYPES)
    assert list(props(item))[len(own) :] == list(S.TYPES)  # same order as spec.TYPES
    for kind, cls in S.BODY_TYPES.items():
        extra = S.FORBIDDEN_COMMAND_FIELDS if kind == "command" else ()
        assert_same_fields(props(item)[kind], cls, kind, extra)
    redis, http = props(props(item)["redis"]), props(props(item)["http"])
    assert_same_fields(redis["passwordSecretRef"], S.KeyRef, "redis.passwordSecretRef")
    assert_same_fields(http["caConfigMap"], S.KeyRef, "http.caConfigMap")
    assert_same_fields(http["headers"]["items"], S.HTTPHeader, "http.headers")


def test_enums_and_patterns_agree(schema: dict[str, Any]) -> None:
    item = schema["properties"]["spec"]["properties"]["preconditions"]["items"]["properties"]
    assert props(item["workload"])["kind"]["enum"] == list(S.WORKLOAD_KINDS)
    assert props(item["resource"])["status"]["enum"] == list(S.CONDITION_STATUSES)
    expr = schema["properties"]["spec"]["properties"]["selector"]["properties"]["matchExpressions"]["items"]
    assert props(expr)["operator"]["enum"] == list(S.SELECTOR_OPERATORS)
    cel = " ".join(r["rule"] for _, node in walk(schema) for r in node.get("x-kubernetes-validations", []))
    for pattern in (
        S.URL_RE,
        S.URL_LONG_LABEL_RE,
        S.SHA256_RE,
        S.DOTDOT_RE,
        S.DNS_LABEL_RE,
        S.HOST_RE,
        S.DNS_NAME_RE,
        S.HEADER_VALUE_RE,
        S.CONTROL_RE,
    ):
        assert f"r'{pattern.pattern}'" in cel, pattern.pattern
    patterns = {node["pattern"] for _, node in walk(schema) if "pattern" in node}
    for pattern in (
        S.DNS_SUBDOMAIN_RE,
        S.CONFIG_KEY_RE,
        S.IMAGE_RE,
        S.QUANTITY_RE,
        S.API_VERSION_RE,
        S.KIND_RE,
        S.HEADER_NAME_RE,
        S.LABEL_KEY_RE,
        S.LABEL_VALUE_RE,
    ):
        assert pattern.pattern in patterns, pattern.pattern
    ranges = {
        "tcp.port": (1, 65535),
        "redis.port": (1, 65535),
        "timeoutSeconds": (0, S.MAX_TIMEOUT_SECONDS),
        "periodSeconds": (1, S.MAX_PERIOD_SECONDS),
        "download.maxBytes": (1, S.MAX_MAX_BYTES),
    }
    for dotted, (lo, hi) in ranges.items():
        node: dict[str, Any] = {"properties": item}
        for part in dotted.split("."):
            node = props(node)[part]
        assert (node["minimum"], node["maximum"]) == (lo, hi), dotted
    status = props(item["http"])["expectStatus"]["items"]
    assert (status["minimum"], status["maximum"]) == (100, 599)


# --- a small offline validator: policies we ship must pass the schema --------------------------------


def validate(node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Types, required, unknown fields, enum, bounds, patterns (RE2-compatible ones). Not CEL."""
    errors: list[str] = []
    if node.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or not re.fullmatch(node["pattern"], str(value)):
            errors.append(f"{path}: not a quantity")
        return errors
    kind = node.get("type")
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
    if not isinstance(value, types[kind]) or (kind == "integer" and isinstance(value, bool)):
        return [f"{path}: want {kind}"]
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: not in {node['enum']}")
    if kind == "string":
        if len(value) > node.get("maxLength", 1 << 30) or len(value) < node.get("minLength", 0):
            errors.append(f"{path}: length")
        if "pattern" in node and not re.search(node["pattern"], value):
            errors.append(f"{path}: pattern")
    if kind == "integer" and not node.get("minimum", -(1 << 63)) <= value <= node.get("maximum", 1 << 63):
        errors.append(f"{path}: range")
    if kind == "array":
        if not node.get("minItems", 0) <= len(value) <= node.get("maxItems", 1 << 30):
            errors.append(f"{path}: items")
        for i, item in enumerate(value):
            errors += validate(node["items"], item, f"{path}[{i}]")
    if kind == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        if path == ".metadata":
            return errors
        for req in node.get("required", []):
            if req not in value:
                errors.append(f"{path}.{req}: required")
        for key, item in value.items():
            if key in props(node):
                errors += validate(props(node)[key], item, f"{path}.{key}")
            elif isinstance(node.get("additionalProperties"), dict):
                errors += validate(node["additionalProperties"], item, f"{path}.{key}")
            else:
                errors.append(f"{path}.{key}: unknown field")
    return errors


def shipped_policies() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted([*ROOT.glob("tests/golden/*/policy.yaml"), *ROOT.glob("examples/**/*.yaml")]):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == "DependencyPolicy":
                out.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return out


SHIPPED = shipped_policies()


def test_there_are_shipped_policies() -> None:
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("doc", [d for _, d in SHIPPED], ids=[n for n, _ in SHIPPED])
def test_shipped_policies_pass_the_schema_and_spec(schema: dict[str, Any], doc: dict[str, Any]) -> None:
    assert validate(schema, doc) == []
    S.parse_policy(doc)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"name": "a", "tcp": {"host": "x", "port": 0}}, "port: range"),
        ({"name": "A", "tcp": {"host": "x", "port": 1}}, None),  # the name pattern is a CEL rule, unseen here
        ({"name": "a" * 53, "dns": {"name": "x"}}, "name: length"),
        ({"name": "a", "redis": {"host": "x", "tls": "yes"}}, "tls: want boolean"),
        (
            {"name": "a", "workload": {"kind": "Job", "name": "x"}},
            "kind: not in ['Deployment', 'StatefulSet', 'DaemonSet']",
        ),
        ({"name": "a", "download": {"url": "http://x", "sha256": "a" * 64}}, "path: required"),
        ({"name": "a", "tcp": {"host": "x", "port": 1, "extra": 1}}, "extra: unknown field"),
    ],
)
def test_the_offline_validator_sees_schema_errors(schema: dict[str, Any], body: dict[str, Any], error: str) -> None:
    doc = {
        "apiVersion": "depgate.io/v1alpha1",
        "kind": "DependencyPolicy",
        "metadata": {"name": "p"},
        "spec": {"workloadRef": {"name": "a"}, "preconditions": [body]},
    }
    errors = validate(schema, doc)
    if error is None:
        assert errors == []
    else:
        assert any(e.endswith(error) for e in errors), errors


# --- the Kubernetes-typed fields: the real structure, bounded -----------------------------------------


def node_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.strip(".").replace("[]", ".[]").split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def depth(node: dict[str, Any]) -> int:
    children = [*props(node).values(), *([node["items"]] if "items" in node else [])]
    if isinstance(node.get("additionalProperties"), dict):
        children.append(node["additionalProperties"])
    return 1 + max((depth(c) for c in children), default=-1)


def test_kubernetes_typed_fields_have_their_structure_and_spec_py_knows_it(schema: dict[str, Any]) -> None:
    """spec.py holds policies that bypassed the schema to the same fields and the same depth."""
    types = {
        ".spec.template.spec": ("DeploymentSpec", S.DEPLOYMENT_SPEC_FIELDS),
        ".spec.defaults.resources": ("ResourceRequirements", S.RESOURCES_FIELDS),
        ".spec.defaults.securityContext": ("SecurityContext", S.SECURITY_CONTEXT_FIELDS),
        ".spec.preconditions[].command.resources": ("ResourceRequirements", S.RESOURCES_FIELDS),
        ".spec.preconditions[].command.securityContext": ("SecurityContext", S.SECURITY_CONTEXT_FIELDS),
        ".spec.preconditions[].command.env[].valueFrom": ("EnvVarSource", S.ENV_VAR_SOURCE_FIELDS),
    }
    assert set(types) == GENERATED
    for path, (type_name, fields) in types.items():
        node = node_at(schema, path)
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert sorted(props(node)) == sorted(fields), path
        assert depth(node) == S.TYPE_DEPTHS[type_name], path
    limits = node_at(schema, ".spec.defaults.resources.limits")["additionalProperties"]
    assert limits["x-kubernetes-int-or-string"] and limits["pattern"] == S.QUANTITY_RE.pattern
    assert limits["maxLength"] == S.QUANTITY_MAX_LENGTH
    pod = node_at(schema, ".spec.template.spec.template.spec")
    assert {"containers", "initContainers", "volumes", "securityContext"} <= set(props(pod))
    assert props(node_at(schema, ".spec.template.spec.template.metadata")) .keys() == {"labels", "annotations"}


@pytest.mark.skipif(not KUBE_OPENAPI.exists(), reason=f"{KUBE_OPENAPI} is not in the Go module cache")
def test_generated_fields_are_what_crdgen_makes_of_the_kubernetes_openapi() -> None:
    """`python -m depgate.dev.crdgen` reproduces the committed CRD byte for byte."""
    import json

    crd = yaml.safe_load(CRD_PATH.read_text())
    regenerated = crdgen.place(crd, crdgen.generated_types(json.loads(KUBE_OPENAPI.read_text())))
    assert crdgen.dump(regenerated) == CRD_PATH.read_text()


# --- the worst case: the largest spec the API server would accept ---------------------------------------

MAX_ANNOTATIONS = 256 * 1024  # metadata.annotations, all together (Kopf copies the spec into one)


def char_bytes(node: dict[str, Any]) -> int:
    """Bytes a character costs in Kopf's encoding (json.dumps, ensure_ascii): printable ASCII (our
    patterns and CEL rules) at most 2 ('"' and '\\\\' are escaped), anything else up to 12 (an astral
    character, as a surrogate pair \\\\uXXXX\\\\uXXXX; maxLength counts characters, not bytes)."""
    return 2 if "pattern" in node or node.get("x-kubernetes-validations") else 12


def worst(node: dict[str, Any], path: str = "") -> int:
    """The longest compact JSON of any value the node accepts. Exactly-one-of rules (targets, types)
    count the largest alternative only; probes and lifecycle (refused whenever present) count 0."""
    if node.get("x-kubernetes-int-or-string"):
        return 2 + node["maxLength"] * char_bytes(node)
    if "enum" in node:
        return max(len(json_dumps(v)) for v in node["enum"])
    kind = node.get("type")
    if kind == "string":
        return 2 + node["maxLength"] * char_bytes(node)
    if kind == "integer":
        return 20
    if kind == "boolean":
        return 5
    if kind == "array":
        n = node["maxItems"]
        return 2 + n * (worst(node["items"], path + "[]") + 1)
    assert kind == "object", path
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return 0
    if "additionalProperties" in node:
        n = node["maxProperties"]
        return 2 + n * (2 + S.MAX_KEY_LENGTH * 12 + 2 + worst(node["additionalProperties"], path + "{}"))
    sizes = {k: len(k) + 4 + worst(v, f"{path}.{k}") for k, v in props(node).items()}
    for group in EXACTLY_ONE.get(path, ()):
        present = [k for k in group if k in sizes]
        largest = max(sizes[k] for k in present)
        for k in present:
            sizes[k] = 0
        sizes[present[0]] = largest
    return 2 + sum(sizes.values())


EXACTLY_ONE = {
    ".spec": [("workloadRef", "selector", "template")],
    ".spec.preconditions[]": [S.TYPES],
}


def json_dumps(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def test_worst_case_sizes(schema: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Every accepted spec is finite; the figures (printed) say how large it can get."""
    spec = schema["properties"]["spec"]
    whole = worst(spec, ".spec")
    untemplated = dict(spec, properties={k: v for k, v in props(spec).items() if k != "template"})
    without_template = worst(untemplated, ".spec")
    per_type = {t: worst(props(spec)["preconditions"]["items"]["properties"][t]) for t in S.TYPES}
    with capsys.disabled():
        print(f"\nworst-case spec: {whole:,} bytes; without spec.template: {without_template:,} bytes; "
              f"per precondition type: {per_type}")
    assert 0 < without_template < whole < 10**12
