"""depgate.graph_cli's pure parts: objects from files, the Mermaid flowchart. The pictures Graphviz draws:
tests/integration/test_graph_picture.py."""

from __future__ import annotations

from depgate import graph as g
from depgate.graph_cli import FORMATS, _parser, live_from_documents, to_mermaid

SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "a"}, "spec": {}}
DEP = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "a"}}
STS = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "b"}}
POL = {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": "p"}}
CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "a"}}


def test_objects_from_files_by_kind_and_namespace():
    live = live_from_documents([SVC, DEP, STS, POL, CM], None)
    assert (live.services, live.workloads, live.policies) == ([SVC], [DEP, STS], [POL])
    only_a = live_from_documents([SVC, DEP, STS, POL, CM], "a")
    assert (only_a.services, only_a.workloads, only_a.policies) == ([SVC], [DEP], [])
    assert live_from_documents([POL], "default").policies == [POL]  # no namespace: default, as kubectl reads it


def test_mermaid_shapes_edges_styles_and_escaping():
    web, svc, cm = g.Node("a", "Deployment", "web"), g.Node("a", "Service", 'd"b|x'), g.Node("a", "ConfigMap", "c")
    graph = g.Graph(nodes=(cm, web, svc), edges={web: (svc, cm), svc: (web,)}, labels={
        (web, svc): (g.EdgeLabel(("a", "p"), "db"),), (web, cm): (g.EdgeLabel(("a", "p"), "settings"),),
        (svc, web): (g.SELECTS,)})
    out = to_mermaid(graph, frozenset({(web, svc)}), [[web, svc]]).splitlines()
    assert out[:6] == ['flowchart LR', '  subgraph ns0["namespace a"]', '    n0>"configmap/c"]',
                       '    n1["deployment/web"]', '    n2(["service/d#quot;b#124;x"])', "  end"]
    assert out[6:] == ['  n1 -->|"db"| n2', '  n1 -->|"settings"| n0', "  n2 -.-> n1",
                       "  linkStyle 0 stroke:red,stroke-width:2px,color:red",
                       "  linkStyle 2 stroke:orange,stroke-width:2px"]


def test_output_flag_and_the_old_format_flag_are_one():
    assert _parser().parse_args(["-o", "svg"]).format == "svg"
    assert _parser().parse_args(["--format", "dot"]).format == "dot"
    assert _parser().parse_args([]).format == "text"
    assert set(FORMATS) == {"text", "dot", "svg", "png", "mermaid"}
