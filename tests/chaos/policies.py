"""Hypothesis strategies for DependencyPolicies: schema-valid ones of every shape, and the same
broken on purpose (one mutation: a bad value, a wrong type, a missing or unknown field).

Targets are confined to the namespace's target Deployments (t-<i>, labelled gated=yes) and to
Deployments the policies create (template mode): every selector carries matchLabels gated=yes and
every mutation of a selector makes it invalid, so no policy may ever gate the canary Deployment.
Workload preconditions may *read* the canary (kind Deployment, name canary): reading is allowed.

Some mutations give a policy the CRD accepts but the operator must refuse (a template the API server
or render refuses): those must be explained in status (InvalidTemplate, Stalled InvalidSpec).
"""

from __future__ import annotations

import copy
import json
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

CANARY = "canary"


def targets(count: int) -> list[str]:
    """The target Deployments' names: t-<i>, labelled gated=yes, tier=a|b|c, slot=s-<i>; the even ones
    mount a volume of their own at /cache."""
    return [f"t-{i}" for i in range(count)]

label = st.from_regex(r"[a-z]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
host = st.one_of(label, st.builds(lambda a, b: f"{a}.{b}", label, label))
port = st.integers(1, 65535)
config_key = st.from_regex(r"[-._a-zA-Z0-9]{1,12}", fullmatch=True)
keys = st.lists(config_key, max_size=3, unique=True)
sha = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
url = st.builds(lambda scheme, h, p, path: f"{scheme}://{h}:{p}/{path}", st.sampled_from(["http", "https"]),
                host, port, st.from_regex(r"[a-z0-9/]{0,12}", fullmatch=True))
rel_path = st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", fullmatch=True)
dns_subdomain = st.one_of(label, st.builds(lambda a, b: f"{a}.{b}", label, label))
argv = st.lists(st.text(alphabet=string.ascii_letters + string.digits + " -_=./", min_size=1, max_size=12),
                min_size=1, max_size=3)


resources = st.fixed_dictionaries({}, optional={
    "requests": st.fixed_dictionaries({"cpu": st.sampled_from(["10m", "100m", 1])}),
    "limits": st.fixed_dictionaries({"memory": st.sampled_from(["64Mi", "128Mi", "1Gi"])})})
security_context = st.fixed_dictionaries({}, optional={
    "runAsNonRoot": st.just(True), "allowPrivilegeEscalation": st.just(False),
    "readOnlyRootFilesystem": st.booleans(), "runAsUser": st.integers(1000, 65534),
    "capabilities": st.just({"drop": ["ALL"]}), "seccompProfile": st.just({"type": "RuntimeDefault"})})


def pick(items: list[Any]) -> st.SearchStrategy[Any]:
    """One of `items`, evenly (sampled_from favours the first ones)."""
    return st.integers(0, 2**30).map(lambda k: items[k % len(items)])


def spread(names: list[str]) -> st.SearchStrategy[str]:
    """One of `names`, spread evenly (sampled_from favours the first ones, which would make every
    policy fight over t-0)."""
    return st.integers(0, 2**30).map(lambda k: names[k % len(names)])


@st.composite
def body(draw: st.DrawFn, kind: str, targets: list[str]) -> dict[str, Any]:
    """The body of one precondition type, schema-valid."""
    if kind == "tcp":
        return {"host": draw(host), "port": draw(port)}
    if kind == "redis":
        out: dict[str, Any] = {"host": draw(host)}
        if draw(st.booleans()):
            out["port"] = draw(port)
        if draw(st.booleans()):
            out["passwordSecretRef"] = {"name": draw(label), "key": draw(config_key)}
        if draw(st.booleans()):
            out["tls"] = draw(st.booleans())
        return out
    if kind == "http":
        out = {"url": draw(url)}
        if draw(st.booleans()):
            out["expectStatus"] = draw(st.lists(st.integers(100, 599), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            out["headers"] = [{"name": draw(st.from_regex(r"[A-Za-z][-A-Za-z0-9]{0,10}", fullmatch=True)),
                               "value": draw(st.text(alphabet=string.ascii_letters + " ", max_size=10))}]
        if draw(st.booleans()):
            out["caConfigMap"] = {"name": draw(label), "key": draw(config_key)}
        if draw(st.booleans()):
            out["insecureSkipVerify"] = draw(st.booleans())
        return out
    if kind == "dns":
        return {"name": draw(host)}
    if kind == "service":
        out = {"name": draw(label)}
        if draw(st.booleans()):
            out["minReadyEndpoints"] = draw(st.integers(0, 3))
        return out
    if kind == "job":
        return {"name": draw(label)}
    if kind in ("secret", "configMap"):
        out = {"name": draw(label)}
        if draw(st.booleans()):
            out["keys"] = draw(keys)
        return out
    if kind == "workload":
        out = {"kind": draw(st.sampled_from(["Deployment", "StatefulSet", "DaemonSet"])),
               "name": draw(st.one_of(label, st.just(CANARY), spread(targets)))}
        if draw(st.booleans()):
            out["minAvailable"] = draw(st.integers(0, 3))
        return out
    if kind == "resource":
        out = {"apiVersion": draw(st.sampled_from(["v1", "apps/v1", "example.com/v1"])),
               "kind": draw(st.sampled_from(["ConfigMap", "Deployment", "Widget"])), "name": draw(label)}
        if draw(st.booleans()):
            out["condition"] = draw(st.sampled_from(["Ready", "Available", "Synced"]))
            out["status"] = draw(st.sampled_from(["True", "False", "Unknown"]))
        return out
    if kind == "download":
        return {"url": draw(url), "sha256": draw(sha), "path": draw(rel_path)}
    assert kind == "command"
    out = {}
    if draw(st.booleans()):
        out["image"] = draw(st.sampled_from(["busybox:1.36", "node:20", "registry.example/tool@sha256:" + "a" * 64]))
    else:
        out["fromContainer"] = draw(st.sampled_from(["server", "server", "missing"]))  # missing: ContainerNotFound
    which = draw(st.sampled_from(["command", "args", "both"]))
    if which in ("command", "both"):
        out["command"] = draw(argv)
    if which in ("args", "both"):
        out["args"] = draw(argv)
    if draw(st.booleans()):
        out["env"] = [{"name": draw(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True)), "value": draw(label)}]
        if draw(st.booleans()):
            out["env"].append({"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    if draw(st.integers(0, 2)) == 0:
        out["resources"] = draw(resources)
    if draw(st.integers(0, 2)) == 0:
        out["securityContext"] = draw(security_context)
    if draw(st.integers(0, 3)) == 0:
        out["workingDir"] = draw(st.sampled_from(["/", "/work", "/tmp"]))
    return out


TYPES = ["tcp", "redis", "http", "dns", "service", "job", "secret", "configMap", "workload", "resource", "download",
         "command"]


@st.composite
def precondition(draw: st.DrawFn, name: str, targets: list[str]) -> dict[str, Any]:
    kind = draw(st.sampled_from(TYPES))
    out: dict[str, Any] = {"name": name, kind: draw(body(kind, targets))}
    if kind != "command":
        if draw(st.integers(0, 4)) == 0:
            out["timeoutSeconds"] = draw(st.integers(0, 3600))
        if draw(st.integers(0, 4)) == 0:
            out["periodSeconds"] = draw(st.integers(1, 300))
    return out


@st.composite
def target(draw: st.DrawFn, targets: list[str]) -> dict[str, Any]:
    which = draw(st.sampled_from(["workloadRef", "workloadRef", "selector", "template"]))
    if which == "workloadRef":
        ref = {"name": "not-there" if draw(st.integers(0, 9)) == 9 else draw(spread(targets))}
        if draw(st.booleans()):
            ref["kind"] = "Deployment"
        return {"workloadRef": ref}
    if which == "selector":
        sel: dict[str, Any] = {"matchLabels": {"gated": "yes"}}
        wide = draw(st.integers(0, 9))  # mostly one target (its slot); seldom a third of them, or all
        if wide < 8:  # (Hypothesis draws small integers more often than large ones)
            sel["matchLabels"]["slot"] = "s-" + draw(spread(targets))[2:]
        elif wide == 8:
            sel["matchLabels"]["tier"] = draw(st.sampled_from(["a", "b", "c"]))
        if draw(st.booleans()):
            op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            req: dict[str, Any] = {"key": draw(st.sampled_from(["tier", "zone", "example.com/team"])), "operator": op}
            if op in ("In", "NotIn"):
                req["values"] = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2, unique=True))
            sel["matchExpressions"] = [req]
        return {"selector": sel}
    name = draw(st.one_of(st.none(), st.sampled_from(["tmpl-a", "tmpl-b"])))
    app = draw(label)
    tmpl: dict[str, Any] = {"spec": {
        "replicas": 0, "selector": {"matchLabels": {"app": app}},
        "template": {"metadata": {"labels": {"app": app}},
                     "spec": {"containers": [{"name": "server", "image": "node:20"}]}}}}
    if name:
        tmpl["metadata"] = {"name": name}
    if draw(st.integers(0, 2)) == 0:
        tmpl.setdefault("metadata", {})["labels"] = {"team": draw(label)}
        tmpl["metadata"]["annotations"] = {"example.com/note": draw(label)}
    return {"template": tmpl}


@st.composite
def valid_spec(draw: st.DrawFn, targets: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = draw(target(targets))
    if draw(st.booleans()):
        spec["placement"] = draw(st.sampled_from(["BeforeExisting", "AfterExisting"]))
    if draw(st.integers(0, 3)) == 0:
        spec["defaults"] = {"timeoutSeconds": draw(st.integers(0, 3600)), "periodSeconds": draw(st.integers(1, 300))}
        if draw(st.booleans()):  # the Kubernetes-typed fields, so the hostile mutations reach them too
            spec["defaults"]["resources"] = draw(resources)
        if draw(st.booleans()):
            spec["defaults"]["securityContext"] = draw(security_context)
    if draw(st.integers(0, 3)) == 0:
        spec["sharedVolume"] = {"mountPath": draw(st.sampled_from(["/depgate/shared", "/data", "/cache"]))}
        if draw(st.booleans()):
            spec["sharedVolume"]["sizeLimit"] = draw(st.sampled_from(["64Mi", "1Gi", 1000000]))
    names = draw(st.lists(label, min_size=1, max_size=5, unique=True))
    spec["preconditions"] = [draw(precondition(n, targets)) for n in names]
    return spec


# --- breaking it: each mutation returns a changed copy. The API server must refuse it naming the
# field, or (the template ones: the CRD keeps a template's spec as given) the operator must say why.

Mutation = Callable[[dict[str, Any], Any], dict[str, Any]]


def _pre(spec: dict[str, Any], i: int) -> dict[str, Any]:
    pres: list[dict[str, Any]] = spec["preconditions"]
    return pres[i % len(pres)]


def _kind(p: dict[str, Any]) -> str:
    return next(k for k in p if k not in ("name", "timeoutSeconds", "periodSeconds"))


def _set_body(field: str, value: Any, kinds: tuple[str, ...]) -> Mutation:
    def m(spec: dict[str, Any], i: Any) -> dict[str, Any]:
        p = _pre(spec, i)
        k = _kind(p)
        if k not in kinds:  # make it a precondition of the kind the mutation is about
            p.pop(k)
            k = kinds[0]
            if k == "command":
                p.pop("timeoutSeconds", None)
                p.pop("periodSeconds", None)
            p[k] = {"tcp": {"host": "h", "port": 1}, "http": {"url": "http://h/"}, "redis": {"host": "h"},
                    "download": {"url": "http://h/f", "sha256": "a" * 64, "path": "f"},
                    "command": {"image": "busybox", "command": ["true"]}, "dns": {"name": "h"},
                    "service": {"name": "s"}, "workload": {"kind": "Deployment", "name": "w"}}[k]
        p[k][field] = value
        return spec
    return m


def _set_pre(field: str, value: Any) -> Mutation:
    def m(spec: dict[str, Any], i: Any) -> dict[str, Any]:
        _pre(spec, i)[field] = value
        return spec
    return m


def _set_spec(path: list[str], value: Any) -> Mutation:
    def m(spec: dict[str, Any], i: Any) -> dict[str, Any]:
        cur = spec
        for k in path[:-1]:
            cur = cur.setdefault(k, {})
        cur[path[-1]] = value
        return spec
    return m


def _drop_spec(path: list[str]) -> Mutation:
    def m(spec: dict[str, Any], i: Any) -> dict[str, Any]:
        cur = spec
        for k in path[:-1]:
            cur = cur.setdefault(k, {})
        cur.pop(path[-1], None)
        return spec
    return m


def _drop_body_key(key: str, kinds: tuple[str, ...]) -> Mutation:
    def m(spec: dict[str, Any], i: Any) -> dict[str, Any]:
        spec = _set_body("__drop__", None, kinds)(spec, i)
        p = _pre(spec, i)
        b = p[_kind(p)]
        b.pop("__drop__", None)
        b.pop(key, None)
        return spec
    return m


def _duplicate_name(spec: dict[str, Any], i: Any) -> dict[str, Any]:
    spec["preconditions"].append(copy.deepcopy(spec["preconditions"][0]))
    return spec


def _second_type(spec: dict[str, Any], i: Any) -> dict[str, Any]:
    p = _pre(spec, i)
    p["dns" if _kind(p) != "dns" else "tcp"] = {"name": "x"} if _kind(p) != "dns" else {"host": "x", "port": 1}
    return spec


def _no_type(spec: dict[str, Any], i: Any) -> dict[str, Any]:
    p = _pre(spec, i)
    p.pop(_kind(p))
    return spec


def _two_targets(spec: dict[str, Any], i: Any) -> dict[str, Any]:
    spec["workloadRef" if "workloadRef" not in spec else "selector"] = (
        {"name": "t-0"} if "workloadRef" not in spec else {"matchLabels": {"gated": "yes"}})
    return spec


def _no_target(spec: dict[str, Any], i: Any) -> dict[str, Any]:
    for k in ("workloadRef", "selector", "template"):
        spec.pop(k, None)
    return spec


def _bad_selector(how: str) -> Mutation:
    def m(spec: dict[str, Any], i: Any) -> dict[str, Any]:
        for k in ("workloadRef", "template"):
            spec.pop(k, None)
        sel = spec.setdefault("selector", {"matchLabels": {"gated": "yes"}})
        if how == "empty":
            spec["selector"] = {}
        elif how == "in-without-values":
            sel["matchExpressions"] = [{"key": "tier", "operator": "In"}]
        elif how == "exists-with-values":
            sel["matchExpressions"] = [{"key": "tier", "operator": "Exists", "values": ["a"]}]
        elif how == "operator":
            sel["matchExpressions"] = [{"key": "tier", "operator": "Near", "values": ["a"]}]
        elif how == "value":
            sel["matchLabels"]["tier"] = "not a label value!"
        return spec
    return m


MUTATIONS: dict[str, Mutation] = {
    "port 0": _set_body("port", 0, ("tcp", "redis")),
    "port 65536": _set_body("port", 65536, ("tcp", "redis")),
    "port as a string": _set_body("port", "80", ("tcp",)),
    "host with a space": _set_body("host", "a b", ("tcp", "redis")),
    "url not http": _set_body("url", "ftp://x/y", ("http", "download")),
    "url as a number": _set_body("url", 42, ("http",)),
    "expectStatus 99": _set_body("expectStatus", [99], ("http",)),
    "expectStatus empty": _set_body("expectStatus", [], ("http",)),
    "sha256 short": _set_body("sha256", "abc", ("download",)),
    "download path absolute": _set_body("path", "/etc/passwd", ("download",)),
    "download path escapes": _set_body("path", "a/../../b", ("download",)),
    "command: image and fromContainer": _set_body("fromContainer", "server", ("command",)),
    "command: readinessProbe": _set_body("readinessProbe", {"exec": {"command": ["true"]}}, ("command",)),
    "command: no command or args": _drop_body_key("command", ("command",)),
    "minReadyEndpoints -1": _set_body("minReadyEndpoints", -1, ("service",)),
    "workload kind Pod": _set_body("kind", "Pod", ("workload",)),
    "unknown field in a type": _set_body("color", "blue", ("tcp", "dns", "service")),
    "tcp without host": _drop_body_key("host", ("tcp",)),
    "name not a DNS label": _set_pre("name", "Bad_Name"),
    "name too long": _set_pre("name", "a" * 53),
    "timeoutSeconds -1": _set_pre("timeoutSeconds", -1),
    "periodSeconds 0": _set_pre("periodSeconds", 0),
    "unknown field in a precondition": _set_pre("retries", 3),
    "duplicate names": _duplicate_name,
    "two types": _second_type,
    "no type": _no_type,
    "no preconditions": _set_spec(["preconditions"], []),
    "33 preconditions": _set_spec(["preconditions"], [{"name": f"p{i}", "dns": {"name": "x"}} for i in range(33)]),
    "preconditions an object": _set_spec(["preconditions"], {"name": "p"}),
    "two targets": _two_targets,
    "no target": _no_target,
    "placement Middle": _set_spec(["placement"], "Middle"),
    "defaults.periodSeconds 301": _set_spec(["defaults", "periodSeconds"], 301),
    "defaults a string": _set_spec(["defaults"], "fast"),
    "sharedVolume relative": _set_spec(["sharedVolume", "mountPath"], "shared"),
    "sharedVolume with ..": _set_spec(["sharedVolume", "mountPath"], "/a/../b"),
    "workloadRef kind StatefulSet": _set_spec(["workloadRef", "kind"], "StatefulSet"),
    "workloadRef name invalid": _set_spec(["workloadRef", "name"], "Not_A_Name"),
    "template name invalid": _set_spec(["template", "metadata", "name"], "Not_A_Name"),
    "template label key invalid": _set_spec(["template", "metadata", "labels"], {"bad key!": "x"}),
    "template without selector": _drop_spec(["template", "spec", "selector"]),
    "template without containers": _set_spec(["template", "spec", "template", "spec", "containers"], []),
    "unknown field in spec": _set_spec(["namespace"], "other"),
    "selector empty": _bad_selector("empty"),
    "selector In without values": _bad_selector("in-without-values"),
    "selector Exists with values": _bad_selector("exists-with-values"),
    "selector operator Near": _bad_selector("operator"),
    "selector label value": _bad_selector("value"),
}


@st.composite
def policy_spec(draw: st.DrawFn, targets: list[str]) -> tuple[dict[str, Any], str | None]:
    """(spec, the mutation applied or None): about half valid, the rest broken by one mutation."""
    spec = draw(valid_spec(targets))
    if draw(st.integers(0, 9)) < 2:  # hypothesis favours small integers: about half
        return spec, None
    name = draw(st.sampled_from(sorted(MUTATIONS)))
    if name.startswith("template") and "template" not in spec:
        spec = {k: v for k, v in spec.items() if k not in ("workloadRef", "selector")}
        spec["template"] = draw(target(targets).filter(lambda t: "template" in t))["template"]
    if name.startswith("workloadRef") and "workloadRef" not in spec:
        spec = {k: v for k, v in spec.items() if k not in ("selector", "template")}
        spec["workloadRef"] = {"name": "t-1"}
    return MUTATIONS[name](copy.deepcopy(spec), draw(st.integers(0, 31))), name


# ---------------------------------------------------------------------------------------------------
# hostile input (issue 12): deep nesting, huge strings, control characters, unicode, sizes at and
# over every bound of the CRD's schema. Each mutation is chosen from the drawn policy itself (a field
# it has) and sized from that field's schema node in crds/ (maxLength, maxItems, maxProperties,
# minimum/maximum), so every bound the schema has is hit at the limit and one past it.

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "dependencypolicies.depgate.io.yaml"
SPEC_SCHEMA: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())["spec"]["versions"][0]["schema"][
    "openAPIV3Schema"]["properties"]["spec"]
DECODER_DEPTH = 10_000  # the API server's JSON (and YAML) decoders refuse deeper documents
REQUEST_LIMIT = 3 * 1024 * 1024  # kube-apiserver's request body limit (RequestEntityTooLarge beyond)

CONTROL = ["\x00", "\r\n", "\n", "\r", "\x7f", "\x85", "\x9b", "\x1b[2J", "\t", "\x0b", "\x08"]
UNICODE = ["é", "e\u0301", "\u200f", "\u202e", "\U0001f9e8", "\U0001f469\u200d\U0001f469\u200d\U0001f467",
           "\ud800", "\udfff", "\ufeff", "\uffff", "\U0010ffff", "İ", "\u0663", "\uff41", "\u00a0", "\u2028", "ǅ"]


@dataclass(frozen=True)
class Deep:
    """`depth` nested JSON objects ({"a": {"a": ... {}}}) or arrays, written straight into the
    request text (json.dumps, and the API client's serializer, would recurse that deep)."""

    depth: int
    array: bool = False

    def text(self) -> str:
        if self.array:
            return "[" * self.depth + "]" * self.depth
        return '{"a":' * (self.depth - 1) + "{}" + "}" * (self.depth - 1)


def encode(obj: Any, *, yaml_escapes: bool = False) -> bytes:
    """The request body of `obj` as compact ASCII JSON, Deep values written in place. yaml_escapes:
    for a YAML reader (server-side apply), whose \\u escapes cannot be surrogates: a character
    beyond the BMP is one \\UXXXXXXXX escape instead of a surrogate pair (a lone surrogate stays a
    \\udxxx escape, which no YAML reader takes: see LONE_SURROGATE)."""
    deeps: dict[str, Deep] = {}

    def swap(v: Any) -> Any:
        if isinstance(v, Deep):
            token = f"@@deep{len(deeps)}@@"
            deeps[token] = v
            return token
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(obj), separators=(",", ":"))
    if yaml_escapes:
        text = SURROGATE_PAIR.sub(
            lambda m: f"\\U{0x10000 + ((int(m[1], 16) - 0xD800) << 10) + int(m[2], 16) - 0xDC00:08x}", text)
    for token, deep in deeps.items():
        text = text.replace(json.dumps(token), deep.text(), 1)
    return text.encode()


SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")
LONE_SURROGATE = re.compile(rb"(?<!\\)\\ud[89a-f][0-9a-f]{2}")


def max_depth(obj: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0, {} is 1), Deep values counted, iteratively."""
    best, stack = 0, [(obj, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, Deep):
            best = max(best, d + v.depth)
        elif isinstance(v, dict):
            best = max(best, d + 1)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            best = max(best, d + 1)
            stack.extend((x, d + 1) for x in v)
    return best


def schema_depth(node: Mapping[str, Any] = SPEC_SCHEMA) -> int:
    """How deep an object the schema can hold below `node` (spec: the deepest a stored spec can be)."""
    kids = [*(node.get("properties") or {}).values()]
    if isinstance(node.get("additionalProperties"), Mapping):
        kids.append(node["additionalProperties"])
    if "items" in node:
        kids.append(node["items"])
    own = 1 if node.get("type") in ("object", "array") else 0
    return own + max((schema_depth(k) for k in kids), default=0)


Path_ = tuple[str | int, ...]


def node_at(path: Path_) -> dict[str, Any] | None:
    """The CRD schema node of an instance path below spec (None: not in the schema)."""
    node: Any = SPEC_SCHEMA
    for step in path:
        if isinstance(step, int):
            node = node.get("items")
        elif step in (node.get("properties") or {}):
            node = node["properties"][step]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]
        else:
            return None
        if node is None:
            return None
    return dict(node)


def leaves(value: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Every (path, value) of an instance, containers included (the spec itself is ())."""
    out = [(path, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(leaves(v, (*path, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(leaves(v, (*path, i)))
    return out


def set_at(spec: dict[str, Any], path: Path_, value: Any) -> None:
    cur: Any = spec
    for step in path[:-1]:
        cur = cur[step]
    cur[path[-1]] = value


def _cel(node: Mapping[str, Any]) -> str:
    return " ".join(str(r.get("rule")) for r in node.get("x-kubernetes-validations") or [])


def _labels(n: int, alphabet: str = "a") -> str:
    """A host of exactly n characters whose labels are at most 63 long."""
    out = ""
    while len(out) < n:
        out += alphabet * min(63, n - len(out))
        if len(out) < n - 1:
            out += "."
        elif len(out) == n - 1:
            out += alphabet
    return out[:n]


def fill(node: Mapping[str, Any], n: int, char: str = "a") -> str:
    """A string of exactly n characters that passes the field's pattern and rules where it can
    (so a policy at the limit tests the limit, not the pattern); `char` is the filler."""
    pattern, cel = str(node.get("pattern") or ""), _cel(node)
    if "https?://" in cel:
        return ("http://h/" + char * n)[:n] if n >= 9 else "http://h/"[:n]
    if "[0-9a-f]{64}" in cel:
        return "a" * n
    if "startsWith('/')" in cel and "!self.startsWith" not in cel:
        return "/" + char * (n - 1)
    if "{1,63}" in cel:
        return _labels(n, char)
    if pattern.endswith("v[0-9]+((alpha|beta)[0-9]+)?$"):
        return char * max(0, n - 3) + "/v1" if n > 3 else "v1"[:n]
    if pattern.startswith("^[A-Z]"):
        return "A" * n
    if pattern.startswith("^[+-]?(([0-9]"):
        return "1" * n
    if pattern.startswith("^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.") and "/)?" in pattern:  # label key
        return ("a" * (n - 64) + "/" + "a" * 63) if n > 64 else "a" * n
    return char * n


INT_EDGES = [2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]
BAD_SCALARS: list[Any] = [None, True, "1", 1.5, 1e308, -0.0, [], {}]  # null: SSA drops the field


def _unique(item: Any, i: int, node: Mapping[str, Any]) -> Any:
    """Item i of a long list: distinct (list-maps are keyed, sets must not repeat)."""
    keys = node.get("x-kubernetes-list-map-keys") or (["name"] if isinstance(item, dict) and "name" in item else [])
    if isinstance(item, dict):
        item = copy.deepcopy(item)
        for k in keys:
            if isinstance(item.get(k), str):
                item[k] = f"{item[k][:40]}{i}"
        return item
    if isinstance(item, bool):
        return item
    if isinstance(item, int):
        return 100 + i % 500
    if isinstance(item, str):
        return f"{item[:40]}{i}"
    return item


@st.composite
def hostile_value(draw: st.DrawFn, path: Path_, value: Any, depth_here: int) -> tuple[Any, str]:
    """(a hostile replacement for the value at `path`, its label)."""
    node = node_at(path) or {}
    deep_at_limit = DECODER_DEPTH - depth_here - 1  # what fits under the decoder's limit at this depth
    deep = draw(pick([("deep 100", 100), ("deep 1000", 1000), ("deep 2000", 2000),
                                 ("deep at the decoder limit", deep_at_limit),
                                 ("deep over the decoder limit", deep_at_limit + 2)]))
    choices: list[str] = ["deep in place", "wrong type"]  # (drawn evenly: see pick)
    if isinstance(value, str):
        choices += ["control character", "unicode"] * 3 + ["empty", "huge"]
        if "maxLength" in node:
            choices += ["at maxLength", "over maxLength", "at maxLength, multi-byte"] * 2
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        choices += ["integer edge"]
        if "minimum" in node or "maximum" in node:
            choices += ["at a bound", "past a bound"]
    elif isinstance(value, list):
        choices += ["empty"]
        if "maxItems" in node and value:
            choices += ["at maxItems", "over maxItems"]
    elif isinstance(value, dict):
        choices += ["unknown field, deep", "unknown field, deep", "unknown field, huge key"]
        if "maxProperties" in node:
            choices += ["at maxProperties", "over maxProperties"]
    how = draw(pick(choices))
    if how == "deep in place":
        return Deep(deep[1], array=draw(st.booleans())), f"{deep[0]} in place"
    if how == "wrong type":
        wrong = [v for v in [*BAD_SCALARS, "x", 7] if type(v) is not type(value)]
        return draw(pick(wrong)), how
    if how == "control character":
        c = draw(pick(CONTROL))
        at = draw(st.integers(0, len(value)))
        return value[:at] + c + value[at:], f"control character {c!r}"
    if how == "unicode":
        u = draw(pick(UNICODE))
        at = draw(st.integers(0, len(value)))
        return value[:at] + u + value[at:], f"unicode {u!r}"
    if how == "empty":
        return type(value)(), how
    if how == "huge":
        return fill(node, 200_000), "huge (200,000 characters)"
    if how in ("at maxLength", "over maxLength"):
        n = int(node["maxLength"]) + (0 if how.startswith("at") else 1)
        return fill(node, n), how
    if how == "at maxLength, multi-byte":
        return fill(node, int(node["maxLength"]), draw(st.sampled_from(["é", "\U0001f9e8", "\u0663"]))), how
    if how == "integer edge":
        return draw(pick(INT_EDGES)), how
    if how in ("at a bound", "past a bound"):
        bounds = [(int(node[k]), 1 if k == "maximum" else -1) for k in ("minimum", "maximum") if k in node]
        b, sign = draw(pick(bounds))
        return (b if how.startswith("at") else b + sign), how
    if how in ("at maxItems", "over maxItems"):
        n = int(node["maxItems"]) + (0 if how.startswith("at") else 1)
        return [_unique(value[i % len(value)], i, node) for i in range(n)], how
    if how.startswith("unknown field"):
        out = dict(value)
        if how.endswith("huge key"):
            out["k" * 5000] = 1
        else:
            out[draw(st.sampled_from(["x", "bogus", "namespace", "$ref"]))] = Deep(deep[1], draw(st.booleans()))
            how = f"unknown field, {deep[0]}"
        return out, how
    assert how in ("at maxProperties", "over maxProperties")
    n = int(node["maxProperties"]) + (0 if how.startswith("at") else 1)
    sample = next(iter(value.values()), "v")
    return {f"k{i}.example/x{i}": sample for i in range(n)}, how


MODES = ["apply", "apply", "create", "create-unvalidated"]  # SSA strict (GitOps), kubectl create, no validation


@st.composite
def hostile_spec(draw: st.DrawFn, targets: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(a valid spec with one to three hostile mutations, their labels with the field's path)."""
    spec = copy.deepcopy(draw(valid_spec(targets)))  # st.just values are shared between examples
    labels = []
    for _ in range(draw(st.integers(1, 3))):
        spots = [(p, v) for p, v in leaves(spec) if not any(isinstance(x, Deep) for x in (v,))]
        path, value = draw(pick(spots))
        if not path:  # the spec itself: an unknown top-level field
            path, value = ("bogus",), "x"
        new, label = draw(hostile_value(path, value, len(path) + 2))
        set_at(spec, path, new)
        labels.append(f"{label} at spec{_dotted(path)}")
        if isinstance(new, Deep):
            break
    return spec, labels


def _dotted(path: Path_) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def hostile_name(n: int) -> st.SearchStrategy[str]:
    """Policy names of 253 and 254 characters (a DNS subdomain's limit) and a 63-character label,
    unique by their last digits."""
    return st.sampled_from([253, 254, 63, 64]).map(lambda size: ("p" * size)[: size - len(str(n)) - 1] + f"-{n}")
