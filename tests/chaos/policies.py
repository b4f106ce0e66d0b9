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
import string
from collections.abc import Callable
from typing import Any

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
    return {"template": tmpl}


@st.composite
def valid_spec(draw: st.DrawFn, targets: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = draw(target(targets))
    if draw(st.booleans()):
        spec["placement"] = draw(st.sampled_from(["BeforeExisting", "AfterExisting"]))
    if draw(st.integers(0, 3)) == 0:
        spec["defaults"] = {"timeoutSeconds": draw(st.integers(0, 3600)), "periodSeconds": draw(st.integers(1, 300))}
    if draw(st.integers(0, 3)) == 0:
        spec["sharedVolume"] = {"mountPath": draw(st.sampled_from(["/depgate/shared", "/data", "/cache"]))}
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
