"""`depgate graph [-n NS | -A] [--format text|dot]`: the live dependency graph across policies.

Only `list_live` talks to the API server (the `kubernetes` client, imported lazily); everything
else goes through the pure depgate.graph.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from depgate import GROUP, PLURAL, VERSION
from depgate import graph as g


@dataclass
class Live:
    """Raw objects as the API returns them (dicts with the API's camelCase field names)."""

    policies: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    workloads: list[dict[str, Any]] = field(default_factory=list)  # Deployments, StatefulSets, DaemonSets


def list_live(namespace: str | None, context: str | None = None) -> Live:
    """List policies, Services and workloads in `namespace` (None: all namespaces)."""
    from kubernetes import client
    from kubernetes import config as _config

    config: Any = _config  # partly untyped in the client
    try:
        config.load_kube_config(context=context)
    except config.ConfigException:
        config.load_incluster_config()
    api: Any = client.ApiClient()
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)

    def items(result: Any) -> list[dict[str, Any]]:
        raw = api.sanitize_for_serialization(result) if not isinstance(result, dict) else result
        return [dict(i) for i in (raw.get("items") or [])]

    live = Live()
    listers: list[tuple[Callable[..., Any], str]]
    if namespace is None:
        live.policies = items(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))
        live.services = items(core.list_service_for_all_namespaces())
        listers = [(apps.list_deployment_for_all_namespaces, "Deployment"),
                   (apps.list_stateful_set_for_all_namespaces, "StatefulSet"),
                   (apps.list_daemon_set_for_all_namespaces, "DaemonSet")]
        for lister, kind in listers:
            live.workloads += [{**w, "kind": kind} for w in items(lister())]
    else:
        live.policies = items(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))
        live.services = items(core.list_namespaced_service(namespace))
        listers = [(apps.list_namespaced_deployment, "Deployment"),
                   (apps.list_namespaced_stateful_set, "StatefulSet"),
                   (apps.list_namespaced_daemon_set, "DaemonSet")]
        for lister, kind in listers:
            live.workloads += [{**w, "kind": kind} for w in items(lister(namespace))]
    return live


def current_namespace(context: str | None = None) -> str:
    """The namespace of the kubeconfig's current (or named) context, else `default`."""
    try:
        from kubernetes import config

        list_contexts: Any = config.list_kube_config_contexts  # untyped in the client
        contexts, active = list_contexts()
        chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
        return str(((chosen or {}).get("context") or {}).get("namespace") or "default")
    except Exception:  # no kubeconfig: in-cluster, or nothing at all
        return "default"


def _meta(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def graph_from_live(live: Live) -> tuple[g.Graph, frozenset[tuple[g.Node, g.Node]]]:
    """The graph of the live objects, and its blocked edges (from each policy's status.blocking)."""
    selectors: dict[tuple[str, str], dict[str, str] | None] = {}
    for svc in live.services:
        selector = (svc.get("spec") or {}).get("selector")
        selectors[_meta(svc)] = dict(selector) if isinstance(selector, dict) else None
    pod_labels: dict[tuple[str, str, str], dict[str, str]] = {}
    deployment_labels: dict[tuple[str, str], dict[str, str]] = {}
    for w in live.workloads:
        ns, name = _meta(w)
        kind = str(w.get("kind") or "Deployment")
        labels = (((w.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        pod_labels[(ns, kind, name)] = dict(labels)
        if kind == "Deployment":
            deployment_labels[(ns, name)] = dict((w.get("metadata") or {}).get("labels") or {})
    nodes = [g.policy_node(p, deployment_labels, selectors.keys()) for p in live.policies]
    graph = g.build_graph(nodes, selectors, pod_labels)
    blocked = g.blocked_edges(graph, [b for p in live.policies for b in g.blocked_from_status(p)])
    return graph, blocked


def render(graph: g.Graph, blocked: frozenset[tuple[g.Node, g.Node]], fmt: str) -> str:
    cycles = g.find_cycles(graph)
    if fmt == "dot":
        return g.to_dot(graph, blocked, cycles)
    text = g.to_text(graph, blocked) or "no DependencyPolicies found\n"
    if cycles:
        text += "\ncycles (pods on them cannot start from cold):\n"
        text += "".join(f"  {g.format_cycle(c)}\n" for c in cycles)
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depgate graph",
                                description="Print the live dependency graph across all DependencyPolicies.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="only this namespace (default: the context's namespace)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("--format", choices=("text", "dot"), default="text",
                   help="text: a tree per gated workload, [blocked] edges marked; dot: Graphviz")
    p.add_argument("--context", help="the kubeconfig context to use")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    namespace = None if args.all_namespaces else (args.namespace or current_namespace(args.context))
    try:
        live = list_live(namespace, args.context)
    except Exception as exc:  # the client's errors: no config, 403, 404 (CRD not installed), ...
        status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
        detail = f"{status} {reason}" if status else f"{type(exc).__name__}: {exc}"
        hint = " (is the DependencyPolicy CRD installed?)" if status == 404 else ""
        print(f"depgate graph: cannot list objects: {detail}{hint}", file=sys.stderr)
        return 1
    graph, blocked = graph_from_live(live)
    sys.stdout.write(render(graph, blocked, args.format))
    return 0
