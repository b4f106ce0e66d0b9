"""`depgate graph [-n NS | -A] [-f PATH]... [-o text|dot|svg|png|mermaid]`: the dependency graph across policies.

The objects come from the API server (`list_live`, the `kubernetes` client, imported lazily) or, with
-f, from files (what `kubectl get -o yaml` printed, or the manifests you apply: a policy's status.blocking,
when there, marks its blocked edges). Everything else goes through the pure depgate.graph; svg and png are
Graphviz's `dot` drawing the DOT depgate emits (blocked edges red, edges on a cycle orange); mermaid is a
Mermaid flowchart of the same graph, for Markdown that renders it (GitHub, GitLab).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from depgate import graph as g
from depgate import registry, spec
from depgate.constants import DEFAULT_NAMESPACE, POLICY_ANNOTATION
from depgate.graph import namespace_and_name as _meta


@dataclass
class Live:
    """Raw objects as the API returns them (dicts with the API's camelCase field names)."""

    policies: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    workloads: list[dict[str, Any]] = field(default_factory=list)  # of registry.WORKLOAD_KINDS, with "kind" set


def list_live(namespace: str | None, context: str | None = None, kubeconfig: str | None = None) -> Live:
    """List policies, Services and workloads in `namespace` (None: all namespaces)."""
    from kubernetes import client
    from kubernetes import config as _config

    config: Any = _config  # partly untyped in the client
    try:
        config.load_kube_config(context=context, **({"config_file": kubeconfig} if kubeconfig else {}))
    except config.ConfigException:
        if kubeconfig:
            raise
        config.load_incluster_config()
    api: Any = client.ApiClient()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)

    def items(result: Any) -> list[dict[str, Any]]:
        raw = api.sanitize_for_serialization(result) if not isinstance(result, dict) else result
        return [dict(i) for i in (raw.get("items") or [])]

    def listed(kind: registry.ApiKind) -> list[dict[str, Any]]:
        # the custom-objects client lists any kind of a named API group (apps/v1 included)
        if namespace is None:
            return items(custom.list_cluster_custom_object(kind.group, kind.version, kind.plural))
        return items(custom.list_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural))

    live = Live()
    live.policies = listed(registry.DEPENDENCY_POLICY)
    if namespace is None:
        live.services = items(core.list_service_for_all_namespaces())
    else:
        live.services = items(core.list_namespaced_service(namespace))
    for workload in registry.WORKLOAD_KINDS.values():
        live.workloads += [{**w, "kind": workload.kind} for w in listed(workload.api)]
    return live


def current_namespace(context: str | None = None) -> str:
    """The namespace of the kubeconfig's current (or named) context, else `default`."""
    try:
        from kubernetes import config

        list_contexts: Any = config.list_kube_config_contexts  # untyped in the client
        contexts, active = list_contexts()
        chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
        return str(((chosen or {}).get("context") or {}).get("namespace") or DEFAULT_NAMESPACE)
    except Exception:  # no kubeconfig: in-cluster, or nothing at all
        return DEFAULT_NAMESPACE


@dataclass(frozen=True)
class LiveGraph:
    graph: g.Graph
    blocked: frozenset[tuple[g.Node, g.Node]]  # from each policy's status.blocking
    skipped: list[spec.Refused]  # the policies that do not parse: not in the graph


def live_from_documents(objs: Sequence[Mapping[str, Any]], namespace: str | None) -> Live:
    """The policies, Services and workloads among `objs` (files' documents), in `namespace` (None: all)."""
    live = Live()
    for obj in objs:
        if namespace is not None and _meta(obj)[0] != namespace:
            continue
        kind = obj.get("kind")
        if kind == registry.DEPENDENCY_POLICY.kind:
            live.policies.append(dict(obj))
        elif kind == registry.SERVICE.kind:
            live.services.append(dict(obj))
        elif kind in registry.WORKLOAD_KINDS:
            live.workloads.append(dict(obj))
    return live


def live_graph(live: Live) -> LiveGraph:
    """The graph of the live objects: the policies that parse (spec.parse_policy), their blocked edges,
    and the policies skipped."""
    selectors: dict[tuple[str, str], dict[str, str] | None] = {}
    for svc in live.services:
        selector = (svc.get("spec") or {}).get("selector")
        selectors[_meta(svc)] = dict(selector) if isinstance(selector, dict) else None
    pod_labels: dict[tuple[str, str, str], dict[str, str]] = {}
    deployment_labels: dict[tuple[str, str, str], dict[str, str]] = {}
    claims: dict[tuple[str, str, str], str] = {}
    for w in live.workloads:
        ns, name = _meta(w)
        kind = str(w.get("kind") or registry.DEPLOYMENT.kind)
        workload = registry.WORKLOAD_KINDS.get(kind)
        template = _at(w, workload.pod_template if workload else ("spec", "template"))
        pod_labels[(ns, kind, name)] = dict(_at(template, ("metadata", "labels")))
        if kind in registry.TARGET_KINDS:
            deployment_labels[(ns, kind, name)] = dict((w.get("metadata") or {}).get("labels") or {})
            claim = ((w.get("metadata") or {}).get("annotations") or {}).get(POLICY_ANNOTATION)
            if isinstance(claim, str) and claim:
                claims[(ns, kind, name)] = claim
    policies, skipped = spec.parse_policies(live.policies)
    graph = g.build_graph(g.policy_nodes(policies, deployment_labels, selectors.keys(), claims), selectors, pod_labels)
    blocked = g.blocked_edges(graph, [b for p in live.policies for b in g.blocked_from_status(p)])
    return LiveGraph(graph, blocked, skipped)


def graph_from_live(live: Live) -> tuple[g.Graph, frozenset[tuple[g.Node, g.Node]]]:
    """The graph of the live objects, and its blocked edges (live_graph without the skipped list)."""
    got = live_graph(live)
    return got.graph, got.blocked


def _at(obj: Any, path: Sequence[str]) -> Mapping[str, Any]:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj if isinstance(obj, Mapping) else {}


def skipped_lines(skipped: Sequence[spec.Refused]) -> str:
    """One line per policy left out of the graph (for stderr: stdout stays a graph, dot included)."""
    return "".join(f"depgate graph: skipped DependencyPolicy {r.namespace or 'default'}/{r.name}: "
                   f"invalid spec: {r.error}\n" for r in skipped)


PICTURES = ("svg", "png")  # drawn by Graphviz's dot from the DOT
FORMATS = ("text", "dot", "mermaid", *PICTURES)


class DrawError(Exception):
    """Graphviz's dot is missing or failed."""


def draw(dot_text: str, fmt: str, dot: str | None = None) -> bytes:
    """The picture (svg or png) Graphviz's `dot` draws of `dot_text`."""
    binary = dot or shutil.which("dot")
    if binary is None:
        raise DrawError(f"-o {fmt} needs Graphviz's dot on PATH (Debian: apt-get install graphviz)")
    try:
        proc = subprocess.run([binary, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DrawError(f"could not run {binary}: {exc}") from None
    if proc.returncode != 0 or not proc.stdout:
        raise DrawError(f"{binary} -T{fmt} failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _mermaid_text(text: str) -> str:
    """A label inside Mermaid's double quotes ("..."): quotes and the few characters it reads as markup escaped."""
    return "".join({'"': "#quot;", "<": "#lt;", ">": "#gt;", "|": "#124;"}.get(c, c) for c in text)


def to_mermaid(graph: g.Graph, blocked: frozenset[tuple[g.Node, g.Node]] = frozenset(),
               cycles: Sequence[Sequence[g.Node]] = ()) -> str:
    """A Mermaid flowchart: a subgraph per namespace; workloads as boxes, Services as stadiums, other objects
    as flags; precondition names on the edges, selector edges dotted; blocked edges red, edges on a cycle
    orange (linkStyle by the edge's index), as in the DOT."""
    ids = {node: f"n{i}" for i, node in enumerate(graph.nodes)}
    on_cycle = {(cyc[i], cyc[(i + 1) % len(cyc)]) for cyc in cycles for i in range(len(cyc))}
    out = ["flowchart LR"]
    by_ns: dict[str, list[g.Node]] = {}
    for node in graph.nodes:
        by_ns.setdefault(node.namespace, []).append(node)
    for i, (ns, nodes) in enumerate(sorted(by_ns.items())):
        out.append(f'  subgraph ns{i}["namespace {_mermaid_text(ns)}"]')
        for node in nodes:
            label = _mermaid_text(node.label())
            if node.kind in g.WORKLOAD_KINDS:
                out.append(f'    {ids[node]}["{label}"]')
            elif node.kind == registry.SERVICE.kind:
                out.append(f'    {ids[node]}(["{label}"])')
            else:
                out.append(f'    {ids[node]}>"{label}"]')
        out.append("  end")
    styles: list[str] = []
    for index, ((src, dst), labs) in enumerate(graph.labels.items()):
        names = ",".join(sorted({lab.precondition for lab in labs if lab.policy}))
        arrow = "-.->" if all(lab.policy is None for lab in labs) else "-->"
        out.append(f"  {ids[src]} {arrow}" + (f'|"{_mermaid_text(names)}"|' if names else "") + f" {ids[dst]}")
        if (src, dst) in blocked:
            styles.append(f"  linkStyle {index} stroke:red,stroke-width:2px,color:red")
        elif (src, dst) in on_cycle:
            styles.append(f"  linkStyle {index} stroke:orange,stroke-width:2px")
    return "\n".join(out + styles) + "\n"


def render(graph: g.Graph, blocked: frozenset[tuple[g.Node, g.Node]], fmt: str) -> str:
    """The graph as text, dot or mermaid (svg and png: `draw` of the dot)."""
    cycles = g.find_cycles(graph)
    if fmt in ("dot", *PICTURES):
        return g.to_dot(graph, blocked, cycles)
    if fmt == "mermaid":
        return to_mermaid(graph, blocked, cycles)
    text = g.to_text(graph, blocked) or "no DependencyPolicies found\n"
    if cycles:
        text += "\ncycles (pods on them cannot start from cold):\n"
        text += "".join(f"  {g.format_cycle(c)}\n" for c in cycles)
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depgate graph",
                                description="Print the live dependency graph across all DependencyPolicies.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="only this namespace (default: the context's namespace; with -f: "
                                                 "every namespace in the files)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-f", "--filename", action="append", default=[], metavar="PATH",
                   help="read the objects from these files or directories (.yaml, .yml, .json; - for stdin; "
                        "a kind: List is opened) instead of the cluster; repeatable")
    p.add_argument("-o", "--output", "--format", dest="format", choices=FORMATS, default="text",
                   help="text: a tree per gated workload, [blocked] edges marked; dot: Graphviz's DOT; svg, png: "
                        "the picture Graphviz's dot draws of it (blocked edges red, cycles orange); mermaid: a "
                        "Mermaid flowchart")
    p.add_argument("--context", help="the kubeconfig context to use")
    p.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG, then ~/.kube/config)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.filename:
        from depgate.render_cli import RenderFailure, load_documents

        try:
            docs = load_documents(args.filename)
        except RenderFailure as exc:
            print(f"depgate graph: {exc}", file=sys.stderr)
            return 1
        live = live_from_documents([d.obj for d in docs], None if args.all_namespaces else args.namespace)
    else:
        namespace = None if args.all_namespaces else (args.namespace or current_namespace(args.context))
        try:
            extra = {"kubeconfig": args.kubeconfig} if args.kubeconfig else {}
            live = list_live(namespace, args.context, **extra)
        except Exception as exc:  # the client's errors: no config, 403, 404 (CRD not installed), ...
            status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
            detail = f"{status} {reason}" if status else f"{type(exc).__name__}: {exc}"
            hint = " (is the DependencyPolicy CRD installed?)" if status == 404 else ""
            print(f"depgate graph: cannot list objects: {detail}{hint}", file=sys.stderr)
            return 1
    got = live_graph(live)
    text = render(got.graph, got.blocked, args.format)
    if args.format in PICTURES:
        try:
            picture = draw(text, args.format)
        except DrawError as exc:
            print(f"depgate graph: {exc}", file=sys.stderr)
            return 1
        sys.stdout.flush()
        sys.stdout.buffer.write(picture)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(text)
    sys.stderr.write(skipped_lines(got.skipped))
    return 0
