"""Unit tests for depgate.graph: the cross-policy dependency graph, its cycles and printouts."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depgate import graph_cli
from depgate.graph import (
    DEPENDENCY_CYCLE,
    SELECTS,
    Dep,
    EdgeLabel,
    Graph,
    Node,
    PolicyNode,
    blocked_edges,
    blocked_from_status,
    build_graph,
    cycle_for_policy,
    cycles_by_policy,
    dependencies,
    find_cycles,
    format_cycle,
    policy_node,
    policy_nodes,
    service_for_host,
    to_dot,
    to_text,
)
from depgate.spec import parse_policy


def dep(ns: str, name: str) -> Node:
    return Node(ns, "Deployment", name)


def svc(ns: str, name: str) -> Node:
    return Node(ns, "Service", name)


A, B, C = dep("default", "a"), dep("default", "b"), dep("default", "c")
ASVC, BSVC = svc("default", "a-svc"), svc("default", "b-svc")


def two_way() -> Graph:
    """a waits on b-svc (selects b), b waits on a-svc (selects a)."""
    policies = [
        PolicyNode("default", "pa", ["a"], [Dep("Service", "b-svc", "b")]),
        PolicyNode("default", "pb", ["b"], [Dep("Service", "a-svc", "a")]),
    ]
    services = {("default", "a-svc"): {"app": "a"}, ("default", "b-svc"): {"app": "b"}}
    labels = {
        ("default", "Deployment", "a"): {"app": "a", "tier": "x"},
        ("default", "Deployment", "b"): {"app": "b"},
    }
    return build_graph(policies, services, labels)


def graph_from_edges(edges: Iterable[tuple[int, int]]) -> Graph:
    nodes: set[Node] = set()
    succ: dict[Node, set[Node]] = {}
    labels = {}
    for u, v in edges:
        nu, nv = dep("ns", f"n{u}"), dep("ns", f"n{v}")
        nodes |= {nu, nv}
        succ.setdefault(nu, set()).add(nv)
        labels[(nu, nv)] = (EdgeLabel(("ns", f"p{u}"), f"to-{v}"),)
    return Graph(tuple(sorted(nodes)), {n: tuple(sorted(s)) for n, s in succ.items()}, labels)


# --------------------------------------------------------------------------- build


def test_build_policy_and_selector_edges() -> None:
    g = two_way()
    assert g.nodes == (ASVC, BSVC, A, B) or set(g.nodes) == {A, B, ASVC, BSVC}
    assert g.successors(A) == (BSVC,)
    assert g.successors(BSVC) == (B,)
    assert g.labels[(A, BSVC)] == (EdgeLabel(("default", "pa"), "b"),)
    assert g.labels[(BSVC, B)] == (SELECTS,)
    assert g.policies_of(A) == ["pa"] and g.policies_of(BSVC) == []


def test_selector_must_be_subset_of_pod_labels_and_same_namespace() -> None:
    policies = [PolicyNode("default", "p", ["web"], [Dep("Service", "db", "db")])]
    services = {("default", "db"): {"app": "db", "role": "primary"}}
    labels = {
        ("default", "StatefulSet", "db"): {"app": "db", "role": "primary", "x": "y"},
        ("default", "Deployment", "db-replica"): {"app": "db", "role": "replica"},
        ("other", "StatefulSet", "db"): {"app": "db", "role": "primary"},
    }
    g = build_graph(policies, services, labels)
    assert g.successors(svc("default", "db")) == (Node("default", "StatefulSet", "db"),)


def test_selectorless_or_missing_service_is_a_leaf() -> None:
    policies = [
        PolicyNode("default", "p", ["web"], [Dep("Service", "ext", "ext"), Dep("Service", "gone", "g")])
    ]
    g = build_graph(policies, {("default", "ext"): {}}, {("default", "Deployment", "x"): {}})
    assert g.successors(svc("default", "ext")) == ()
    assert g.successors(svc("default", "gone")) == ()
    assert dep("default", "x") not in g.nodes  # workloads no one reaches stay out


def test_api_leaves_and_workload_deps() -> None:
    deps = [
        Dep("Job", "migrate", "migrate"),
        Dep("Secret", "creds", "creds"),
        Dep("ConfigMap", "cfg", "cfg"),
        Dep("Certificate.cert-manager.io", "tls", "tls"),
        Dep("StatefulSet", "db", "db"),
    ]
    g = build_graph([PolicyNode("default", "p", ["web"], deps)], {}, {})
    web = dep("default", "web")
    assert {n.kind for n in g.successors(web)} == {
        "Job",
        "Secret",
        "ConfigMap",
        "Certificate.cert-manager.io",
        "StatefulSet",
    }
    assert find_cycles(g) == []


def test_several_targets_and_cross_namespace_dep() -> None:
    p = PolicyNode("app", "p", ["web", "api"], [Dep("Service", "db", "db", namespace="data")])
    g = build_graph([p], {("data", "db"): {"app": "db"}}, {("data", "StatefulSet", "db"): {"app": "db"}})
    assert g.successors(dep("app", "web")) == (svc("data", "db"),)
    assert g.successors(dep("app", "api")) == (svc("data", "db"),)
    assert g.successors(svc("data", "db")) == (Node("data", "StatefulSet", "db"),)


def test_build_is_deterministic() -> None:
    g1 = two_way()
    g2 = two_way()
    assert g1 == g2 and to_text(g1) == to_text(g2) and to_dot(g1) == to_dot(g2)


# --------------------------------------------------------------------------- cycles


def test_two_way_cycle_and_policy_message() -> None:
    g = two_way()
    cycles = find_cycles(g)
    assert cycles == [[A, BSVC, B, ASVC]]  # starts at its smallest node (Deployment < Service)
    assert cycle_for_policy(g, cycles, "default", "pa") == (
        "deployment/a -> service/b-svc -> deployment/b -> service/a-svc -> deployment/a"
    )
    assert cycle_for_policy(g, cycles, "default", "pb") == (
        "deployment/b -> service/a-svc -> deployment/a -> service/b-svc -> deployment/b"
    )
    assert cycle_for_policy(g, cycles, "default", "nobody") is None
    assert set(cycles_by_policy(g, cycles)) == {("default", "pa"), ("default", "pb")}
    assert DEPENDENCY_CYCLE == "DependencyCycle"


def test_self_cycle_through_own_service() -> None:
    # the app waits on its own Service: its pods never become endpoints
    g = build_graph(
        [PolicyNode("default", "p", ["app"], [Dep("Service", "app", "self")])],
        {("default", "app"): {"app": "app"}},
        {("default", "Deployment", "app"): {"app": "app"}},
    )
    cycles = find_cycles(g)
    assert cycles == [[dep("default", "app"), svc("default", "app")]]
    assert cycle_for_policy(g, cycles, "default", "p") == "deployment/app -> service/app -> deployment/app"


def test_workload_precondition_on_itself_is_a_self_loop() -> None:
    g = build_graph([PolicyNode("default", "p", ["app"], [Dep("Deployment", "app", "me")])], {}, {})
    assert find_cycles(g) == [[dep("default", "app")]]
    assert cycle_for_policy(g, find_cycles(g), "default", "p") == "deployment/app -> deployment/app"


def test_cross_namespace_cycle_labels_other_namespace() -> None:
    ps = [
        PolicyNode("x", "px", ["a"], [Dep("Deployment", "b", "b", namespace="y")]),
        PolicyNode("y", "py", ["b"], [Dep("Deployment", "a", "a", namespace="x")]),
    ]
    g = build_graph(ps, {}, {})
    assert (
        cycle_for_policy(g, find_cycles(g), "x", "px") == "deployment/a -> deployment/b (y) -> deployment/a"
    )


def test_limit_bounds_the_output() -> None:
    complete = graph_from_edges((u, v) for u in range(7) for v in range(7) if u != v)
    assert len(find_cycles(complete, limit=10)) == 10
    assert find_cycles(complete, limit=10) == find_cycles(complete, limit=10)


def test_format_cycle() -> None:
    assert format_cycle([]) == ""
    assert format_cycle([A, BSVC]) == "deployment/a -> service/b-svc -> deployment/a"


def brute_force_cycles(edges: set[tuple[int, int]], n: int) -> set[tuple[int, ...]]:
    """Every elementary cycle, as the tuple of its nodes from its smallest one: walk all simple
    paths from each start through larger nodes only."""
    succ: dict[int, list[int]] = {i: sorted(v for u, v in edges if u == i) for i in range(n)}
    out: set[tuple[int, ...]] = set()
    for s in range(n):
        todo = [[s]]
        while todo:
            path = todo.pop()
            for nxt in succ[path[-1]]:
                if nxt == s:
                    out.add(tuple(path))
                elif nxt > s and nxt not in path:
                    todo.append([*path, nxt])
    return out


edge_sets = st.integers(min_value=1, max_value=7).flatmap(
    lambda n: st.tuples(
        st.just(n), st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=20)
    )
)


@settings(max_examples=150, deadline=None)
@given(edge_sets)
def test_find_cycles_agrees_with_brute_force(case: tuple[int, set[tuple[int, int]]]) -> None:
    n, edges = case
    g = graph_from_edges(edges)
    cycles = find_cycles(g, limit=10_000)
    # node names n0..n6 sort like their numbers
    got = [tuple(int(node.name[1:]) for node in cyc) for cyc in cycles]
    assert len(got) == len(set(got))  # each elementary cycle once
    assert set(got) == brute_force_cycles(edges, n)
    for cyc in cycles:
        assert cyc[0] == min(cyc)  # starts at its smallest node
        assert len(set(cyc)) == len(cyc)
        assert all(cyc[(i + 1) % len(cyc)] in g.successors(cyc[i]) for i in range(len(cyc)))
    assert [len(c) for c in cycles] == sorted(len(c) for c in cycles)


@settings(max_examples=80, deadline=None)
@given(st.sets(st.tuples(st.integers(0, 8), st.integers(0, 8)).filter(lambda e: e[0] < e[1]), max_size=25))
def test_acyclic_graphs_report_none(edges: set[tuple[int, int]]) -> None:
    g = graph_from_edges(edges)
    assert find_cycles(g) == []
    assert cycles_by_policy(g, find_cycles(g)) == {}
    text = to_text(g)
    assert "[cycle]" not in text
    # every edge appears in the tree printout under its source (as a line, maybe "(see above)")
    assert text.count("── ") == len(edges)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.lists(st.sampled_from("abcd"), max_size=3)),
        max_size=4,
        unique_by=lambda p: p[0],
    )
)
def test_random_policies_each_cycle_is_a_real_path(spec: list[tuple[str, list[str]]]) -> None:
    # policy on deployment X waits on service X-svc... of the listed deployments
    policies = [
        PolicyNode("ns", f"p-{t}", [t], [Dep("Service", f"{d}-svc", f"w-{d}") for d in ds]) for t, ds in spec
    ]
    services = {("ns", f"{d}-svc"): {"app": d} for d in "abcd"}
    labels = {("ns", "Deployment", d): {"app": d} for d in "abcd"}
    g = build_graph(policies, services, labels)
    cycles = find_cycles(g)
    waits = {t: set(ds) for t, ds in spec}
    deployment_cycles = {tuple(n.name for n in c if n.kind == "Deployment") for c in cycles}
    assert deployment_cycles == {
        tuple(c)
        for c in (
            [chr(ord("a") + i) for i in cyc]
            for cyc in brute_force_cycles(
                {(ord(t) - 97, ord(d) - 97) for t, ds in waits.items() for d in ds}, 4
            )
        )
    }
    for (_ns, name), message in cycles_by_policy(g, cycles).items():
        assert message.startswith(f"deployment/{name[2:]} -> service/")
        assert message.endswith(f"-> deployment/{name[2:]}")


# --------------------------------------------------------------------------- printouts


def test_blocked_edges_from_status() -> None:
    g = two_way()
    blocked = blocked_edges(g, [("default", "pa", "b"), ("default", "pb", "nope")])
    assert blocked == {(A, BSVC)}


def test_to_text_tree_with_blocked_and_cycle() -> None:
    g = two_way()
    text = to_text(g, blocked_edges(g, [("default", "pa", "b")]))
    assert text == (
        "deployment/a (policy pa)\n"
        "└── b: service/b-svc [blocked]\n"
        "    └── deployment/b (policy pb)\n"
        "        └── a: service/a-svc\n"
        "            └── deployment/a (policy pa) [cycle]\n"
    )


def test_to_text_roots_shared_subtrees_and_leaves() -> None:
    ps = [
        PolicyNode("default", "web", ["web"], [Dep("Service", "db", "db"), Dep("Job", "migrate", "migrate")]),
        PolicyNode("default", "api", ["api"], [Dep("Service", "db", "db")]),
        PolicyNode("default", "db", ["db"], [Dep("Secret", "creds", "creds")]),
    ]
    g = build_graph(ps, {("default", "db"): {"app": "db"}}, {("default", "Deployment", "db"): {"app": "db"}})
    text = to_text(g, blocked_edges(g, [("default", "web", "migrate")]))
    assert text == (
        "deployment/api (policy api)\n"
        "└── db: service/db\n"
        "    └── deployment/db (policy db)\n"
        "        └── creds: secret/creds\n"
        "\n"
        "deployment/web (policy web)\n"
        "├── migrate: job/migrate [blocked]\n"
        "└── db: service/db (see above)\n"
    )


def test_to_text_multi_namespace_headers_and_empty() -> None:
    ps = [
        PolicyNode("x", "p", ["a"], [Dep("Service", "s", "s", namespace="y")]),
        PolicyNode("y", "q", ["b"], [Dep("Secret", "k", "k")]),
    ]
    text = to_text(build_graph(ps, {}, {}))
    assert text == (
        "# namespace x\n"
        "deployment/a (policy p)\n"
        "└── s: service/s (y)\n"
        "\n"
        "# namespace y\n"
        "deployment/b (policy q)\n"
        "└── k: secret/k\n"
    )
    assert to_text(build_graph([], {}, {})) == ""


def test_to_dot() -> None:
    g = two_way()
    dot = to_dot(g, blocked_edges(g, [("default", "pa", "b")]), find_cycles(g))
    assert dot.startswith("digraph depgate {\n")
    assert dot.endswith("}\n")
    assert (
        '"default/Deployment/a" -> "default/Service/b-svc" [label="b", color=red, fontcolor=red, penwidth=2];'
        in dot
    )
    assert (
        '"default/Service/b-svc" -> "default/Deployment/b" [style=dashed, color=orange, penwidth=2];' in dot
    )
    assert '"default/Deployment/a" [label="deployment/a", shape=box];' in dot
    assert '"default/Service/a-svc" [label="service/a-svc", shape=ellipse];' in dot
    assert 'label="namespace default";' in dot
    g2 = build_graph([PolicyNode("d", "p", ["w"], [Dep("Secret", 'we"ird', "k")])], {}, {})
    assert '"d/Secret/we\\"ird" [label="secret/we\\"ird", shape=note];' in to_dot(g2)


# --------------------------------------------------------------------------- raw objects


def test_service_for_host() -> None:
    services = {("default", "db"), ("data", "pg")}
    assert service_for_host("db", "default", services) == ("default", "db")
    assert service_for_host("pg.data", "default", services) == ("data", "pg")
    assert service_for_host("pg.data.svc", "default", services) == ("data", "pg")
    assert service_for_host("PG.data.svc.cluster.local.", "default", services) == ("data", "pg")
    assert service_for_host("pg.data.svc.example.org", "default", services) is None
    assert service_for_host("db", "other", services) is None  # no such Service
    assert service_for_host("example.com", "default", services) is None
    assert service_for_host("10.0.0.1", "default", {("default", "10.0.0.1")}) is None
    assert service_for_host("", "default", services) is None


def policy(ns: str, name: str, spec: dict[str, object]) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


TCP = [{"name": "db", "tcp": {"host": "db", "port": 1}}]


def test_dependencies_of_every_precondition_type() -> None:
    services = {("default", "db"), ("default", "cache"), ("data", "pg"), ("default", "api")}
    pres = [
        {"name": "db", "tcp": {"host": "db", "port": 5432}},
        {"name": "cache", "redis": {"host": "cache.default.svc", "port": 6379}},
        {"name": "pg", "http": {"url": "http://pg.data:8080/healthz"}},
        {"name": "ext", "http": {"url": "https://example.com/"}},
        {"name": "dns", "dns": {"name": "api"}},
        {"name": "model", "download": {"url": "http://api/model.bin", "sha256": "0" * 64, "path": "m"}},
        {"name": "ep", "service": {"name": "db"}},
        {"name": "migrate", "job": {"name": "migrate"}},
        {"name": "creds", "secret": {"name": "creds", "keys": ["password"]}},
        {"name": "cfg", "configMap": {"name": "cfg", "keys": []}},
        {"name": "ss", "workload": {"kind": "StatefulSet", "name": "db"}},
        {"name": "dp", "workload": {"kind": "Deployment", "name": "other"}},
        {
            "name": "cert",
            "resource": {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "name": "tls"},
        },
        {"name": "pod", "resource": {"apiVersion": "v1", "kind": "Pod", "name": "x"}},
        {"name": "cmd", "command": {"image": "busybox", "command": ["true"]}},
    ]
    parsed = parse_policy(policy("default", "p", {"workloadRef": {"name": "web"}, "preconditions": pres}))
    assert dependencies(parsed, "default", services) == [
        Dep("Service", "db", "db", "default"),
        Dep("Service", "cache", "cache", "default"),
        Dep("Service", "pg", "pg", namespace="data"),
        Dep("Service", "api", "dns", "default"),
        Dep("Service", "api", "model", "default"),
        Dep("Service", "db", "ep", "default"),
        Dep("Job", "migrate", "migrate", "default"),
        Dep("Secret", "creds", "creds", "default"),
        Dep("ConfigMap", "cfg", "cfg", "default"),
        Dep("StatefulSet", "db", "ss", "default"),
        Dep("Deployment", "other", "dp", "default"),
        Dep("Certificate.cert-manager.io", "tls", "cert", "default"),
        Dep("Pod", "x", "pod", "default"),
    ]
    # without the Services, network preconditions name nothing: what the operator watches
    keys = {d.key("default") for d in dependencies(parsed, "default")}
    assert keys == {
        ("Service", "default", "db"),
        ("Job", "default", "migrate"),
        ("Secret", "default", "creds"),
        ("ConfigMap", "default", "cfg"),
        ("StatefulSet", "default", "db"),
        ("Deployment", "default", "other"),
        ("Certificate.cert-manager.io", "default", "tls"),
        ("Pod", "default", "x"),
    }


def test_policy_node_targets_and_blocked_from_status() -> None:
    deployments = {
        ("default", "Deployment", "web"): {"tier": "app"},
        ("default", "Deployment", "api"): {"tier": "app"},
        ("default", "Deployment", "db"): {"tier": "data"},
        ("default", "StatefulSet", "queue"): {"tier": "app"},  # not a kind the selector names
        ("other", "Deployment", "x"): {"tier": "app"},
    }
    obj = {**policy("default", "p", {"selector": {"matchLabels": {"tier": "app"}}, "preconditions": TCP}),
           "status": {"blocking": ["db"]}}
    node = policy_node(parse_policy(obj), deployments, {("default", "db")})
    assert (node.namespace, node.name, list(node.targets)) == ("default", "p", [("Deployment", "api"),
                                                                               ("Deployment", "web")])
    both = {**obj, "spec": {**obj["spec"], "selector": {"matchLabels": {"tier": "app"},
                                                        "kinds": ["StatefulSet", "Deployment"]}}}
    assert [t[1] for t in policy_node(parse_policy(both), deployments, set()).targets] == ["api", "web", "queue"]
    assert list(node.deps) == [Dep("Service", "db", "db", "default")]
    assert blocked_from_status(obj) == [("default", "p", "db")]
    ref = policy("n", "q", {"workloadRef": {"name": "app"}, "preconditions": TCP})
    assert list(policy_node(parse_policy(ref), {}, set()).targets) == [("Deployment", "app")]
    assert blocked_from_status(ref) == []
    made = {"metadata": {"name": "made"}, "spec": {"template": {"spec": {"containers": []}}}}
    tmpl = policy("n", "t", {"template": made, "preconditions": TCP})
    assert list(policy_node(parse_policy(tmpl), {}, set()).targets) == [("Deployment", "made")]


def test_a_workload_another_live_policys_claim_holds_is_not_a_target_of_the_loser() -> None:
    """Issue 16, item 8: the policy that lost a Conflict draws no edge from the workload; a deleted
    policy's claim is stale and counts for nothing."""
    labels = {("default", "Deployment", "web"): {"tier": "app"}}
    winner = parse_policy(policy("default", "a", {"workloadRef": {"name": "web"}, "preconditions": TCP}))
    loser = parse_policy(policy("default", "b", {"workloadRef": {"name": "web"}, "preconditions": TCP}))
    claims = {("default", "Deployment", "web"): "a"}
    nodes = {n.name: list(n.targets) for n in policy_nodes([winner, loser], labels, set(), claims)}
    assert nodes == {"a": [("Deployment", "web")], "b": []}
    stale = {("default", "Deployment", "web"): "gone"}
    assert [list(n.targets) for n in policy_nodes([loser], labels, set(), stale)] == [[("Deployment", "web")]]


def test_selector_edges_use_the_policy_selector_expressions() -> None:
    deployments = {("ns", "Deployment", "a"): {"env": "prod", "tier": "app"},
                   ("ns", "Deployment", "b"): {"env": "dev", "tier": "app"},
                   ("ns", "Deployment", "c"): {"env": "prod"}}
    selector = {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]},
                                     {"key": "tier", "operator": "Exists"}]}
    node = policy_node(parse_policy(policy("ns", "p", {"selector": selector, "preconditions": TCP})),
                       deployments, set())
    assert list(node.targets) == [("Deployment", "a")]


# --------------------------------------------------------------------------- depgate graph (CLI)


def live_two_way() -> graph_cli.Live:
    def deployment(name: str) -> dict[str, object]:
        return {
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"template": {"metadata": {"labels": {"app": name}}}},
            "kind": "Deployment",
        }

    def service(name: str, app: str) -> dict[str, object]:
        return {"metadata": {"name": name, "namespace": "shop"}, "spec": {"selector": {"app": app}}}

    def policy(name: str, target: str, host: str) -> dict[str, object]:
        return {
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "workloadRef": {"name": target},
                "preconditions": [{"name": "peer", "tcp": {"host": host, "port": 80}}],
            },
            "status": {"blocking": ["peer"]},
        }

    return graph_cli.Live(
        policies=[policy("pa", "a", "b-svc"), policy("pb", "b", "a-svc.shop.svc")],
        services=[service("a-svc", "a"), service("b-svc", "b")],
        workloads=[deployment("a"), deployment("b")],
    )


def test_cli_text_marks_blocked_and_lists_cycles(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str | None] = []

    def fake(namespace: str | None, context: str | None = None) -> graph_cli.Live:
        seen.append(namespace)
        return live_two_way()

    monkeypatch.setattr(graph_cli, "list_live", fake)
    assert graph_cli.main(["-A"]) == 0
    out = capsys.readouterr().out
    assert seen == [None]
    assert out == (
        "deployment/a (policy pa)\n"
        "└── peer: service/b-svc [blocked]\n"
        "    └── deployment/b (policy pb)\n"
        "        └── peer: service/a-svc [blocked]\n"
        "            └── deployment/a (policy pa) [cycle]\n"
        "\n"
        "cycles (pods on them cannot start from cold):\n"
        "  deployment/a -> service/b-svc -> deployment/b -> service/a-svc -> deployment/a\n"
    )


def test_cli_dot_and_namespace(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str | None] = []

    def fake(namespace: str | None, context: str | None = None) -> graph_cli.Live:
        seen.append(namespace)
        return live_two_way()

    monkeypatch.setattr(graph_cli, "list_live", fake)
    monkeypatch.setattr(graph_cli, "current_namespace", lambda context=None: "from-context")
    assert graph_cli.main(["-n", "shop", "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph depgate {")
    assert graph_cli.main([]) == 0
    assert seen == ["shop", "from-context"]


def test_cli_empty_and_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(graph_cli, "list_live", lambda ns, context=None: graph_cli.Live())
    assert graph_cli.main(["-A"]) == 0
    assert capsys.readouterr().out == "no DependencyPolicies found\n"

    class NotFound(Exception):
        status, reason = 404, "Not Found"

    def boom(ns: str | None, context: str | None = None) -> graph_cli.Live:
        raise NotFound()

    monkeypatch.setattr(graph_cli, "list_live", boom)
    assert graph_cli.main(["-A"]) == 1
    assert "404 Not Found (is the DependencyPolicy CRD installed?)" in capsys.readouterr().err
    assert graph_cli.main(["-A", "-n", "x"]) == 2
    assert graph_cli.main(["--help"]) == 0


def test_cli_module_imports_no_kubernetes() -> None:
    code = "import sys, depgate.graph_cli; sys.exit('kubernetes' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(graph_cli.__file__).parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_a_long_chain_is_walked_without_recursion_and_its_one_cycle_found() -> None:
    # 1,500 nodes in a row (deeper than Python's recursion limit): acyclic, then closed into one ring
    n = 1500
    chain = {(i, i + 1) for i in range(n - 1)}
    assert find_cycles(graph_from_edges(chain)) == []
    ring = find_cycles(graph_from_edges(chain | {(n - 1, 0)}))
    assert len(ring) == 1 and len(ring[0]) == n


def test_template_policy_without_a_name_targets_the_deployment_named_after_it() -> None:
    """A template-mode policy without template.metadata.name creates a Deployment named after the
    policy (render.template_name): a cycle through that Deployment is reported."""
    live = live_two_way()
    template_policy = {
        "apiVersion": "depgate.io/v1alpha1",
        "kind": "DependencyPolicy",
        "metadata": {"name": "a", "namespace": "shop"},
        "spec": {
            "template": {
                "spec": {
                    "selector": {"matchLabels": {"app": "a"}},
                    "template": {
                        "metadata": {"labels": {"app": "a"}},
                        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
                    },
                }
            },
            "preconditions": [{"name": "peer", "tcp": {"host": "b-svc", "port": 80}}],
        },
    }
    live.policies = [template_policy, live.policies[1]]
    graph, _ = graph_cli.graph_from_live(live)
    assert graph.policies_of(dep("shop", "a")) == ["a"]
    assert [format_cycle(c) for c in find_cycles(graph)] == [
        "deployment/a -> service/b-svc -> deployment/b -> service/a-svc -> deployment/a"
    ]


def test_cli_skips_and_lists_policies_that_do_not_parse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    live = live_two_way()
    broken = {"metadata": {"name": "broken", "namespace": "shop"}, "spec": {"workloadRef": {"name": "a"}}}
    live.policies.append(broken)
    monkeypatch.setattr(graph_cli, "list_live", lambda ns, context=None: live)
    assert graph_cli.main(["-A"]) == 0
    captured = capsys.readouterr()
    assert "broken" not in captured.out and "cycles (pods on them cannot start from cold)" in captured.out
    assert captured.err == (
        "depgate graph: skipped DependencyPolicy shop/broken: invalid spec: spec.preconditions: required\n"
    )
    got = graph_cli.live_graph(live)
    assert [(r.namespace, r.name) for r in got.skipped] == [("shop", "broken")]


def test_list_live_lists_policies_services_and_every_workload_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    class Custom:
        def __init__(self, api: object) -> None:
            pass

        def list_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str) -> dict[str, object]:
            calls.append((group, version, ns, plural))
            return {"items": [{"metadata": {"name": f"{plural}-1", "namespace": ns}}]}

        def list_cluster_custom_object(self, group: str, version: str, plural: str) -> dict[str, object]:
            calls.append((group, version, plural))
            return {"items": [{"metadata": {"name": f"{plural}-1", "namespace": "x"}}]}

    class Core:
        def __init__(self, api: object) -> None:
            pass

        def list_namespaced_service(self, ns: str) -> dict[str, object]:
            calls.append(("services", ns))
            return {"items": [{"metadata": {"name": "s"}}]}

        def list_service_for_all_namespaces(self) -> dict[str, object]:
            calls.append(("services",))
            return {"items": []}

    class Config:
        ConfigException = Exception

        @staticmethod
        def load_kube_config(context: str | None = None) -> None:
            pass

    client = types.SimpleNamespace(ApiClient=lambda: object(), CoreV1Api=Core, CustomObjectsApi=Custom)
    monkeypatch.setitem(sys.modules, "kubernetes", types.SimpleNamespace(client=client, config=Config))
    live = graph_cli.list_live("shop")
    assert calls == [
        ("depgate.io", "v1alpha1", "shop", "dependencypolicies"),
        ("services", "shop"),
        ("apps", "v1", "shop", "deployments"),
        ("apps", "v1", "shop", "statefulsets"),
        ("apps", "v1", "shop", "daemonsets"),
        ("batch", "v1", "shop", "cronjobs"),
        ("batch", "v1", "shop", "jobs"),
    ]
    assert [w["kind"] for w in live.workloads] == ["Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job"]
    assert [p["metadata"]["name"] for p in live.policies] == ["dependencypolicies-1"]
    calls.clear()
    everywhere = graph_cli.list_live(None)
    assert calls[0] == ("depgate.io", "v1alpha1", "dependencypolicies") and calls[1] == ("services",)
    assert [w["metadata"]["name"] for w in everywhere.workloads] == [
        "deployments-1", "statefulsets-1", "daemonsets-1", "cronjobs-1", "jobs-1"]
