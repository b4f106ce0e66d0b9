"""What each policy depends on; all policies -> one dependency graph, its cycles, and printouts
(pure: the standard library and depgate's core only).

Nodes are objects (namespace, kind, name): the workloads that policies gate, the Services they
wait on, and, as leaves, the other objects api preconditions name (Job, Secret, ConfigMap, any
resource). Edges:

- policy edges: each target Deployment of a policy -> each object its preconditions name;
- selector edges: a Service -> every workload whose pod template labels its selector matches.

So `deployment/a -> service/b-svc -> deployment/b -> service/a-svc -> deployment/a` is a cycle:
on a cold start, neither a's nor b's pods can pass their init containers. `find_cycles` lists the
elementary cycles (Johnson's algorithm, bounded); `cycle_for_policy` turns them into the
`DependencyCycle` message of each policy involved.

Policies come in as spec.Policy (spec.parse_policy is the one reading of a policy); `dependencies`
is the one answer to "what does this policy depend on", for the graph and for the operator's watches.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from depgate import registry, spec
from depgate.constants import DEFAULT_NAMESPACE

DEPENDENCY_CYCLE: Final = "DependencyCycle"
WORKLOAD_KINDS: Final = tuple(registry.WORKLOAD_KINDS)
DEFAULT_CYCLE_LIMIT: Final = 100


class Node(NamedTuple):
    """An object in the graph. `kind` is the API kind ("Deployment", "Service", ...); for a
    `resource` precondition it is qualified with the API group ("Certificate.cert-manager.io")."""

    namespace: str
    kind: str
    name: str

    def label(self, namespace: str | None = None) -> str:
        """`deployment/a`; with ` (ns)` appended when the node is outside `namespace`."""
        text = f"{self.kind.lower()}/{self.name}"
        return text if namespace is None or namespace == self.namespace else f"{text} ({self.namespace})"


class ObjectKey(NamedTuple):
    """(kind, namespace, name): how the operator's watches name an object (Dep.key)."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Dep:
    """An object a policy's precondition waits on. `kind` is the API kind ("Service", "Job", a workload
    kind); for a `resource` precondition it is qualified with its API group ("Certificate.cert-manager.io",
    see kind_name). namespace None: the policy's own namespace (only network preconditions, through a
    Service's DNS name, can reach another namespace)."""

    kind: str
    name: str
    precondition: str
    namespace: str | None = None

    def key(self, namespace: str) -> ObjectKey:
        """(kind, namespace, name), the policy's `namespace` filling in a None."""
        return ObjectKey(self.kind, self.namespace or namespace, self.name)


def kind_name(api_version: str, kind: str, *, qualified: bool) -> str:
    """How the graph and the watches spell a kind: bare for the kinds depgate knows (and for any kind
    when not `qualified`), `Kind.group` for a custom resource's kind of a named group."""
    group = api_version.rpartition("/")[0]
    return f"{kind}.{group}" if qualified and group else kind


@dataclass(frozen=True)
class PolicyNode:
    """A policy reduced to what the graph needs: its target workloads ((kind, name), or a plain name:
    a Deployment) and what it waits on."""

    namespace: str
    name: str
    targets: Sequence[tuple[str, str] | str]
    deps: Sequence[Dep]


@dataclass(frozen=True, order=True)
class EdgeLabel:
    """Why an edge exists: a policy's precondition, or (policy None) a Service's selector."""

    policy: tuple[str, str] | None  # (namespace, name)
    precondition: str = ""


SELECTS: Final = EdgeLabel(None, "")


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]  # sorted
    edges: Mapping[Node, tuple[Node, ...]] = field(default_factory=dict)  # sorted successors
    labels: Mapping[tuple[Node, Node], tuple[EdgeLabel, ...]] = field(default_factory=dict)

    def successors(self, node: Node) -> tuple[Node, ...]:
        return self.edges.get(node, ())

    def policies_of(self, node: Node) -> list[str]:
        """Names of the policies with an edge out of `node` (the policies that gate it)."""
        names = {lab.policy[1] for succ in self.successors(node) for lab in self.labels[(node, succ)]
                 if lab.policy is not None}
        return sorted(names)


# --------------------------------------------------------------------------- building


def build_graph(policies: Iterable[PolicyNode],
                services: Mapping[tuple[str, str], Mapping[str, str] | None],
                workload_labels: Mapping[tuple[str, str, str], Mapping[str, str]]) -> Graph:
    """The graph of `policies`.

    services: (namespace, name) -> the Service's spec.selector (None or {}: selects nothing).
    workload_labels: (namespace, kind, name) -> the workload's pod template labels."""
    nodes: set[Node] = set()
    labels: dict[tuple[Node, Node], set[EdgeLabel]] = defaultdict(set)
    for policy in policies:
        for target in policy.targets:
            kind, tname = (registry.DEPLOYMENT.kind, target) if isinstance(target, str) else target
            src = Node(policy.namespace, kind, tname)
            nodes.add(src)
            for dep in policy.deps:
                dst = Node(dep.namespace or policy.namespace, dep.kind, dep.name)
                nodes.add(dst)
                labels[(src, dst)].add(EdgeLabel((policy.namespace, policy.name), dep.precondition))
    by_namespace: dict[str, list[tuple[Node, Mapping[str, str]]]] = defaultdict(list)
    for (ns, kind, name), pod_labels in workload_labels.items():
        by_namespace[ns].append((Node(ns, kind, name), pod_labels))
    for svc in [n for n in nodes if n.kind == registry.SERVICE.kind]:
        selector = services.get((svc.namespace, svc.name))
        if not selector:
            continue
        selects = spec.Selector(match_labels=selector)
        for workload, pod_labels in by_namespace.get(svc.namespace, ()):
            if selects.matches(pod_labels):
                nodes.add(workload)
                labels[(svc, workload)].add(SELECTS)
    edges: dict[Node, list[Node]] = defaultdict(list)
    for src, dst in labels:
        edges[src].append(dst)
    return Graph(
        nodes=tuple(sorted(nodes)),
        edges={src: tuple(sorted(dsts)) for src, dsts in sorted(edges.items())},
        labels={edge: tuple(sorted(labs)) for edge, labs in sorted(labels.items())},
    )


def blocked_edges(graph: Graph, blocked: Iterable[tuple[str, str, str]]) -> frozenset[tuple[Node, Node]]:
    """The policy edges of the preconditions in `blocked`, each (namespace, policy, precondition)
    (from each policy's status.blocking)."""
    wanted = set(blocked)
    return frozenset(edge for edge, labs in graph.labels.items()
                     if any(lab.policy is not None and (*lab.policy, lab.precondition) in wanted
                            for lab in labs))


# --------------------------------------------------------------------------- cycles


def _reach(start: Node, step: Mapping[Node, Collection[Node]]) -> set[Node]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in step.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycles(graph: Graph, limit: int = DEFAULT_CYCLE_LIMIT) -> list[list[Node]]:
    """The elementary cycles of the graph, each once, as the path of its nodes starting at its
    smallest node (the edge back to the start is implied). Shortest first, then by nodes; at most
    `limit` (a dense graph can have exponentially many; the first `limit` found are kept)."""
    found: list[list[Node]] = []
    # Only nodes on some cycle can start one: those of a strongly connected component with more
    # than one node, or with an edge to itself. Typically none, so an acyclic graph costs O(V + E).
    order = sorted(_on_cycles(graph))
    rank = {node: i for i, node in enumerate(order)}
    for start in order:
        if len(found) >= limit:
            break
        # Johnson: the strongly connected component of `start` among the nodes >= start
        lo = rank[start]
        fwd = {n: [m for m in graph.successors(n) if rank.get(m, -1) >= lo] for n in order[lo:]}
        back: dict[Node, list[Node]] = defaultdict(list)
        for n, succs in fwd.items():
            for m in succs:
                back[m].append(n)
        component = _reach(start, fwd) & _reach(start, back)
        succ = {n: [m for m in fwd[n] if m in component] for n in component}
        _circuits(start, succ, found, limit)
    found.sort(key=lambda cyc: (len(cyc), cyc))
    return found


def _on_cycles(graph: Graph) -> set[Node]:
    """The nodes that lie on at least one cycle (Tarjan's strongly connected components, iterative)."""
    index: dict[Node, int] = {}
    low: dict[Node, int] = {}
    stack: list[Node] = []
    on_stack: set[Node] = set()
    out: set[Node] = set()
    for root in sorted(set(graph.nodes) | set(graph.edges)):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        frames: list[tuple[Node, Iterator[Node]]] = [(root, iter(graph.successors(root)))]
        while frames:
            node, succs = frames[-1]
            for nxt in succs:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    frames.append((nxt, iter(graph.successors(nxt))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                frames.pop()
                if frames:
                    parent = frames[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.successors(node):
                        out.update(component)
    return out


def _circuits(start: Node, succ: Mapping[Node, Sequence[Node]], found: list[list[Node]], limit: int) -> None:
    """Johnson's CIRCUIT from `start`, iterative: append every elementary cycle through `start`."""
    blocked: set[Node] = {start}
    block_map: dict[Node, set[Node]] = defaultdict(set)
    path = [start]
    # frames: [node, iterator over successors, found a cycle below]
    frames: list[list[Any]] = [[start, iter(succ[start]), False]]

    def unblock(node: Node) -> None:
        todo = [node]
        while todo:
            cur = todo.pop()
            if cur in blocked:
                blocked.discard(cur)
                todo.extend(block_map.pop(cur, ()))

    while frames:
        frame = frames[-1]
        node, successors = frame[0], frame[1]
        descended = False
        for nxt in successors:
            if nxt == start:
                found.append(list(path))
                frame[2] = True
                if len(found) >= limit:
                    return
            elif nxt not in blocked:
                path.append(nxt)
                blocked.add(nxt)
                frames.append([nxt, iter(succ[nxt]), False])
                descended = True
                break
        if descended:
            continue
        if frame[2]:
            unblock(node)
        else:
            for nxt in succ[node]:
                block_map[nxt].add(node)
        frames.pop()
        path.pop()
        if frames and frame[2]:
            frames[-1][2] = True


def format_cycle(cycle: Sequence[Node], namespace: str | None = None) -> str:
    """`deployment/a -> service/b-svc -> deployment/b -> service/a-svc -> deployment/a`."""
    if not cycle:
        return ""
    return " -> ".join(node.label(namespace) for node in [*cycle, cycle[0]])


def cycle_for_policy(graph: Graph, cycles: Sequence[Sequence[Node]], namespace: str, name: str) -> str | None:
    """The DependencyCycle message for a policy: the first (shortest) cycle through one of its
    edges, starting at the policy's target; None when the policy is in no cycle."""
    me = (namespace, name)
    for cycle in cycles:
        n = len(cycle)
        for i in range(n):
            edge = (cycle[i], cycle[(i + 1) % n])
            if any(lab.policy == me for lab in graph.labels.get(edge, ())):
                return format_cycle([*cycle[i:], *cycle[:i]], namespace)
    return None


def cycles_by_policy(graph: Graph, cycles: Sequence[Sequence[Node]]) -> dict[tuple[str, str], str]:
    """(namespace, policy) -> its DependencyCycle message, for every policy on some cycle."""
    policies = sorted({lab.policy for labs in graph.labels.values() for lab in labs
                       if lab.policy is not None})
    out: dict[tuple[str, str], str] = {}
    for ns, name in policies:
        message = cycle_for_policy(graph, cycles, ns, name)
        if message is not None:
            out[(ns, name)] = message
    return out


# --------------------------------------------------------------------------- printouts


def _edge_names(graph: Graph, src: Node, dst: Node) -> str:
    return ",".join(sorted({lab.precondition for lab in graph.labels.get((src, dst), ()) if lab.policy}))


def _roots(graph: Graph) -> list[Node]:
    has_in = {dst for dsts in graph.edges.values() for dst in dsts}
    return [n for n in graph.nodes if graph.successors(n) and n not in has_in]


def to_text(graph: Graph, blocked: Collection[tuple[Node, Node]] = frozenset()) -> str:
    """A tree per root (a gated workload nothing waits on), then per cycle not reached from one.

        deployment/app (policy app-deps)
        ├── db: service/db [blocked]
        │   └── statefulset/db
        └── migrate: job/migrate

    Edges of preconditions are prefixed with the precondition's name; `[blocked]` marks blocked
    edges, `[cycle]` an edge back into the current path, `(see above)` a subtree already shown."""
    lines: list[str] = []
    expanded: set[Node] = set()
    namespaces = {n.namespace for n in graph.nodes if graph.successors(n)}
    multi = len(namespaces) > 1
    current_ns: list[str | None] = [None]

    def head(node: Node, ns: str) -> str:
        text = node.label(ns)
        policies = graph.policies_of(node)
        return f"{text} (policy {', '.join(policies)})" if policies else text

    def tree(root: Node) -> None:
        if multi and current_ns[0] != root.namespace:
            if lines:
                lines.append("")
            lines.append(f"# namespace {root.namespace}")
            current_ns[0] = root.namespace
        elif lines:
            lines.append("")
        ns = root.namespace
        lines.append(head(root, ns))
        expanded.add(root)
        # iterative DFS: (node, prefix, successors left, path)
        stack: list[tuple[Node, str, list[Node], tuple[Node, ...]]] = [
            (root, "", list(graph.successors(root)), (root,))]
        while stack:
            node, prefix, todo, path = stack.pop()
            if not todo:
                continue
            child = todo.pop(0)
            stack.append((node, prefix, todo, path))
            last = not todo
            names = _edge_names(graph, node, child)
            text = (f"{names}: " if names else "") + head(child, ns)
            marks = []
            if (node, child) in blocked:
                marks.append("[blocked]")
            descend = False
            if child in path:
                marks.append("[cycle]")
            elif child in expanded and graph.successors(child):
                marks.append("(see above)")
            else:
                descend = bool(graph.successors(child))
                expanded.add(child)
            lines.append(prefix + ("└── " if last else "├── ") + " ".join([text, *marks]))
            if descend:
                stack.append((child, prefix + ("    " if last else "│   "), list(graph.successors(child)),
                              (*path, child)))

    roots = _roots(graph)
    for ns in sorted(namespaces):
        for root in roots:
            if root.namespace == ns:
                tree(root)
        for node in graph.nodes:  # what only cycles reach
            if node.namespace == ns and graph.successors(node) and node not in expanded:
                tree(node)
    return "\n".join(lines) + ("\n" if lines else "")


def _dot_id(node: Node) -> str:
    raw = f"{node.namespace}/{node.kind}/{node.name}"
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph, blocked: Collection[tuple[Node, Node]] = frozenset(),
           cycles: Sequence[Sequence[Node]] = ()) -> str:
    """Graphviz dot: a cluster per namespace; blocked edges red and bold, edges on a cycle orange,
    selector edges (Service -> workload) dashed; precondition names as edge labels."""
    on_cycle = {(cyc[i], cyc[(i + 1) % len(cyc)]) for cyc in cycles for i in range(len(cyc))}
    out = ["digraph depgate {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']
    by_ns: dict[str, list[Node]] = defaultdict(list)
    for node in graph.nodes:
        by_ns[node.namespace].append(node)
    for i, (ns, nodes) in enumerate(sorted(by_ns.items())):
        out.append(f"  subgraph cluster_{i} {{")
        out.append(f"    label={_dot_str('namespace ' + ns)};")
        for node in nodes:
            if node.kind in WORKLOAD_KINDS:
                shape = "box"
            elif node.kind == registry.SERVICE.kind:
                shape = "ellipse"
            else:
                shape = "note"
            out.append(f"    {_dot_id(node)} [label={_dot_str(node.label())}, shape={shape}];")
        out.append("  }")
    for (src, dst), labs in graph.labels.items():
        attrs = []
        names = _edge_names(graph, src, dst)
        if names:
            attrs.append(f"label={_dot_str(names)}")
        if all(lab.policy is None for lab in labs):
            attrs.append("style=dashed")
        if (src, dst) in blocked:
            attrs += ["color=red", "fontcolor=red", "penwidth=2"]
        elif (src, dst) in on_cycle:
            attrs += ["color=orange", "penwidth=2"]
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        out.append(f"  {_dot_id(src)} -> {_dot_id(dst)}{suffix};")
    out.append("}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- what a policy depends on


def service_for_host(host: str, namespace: str, services: Collection[tuple[str, str]],
                     cluster_domain: str = "cluster.local") -> tuple[str, str] | None:
    """The Service a host name reaches through cluster DNS, when that Service exists:
    `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<cluster domain>` (trailing dot allowed)."""
    host = host.strip().rstrip(".").lower()
    if not host:
        return None
    try:
        ipaddress.ip_address(host.strip("[]"))
        return None
    except ValueError:
        pass
    parts = host.split(".")
    suffix = ["svc", *cluster_domain.lower().split(".")]
    candidate: tuple[str, str] | None = None
    if len(parts) == 1:
        candidate = (namespace, parts[0])
    elif parts[2:] in ([], ["svc"], suffix):
        candidate = (parts[1], parts[0])
    return candidate if candidate is not None and candidate in services else None


def dependencies(policy: spec.Policy, namespace: str | None = None,
                 services: Collection[tuple[str, str]] = ()) -> list[Dep]:
    """What `policy` depends on, in declared order (its namespace: `namespace`, else the policy's own,
    else DEFAULT_NAMESPACE; every Dep returned has it filled in).

    - each precondition the operator judges: the object it names (its body's named_object());
    - each network precondition (its body has a `host`) whose host is the cluster DNS name of one of
      `services` ((namespace, name) pairs; none given: none counts): that Service;
    - a `command` names nothing.
    The operator watches the first kind (`{d.key(ns) for d in dependencies(policy, ns)}`); the graph
    takes both."""
    ns = namespace or policy.namespace or DEFAULT_NAMESPACE
    deps: list[Dep] = []
    for pre in policy.preconditions:
        body = pre.body
        named = getattr(body, "named_object", None)
        if named is not None:
            api_version, kind, name = named()
            custom = registry.PRECONDITION_TYPES[pre.type].custom_kind
            deps.append(Dep(kind_name(api_version, kind, qualified=custom), name, pre.name, ns))
            continue
        host = getattr(body, "host", None)
        found = service_for_host(host, ns, services) if isinstance(host, str) and services else None
        if found is not None:
            deps.append(Dep(registry.SERVICE.kind, found[1], pre.name, found[0]))
    return deps


WorkloadLabels = Mapping[tuple[str, str, str], Mapping[str, str]]  # (namespace, kind, name) -> metadata.labels


Claims = Mapping[tuple[str, str, str], str]  # (namespace, kind, name) -> the policy its depgate.io/policy names


def targets_of(policy: spec.Policy, deployment_labels: WorkloadLabels,
               claims: Claims | None = None) -> list[tuple[str, str]]:
    """(kind, name) of the workloads `policy` gates: its workloadRef; the workloads of its namespace
    and of its selector's kinds whose labels the selector matches (deployment_labels: (namespace, kind,
    name) -> metadata.labels), sorted; or the Deployment its template creates (spec.template_name).
    A workload another policy's claim holds (`claims`: this one lost a Conflict, or left it to a
    workloadRef) is not its target: no edge is drawn from it for this policy."""
    target = policy.target
    ns = policy.namespace or DEFAULT_NAMESPACE
    if isinstance(target, spec.WorkloadRef):
        found = [(target.kind, target.name)]
    elif isinstance(target, spec.Selector):
        found = sorted((kind, name) for (dns, kind, name), labels in deployment_labels.items()
                       if dns == ns and kind in target.kinds and target.matches(labels))
    else:
        return [(registry.DEPLOYMENT.kind, spec.template_name(policy))]
    held = claims or {}
    return [k for k in found if held.get((ns, *k)) in (None, policy.name)]


def policy_node(policy: spec.Policy,
                deployment_labels: WorkloadLabels,
                services: Collection[tuple[str, str]], claims: Claims | None = None) -> PolicyNode:
    """A policy -> PolicyNode: its targets (targets_of) and its dependencies (dependencies)."""
    ns = policy.namespace or DEFAULT_NAMESPACE
    return PolicyNode(ns, policy.name, targets_of(policy, deployment_labels, claims),
                      dependencies(policy, ns, services))


def policy_nodes(policies: Iterable[spec.Policy],
                 deployment_labels: WorkloadLabels,
                 services: Collection[tuple[str, str]], claims: Claims | None = None) -> list[PolicyNode]:
    """Every policy's node; a claim counts only when the policy it names is among `policies` (a
    deleted policy's claim is stale: the next policy takes the workload over)."""
    policies = list(policies)
    names = {(p.namespace or DEFAULT_NAMESPACE, p.name) for p in policies}
    live = {k: c for k, c in (claims or {}).items() if (k[0], c) in names}
    return [policy_node(p, deployment_labels, services, live) for p in policies]


# --------------------------------------------------------------------------- status


def blocked_from_status(policy: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(namespace, policy, precondition) for each name in the policy's status.blocking (a raw
    DependencyPolicy object: spec.Policy holds no status)."""
    ns, name = namespace_and_name(policy)
    blocking = (policy.get("status") or {}).get("blocking")
    return [(ns, name, str(p)) for p in blocking] if isinstance(blocking, list) else []


def namespace_and_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(metadata.namespace or DEFAULT_NAMESPACE, metadata.name or "") of a raw object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or DEFAULT_NAMESPACE), str(meta.get("name") or "")
