"""Generate the Kubernetes-typed parts of the DependencyPolicy CRD from the API server's own OpenAPI.

`spec.template.spec` is a DeploymentSpec; `defaults.resources`, `defaults.securityContext` and a
command's `resources`, `securityContext` and `env[].valueFrom` are core/v1 types. Instead of
`x-kubernetes-preserve-unknown-fields` (which let a policy carry JSON nested 2,000 levels deep),
each gets the structural schema of the real type, as controller-gen and Argo Rollouts embed a
PodTemplateSpec, converted from `/openapi/v3/apis/apps/v1` of the plane's kube-apiserver:

- `$ref`s are resolved (the types are not recursive), descriptions and defaults dropped (the CRD
  stays small; `kubectl explain` on a Deployment has them), patch-strategy extensions dropped;
- `Quantity` becomes int-or-string with the quantity pattern (an invalid one is refused naming the
  field, instead of a server-side apply failing later with HTTP 500), `IntOrString` int-or-string;
- embedded `ObjectMeta` (a pod template's, a volume claim template's) keeps `labels` and
  `annotations` only; no field named `namespace` is kept (a policy names nothing outside its own
  namespace);
- every string, array and map gets a bound (`maxLength`, `maxItems`, `maxProperties`, see BOUNDS),
  so the API server can estimate CEL costs and no accepted policy is arbitrarily large.

    python -m depgate.dev.crdgen [--openapi FILE] [--check]

reads the OpenAPI from FILE, else from the running dev plane (`kubectl get --raw`), rewrites
crds/dependencypolicies.depgate.io.yaml (or, with --check, exits 1 when it would change it).
tests/integration/test_hostile_schema.py checks the committed CRD against the plane's API server.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "crds" / "dependencypolicies.depgate.io.yaml"
OPENAPI_PATH = "/openapi/v3/apis/apps/v1"

QUANTITY_PATTERN = (
    r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY_MAX_LENGTH = 64
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"

# Bounds, by the JSON path inside the generated type ('[]' an array item, '{}' a map value); the
# longest matching suffix wins. Kubernetes' own limits where it has them (names: 253, labels: 63).
DEFAULT_MAX_LENGTH = 1024
DEFAULT_MAX_ITEMS = 32
DEFAULT_MAX_PROPERTIES = 64
BOUNDS: dict[str, dict[str, int]] = {
    ".name": {"maxLength": 253},
    ".image": {"maxLength": 1024},
    ".containers": {"maxItems": 16},
    ".initContainers": {"maxItems": 16},
    ".ephemeralContainers": {"maxItems": 0},  # not allowed in a pod template (the API server says so)
    ".volumes": {"maxItems": 64},
    ".tolerations": {"maxItems": 64},
    ".ports": {"maxItems": 64},
    ".volumeMounts": {"maxItems": 64},
    ".env": {"maxItems": 128},
    ".env[].value": {"maxLength": 32768},
    ".envFrom": {"maxItems": 16},
    ".command": {"maxItems": 64},
    ".args": {"maxItems": 256},
    ".command[]": {"maxLength": 8192},
    ".args[]": {"maxLength": 8192},
    ".labels": {"maxProperties": 64},
    ".labels{}": {"maxLength": 63},
    ".annotations": {"maxProperties": 64},
    ".annotations{}": {"maxLength": 8192},
    ".nodeSelector": {"maxProperties": 64},
    ".nodeSelector{}": {"maxLength": 63},
    ".matchLabels{}": {"maxLength": 63},
    ".volumeAttributes{}": {"maxLength": 4096},
    ".options{}": {"maxLength": 4096},
}

DROP_PROPERTIES = frozenset({"namespace"})


class GenError(RuntimeError):
    pass


def _bound(path: str, key: str, default: int) -> int:
    best = ""
    for suffix, bounds in BOUNDS.items():
        if key in bounds and path.endswith(suffix) and len(suffix) > len(best):
            best = suffix
    return BOUNDS[best][key] if best else default


MAX_KEY_LENGTH = 317  # a qualified name: a DNS subdomain prefix, '/', a 63-character name


def _key_rule(path: str) -> dict[str, str]:
    """Map keys are not bounded by maxLength; CEL bounds them (the schema stays finite)."""
    leaf = path.rsplit(".", 1)[-1]
    return {
        "rule": f"self.all(k, size(k) <= {MAX_KEY_LENGTH})",
        "message": f"{leaf} keys must be at most {MAX_KEY_LENGTH} characters",
    }


def _share(node: Any, seen: dict[str, Any]) -> Any:
    """Equal subtrees become one object, so the YAML dump names them once (an anchor) and refers to it."""
    if isinstance(node, list):
        return [_share(v, seen) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _share(v, seen) for k, v in node.items()}
    if "properties" in out:
        key = json.dumps(out, sort_keys=True)
        if len(key) > 400:
            return seen.setdefault(key, out)
    return out


class _Converter:
    def __init__(self, openapi: Mapping[str, Any]) -> None:
        self.schemas: Mapping[str, Any] = openapi["components"]["schemas"]
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}

    def _resolve(self, node: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
        if "$ref" in node:
            name = str(node["$ref"]).rsplit("/", 1)[-1]
            return self.schemas[name], name
        all_of = node.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            return self._resolve(all_of[0])
        return node, None

    def convert(self, node: Mapping[str, Any], path: str, stack: tuple[str, ...] = ()) -> dict[str, Any]:
        node, name = self._resolve(node)
        if name is not None and name in stack:
            raise GenError(f"{path}: recursive type {name}")
        if name is not None:
            stack = (*stack, name)
        if name == "io.k8s.apimachinery.pkg.api.resource.Quantity":
            return {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "maxLength": QUANTITY_MAX_LENGTH,
                "pattern": QUANTITY_PATTERN,
                "x-kubernetes-int-or-string": True,
            }
        if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
            return {
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "maxLength": 253,
                "x-kubernetes-int-or-string": True,
            }
        if name == "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta":
            return {
                "type": "object",
                "properties": {
                    "labels": self._string_map(path + ".labels", pattern=LABEL_VALUE_PATTERN),
                    "annotations": self._string_map(path + ".annotations"),
                },
            }
        kind = node.get("type")
        out: dict[str, Any] = {}
        if kind == "object" or "properties" in node or "additionalProperties" in node:
            out["type"] = "object"
            if "properties" in node:
                props: dict[str, Any] = {}
                for key in sorted(node["properties"]):
                    if key in DROP_PROPERTIES:
                        continue
                    props[key] = self.convert(node["properties"][key], f"{path}.{key}", stack)
                out["properties"] = props
                required = [r for r in node.get("required", []) if r in props]
                if required:
                    out["required"] = sorted(required)
            elif "additionalProperties" in node:
                out["maxProperties"] = _bound(path, "maxProperties", DEFAULT_MAX_PROPERTIES)
                out["additionalProperties"] = self.convert(node["additionalProperties"], path + "{}", stack)
                out["x-kubernetes-validations"] = [_key_rule(path)]
            else:
                raise GenError(f"{path}: an object without properties (would be pruned empty)")
            if "x-kubernetes-map-type" in node:
                out["x-kubernetes-map-type"] = node["x-kubernetes-map-type"]
            return out
        if kind == "array":
            out["type"] = "array"
            out["maxItems"] = _bound(path, "maxItems", DEFAULT_MAX_ITEMS)
            item = self.convert(node["items"], path + "[]", stack)
            out["items"] = item
            list_type = node.get("x-kubernetes-list-type")
            if list_type:
                out["x-kubernetes-list-type"] = list_type
            if list_type == "map":
                keys = list(node["x-kubernetes-list-map-keys"])
                out["x-kubernetes-list-map-keys"] = keys
                item_node, _ = self._resolve(node["items"])
                for key in keys:  # a list-map key must be required or defaulted in a CRD
                    if key not in item.get("required", []):
                        default = item_node["properties"][key].get("default")
                        if default is None:
                            raise GenError(f"{path}: list-map key {key} is neither required nor defaulted")
                        item["properties"][key]["default"] = default
            return out
        if kind == "string":
            out["type"] = "string"
            out["maxLength"] = _bound(path, "maxLength", DEFAULT_MAX_LENGTH)
            if node.get("format") == "date-time":
                out["format"] = "date-time"
            return out
        if kind == "integer":
            out["type"] = "integer"
            if node.get("format") in ("int32", "int64"):
                out["format"] = node["format"]
            return out
        if kind == "boolean":
            return {"type": "boolean"}
        raise GenError(f"{path}: cannot convert {dict(node)!r}")

    def _string_map(self, path: str, pattern: str | None = None) -> dict[str, Any]:
        value: dict[str, Any] = {"type": "string", "maxLength": _bound(path + "{}", "maxLength", DEFAULT_MAX_LENGTH)}
        if pattern:
            value["pattern"] = pattern
        return {
            "type": "object",
            "maxProperties": _bound(path, "maxProperties", DEFAULT_MAX_PROPERTIES),
            "additionalProperties": value,
            "x-kubernetes-validations": [_key_rule(path)],
        }

    def type_schema(self, name: str) -> dict[str, Any]:
        return self.convert({"$ref": f"#/components/schemas/{name}"}, "")


TYPES = {
    "DeploymentSpec": "io.k8s.api.apps.v1.DeploymentSpec",
    "ResourceRequirements": "io.k8s.api.core.v1.ResourceRequirements",
    "SecurityContext": "io.k8s.api.core.v1.SecurityContext",
    "EnvVarSource": "io.k8s.api.core.v1.EnvVarSource",
}


def generated_types(openapi: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Structural, bounded schemas of the types the CRD embeds, keyed by short name."""
    conv = _Converter(openapi)
    return {short: conv.type_schema(full) for short, full in TYPES.items()}


# Where each type goes in the CRD (path of property names from openAPIV3Schema), with the description
# the generated root keeps (the only one in each generated subtree).
PLACES: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("spec", "template", "spec"),
        "DeploymentSpec",
        "The DeploymentSpec (apps/v1) of the Deployment depgate creates; the structure of the real type "
        "(see `kubectl explain deployment.spec`), bounded. The API server validates the rest when depgate "
        "creates the Deployment.",
    ),
    (
        ("spec", "defaults", "resources"),
        "ResourceRequirements",
        "Compute resources of depgate's init containers (a core/v1 ResourceRequirements). Default: "
        "requests cpu 10m, memory 32Mi; limits memory 64Mi.",
    ),
    (
        ("spec", "defaults", "securityContext"),
        "SecurityContext",
        "Security context of depgate's init containers (a core/v1 SecurityContext). Default: the "
        "restricted profile: runAsNonRoot, allowPrivilegeEscalation false, readOnlyRootFilesystem, drop "
        "ALL capabilities, seccompProfile RuntimeDefault.",
    ),
    (
        ("spec", "preconditions", "[]", "command", "resources"),
        "ResourceRequirements",
        "Compute resources (a core/v1 ResourceRequirements). Default: fromContainer's, else "
        "spec.defaults.resources.",
    ),
    (
        ("spec", "preconditions", "[]", "command", "securityContext"),
        "SecurityContext",
        "Security context (a core/v1 SecurityContext). Default: fromContainer's, else "
        "spec.defaults.securityContext.",
    ),
    (
        ("spec", "preconditions", "[]", "command", "env", "[]", "valueFrom"),
        "EnvVarSource",
        "Source of the value (a core/v1 EnvVarSource).",
    ),
]


def _node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = schema
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def place(crd: dict[str, Any], types: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of the CRD with every generated type in its place."""
    out = copy.deepcopy(crd)
    schema = out["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    seen: dict[str, Any] = {}
    for path, short, description in PLACES:
        parent = _node(schema, path[:-1])
        parent["properties"][path[-1]] = {"description": description, **_share(types[short], seen)}
    return out


def embedded(crd: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The generated subtrees of a CRD, without their root description, keyed by CRD path."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    out = {}
    for path, _, _ in PLACES:
        node = dict(_node(schema, path))
        node.pop("description", None)
        out[".".join(path).replace(".[]", "[]")] = node
    return out


HEADER = """\
# The DependencyPolicy CRD (depgate.io/v1alpha1). See docs/design.md for the contract and
# operator/depgate/spec.py, which applies the same rules to policies that bypassed this schema.
# The Kubernetes-typed fields (template.spec, resources, securityContext, env[].valueFrom) are
# generated from the API server's OpenAPI by `python -m depgate.dev.crdgen`; edit the rest by hand.
"""


def dump(crd: Mapping[str, Any]) -> str:
    return HEADER + yaml.safe_dump(dict(crd), sort_keys=False, width=100)


def served_openapi(kubeconfig: str | None = None, kubectl: str = "kubectl") -> dict[str, Any]:
    cmd = [kubectl, *([f"--kubeconfig={kubeconfig}"] if kubeconfig else []), "get", "--raw", OPENAPI_PATH]
    return dict(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depgate.dev.crdgen", description=__doc__.split("\n")[0])
    parser.add_argument("--openapi", help="a saved /openapi/v3/apis/apps/v1 document (default: ask the plane)")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--check", action="store_true", help="exit 1 when the CRD is not what would be generated")
    args = parser.parse_args(argv)
    if args.openapi:
        openapi = json.loads(Path(args.openapi).read_text())
    else:
        openapi = served_openapi(args.kubeconfig, args.kubectl)
    crd = yaml.safe_load(CRD_PATH.read_text())
    text = dump(place(crd, generated_types(openapi)))
    if args.check:
        if CRD_PATH.read_text() != text:
            print(f"{CRD_PATH} is not what crdgen generates", file=sys.stderr)
            return 1
        return 0
    CRD_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
