"""handlers.PodGates, the I/O of depgate.gates, against an in-memory stand-in of the Kube adapter: what
it reads and writes for each decision (the real plane: tests/integration/test_pod_gates.py)."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import jsonpatch
import pytest

from depgate import gates, handlers, spec
from depgate.kube import Changed
from depgate.settings import Settings

NS = "shop"
GATE = gates.GATE


class Kube:
    """get / items / json_patch / delete over a dict of objects, with every call recorded."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for o in objs}
        self.calls: list[tuple[str, ...]] = []
        self.policies: list[dict[str, Any]] = []
        self.changed_once = False

    def get(self, api_version: str, kind: str, ns: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        obj = self.objs.get((kind, name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, api_version: str, kind: str, ns: str | None, **_: Any) -> list[dict[str, Any]]:
        self.calls.append(("list", kind))
        return copy.deepcopy(self.policies)

    def json_patch(self, api_version: str, kind: str, ns: str | None, name: str,
                   ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        self.calls.append(("patch", kind, name))
        if self.changed_once:
            self.changed_once = False
            raise Changed("the pod changed")
        obj = self.objs.get((kind, name))
        if obj is None:
            return None
        try:
            new = jsonpatch.apply_patch(obj, ops)
        except jsonpatch.JsonPatchTestFailed as e:
            raise Changed(str(e)) from e
        new["metadata"]["resourceVersion"] = str(int(new["metadata"]["resourceVersion"]) + 1)
        self.objs[(kind, name)] = new
        return copy.deepcopy(new)

    def delete(self, api_version: str, kind: str, ns: str | None, name: str, *, uid: str) -> bool:
        self.calls.append(("delete", kind, name))
        return self.objs.pop((kind, name), None) is not None


def pod(name: str = "app-7f9c-x1", owner: str = "ReplicaSet", owner_name: str = "app-7f9c",
        init: tuple[str, ...] = (), labels: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "server", "image": "node:20"}],
                            "schedulingGates": [{"name": GATE}]}
    if init:
        body["initContainers"] = [{"name": n, "image": "x"} for n in init]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "5",
                         "labels": labels or {"app": "app", "pod-template-hash": "7f9c", gates.GATED_LABEL: "true"},
                         "ownerReferences": [{"kind": owner, "name": owner_name, "controller": True}]},
            "spec": body}


def deployment(name: str = "app") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS,
                                                                        "labels": {"app": name}},
            "spec": {"template": {"spec": {"containers": [{"name": "server", "image": "node:20"}]}}}}


def raw_policy(name: str = "app", kind: str = "Deployment", target: str = "app") -> dict[str, Any]:
    return {"apiVersion": spec.API_VERSION, "kind": spec.KIND,
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "3"},
            "spec": {"workloadRef": {"kind": kind, "name": target},
                     "preconditions": [{"name": "db", "tcp": {"host": "db", "port": 5432}}]}}


@pytest.fixture
def setup():
    def make(*objs: dict[str, Any], memory: tuple[dict[str, Any], ...] = ()) -> tuple[handlers.PodGates, Kube]:
        op = handlers.Operator(Settings(authority="off", gate_grace_seconds=0.0))
        kube = Kube(*objs)
        op._reconciler = SimpleNamespace(kube=kube)  # type: ignore[assignment]
        for p in memory:
            op.wiring.policy_seen((NS, p["metadata"]["name"]), p)
        return handlers.PodGates(op), kube
    return make


def settle(pg: handlers.PodGates, p: dict[str, Any]) -> tuple[str, Any]:
    pg.pods.seen(p, 0.0)
    [(uid, entry)] = pg.pods.due(0.0)
    [outcome] = pg.settle([(uid, entry)])
    return outcome


def test_no_policy_anywhere_the_api_servers_list_agrees_and_only_the_gate_is_removed(setup) -> None:
    p = pod()
    pg, kube = setup(p, deployment())
    what, (cause, answer) = settle(pg, p)
    assert (what, cause) == ("lifted", "grace")
    assert ("list", "DependencyPolicy") in kube.calls  # not the watch's word alone
    assert answer["spec"]["schedulingGates"] == [] and answer["spec"]["containers"] == p["spec"]["containers"]


def test_a_policy_the_watch_has_not_delivered_yet_holds_the_pod(setup) -> None:
    p = pod()
    pg, kube = setup(p, deployment())
    kube.policies = [raw_policy()]
    what, decision = settle(pg, p)
    assert what == "decided" and isinstance(decision, gates.Hold) and "DependencyPolicy app" in decision.reason
    assert not [c for c in kube.calls if c[0] in ("patch", "delete")]


def test_a_policy_in_memory_holds_it_without_listing_and_reads_the_workload_once_per_round(setup) -> None:
    a, b = pod("app-7f9c-a"), pod("app-7f9c-b")
    pg, kube = setup(a, b, deployment(), memory=(raw_policy(),))
    pg.pods.seen(a, 0.0)
    pg.pods.seen(b, 0.0)
    outcomes = pg.settle(pg.pods.due(0.0))
    assert [w for w, _ in outcomes] == ["decided", "decided"]
    assert kube.calls == [("get", "Deployment", "app")]


def test_a_rendered_pod_is_lifted_without_reading_anything_but_itself(setup) -> None:
    p = pod(init=("depgate-db",))
    pg, kube = setup(p, memory=(raw_policy(),))
    what, (cause, _) = settle(pg, p)
    assert (what, cause) == ("lifted", "rendered") and kube.calls == [("patch", "Pod", p["metadata"]["name"])]


def test_a_pod_that_changed_meanwhile_is_read_again_and_lifted(setup) -> None:
    p = pod()
    pg, kube = setup(p, deployment())
    kube.changed_once = True
    what, (_, answer) = settle(pg, p)
    assert what == "lifted" and answer["spec"]["schedulingGates"] == []
    assert [c[0] for c in kube.calls].count("patch") == 2 and ("get", "Pod", p["metadata"]["name"]) in kube.calls


def test_a_pod_gone_meanwhile_is_simply_forgotten(setup) -> None:
    p = pod()
    pg, _ = setup(deployment())  # the pod is not there any more
    what, (_, answer) = settle(pg, p)
    assert what == "lifted" and answer is None


def test_a_cronjobs_policy_holds_the_pod_of_a_job_it_made(setup) -> None:
    p = pod("report-1-x", owner="Job", owner_name="report-1")
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "report-1", "namespace": NS,
                        "ownerReferences": [{"kind": "CronJob", "name": "report", "controller": True}]},
           "spec": {"template": {"spec": {"containers": []}}}}
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report", "namespace": NS},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}}
    pg, _ = setup(p, job, cron, memory=(raw_policy("report", "CronJob", "report"),))
    what, decision = settle(pg, p)
    assert what == "decided" and isinstance(decision, gates.Hold)
    assert "job report-1 was created before DependencyPolicy report" in decision.reason


def test_a_held_statefulset_pod_is_deleted_once_its_update_revision_is_rendered(setup) -> None:
    p = pod("db-0", owner="StatefulSet", owner_name="db",
            labels={"app": "db", gates.REVISION_LABEL: "db-old", gates.POD_INDEX_LABEL: "0"})
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": NS, "generation": 2},
           "spec": {"template": {"spec": {"initContainers": [{"name": "depgate-db"}], "containers": []}},
                    "updateStrategy": {"type": "RollingUpdate"}},
           "status": {"observedGeneration": 2, "updateRevision": "db-new"}}
    pg, kube = setup(p, sts, memory=(raw_policy("db", "StatefulSet", "db"),))
    assert settle(pg, p) == ("replaced", None)
    assert ("delete", "Pod", "db-0") in kube.calls


def test_an_api_error_is_the_pods_failure_not_the_rounds(setup) -> None:
    p, q = pod("app-7f9c-a"), pod("app-7f9c-b", init=("depgate-db",))
    pg, kube = setup(p, q, memory=(raw_policy(),))

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the API server is away")

    kube.get = broken  # type: ignore[method-assign]
    pg.pods.seen(p, 0.0)
    pg.pods.seen(q, 0.0)
    outcomes = dict(zip(["a", "b"], pg.settle(pg.pods.due(0.0)), strict=True))
    assert outcomes["a"][0] == "failed" and isinstance(outcomes["a"][1], RuntimeError)
    assert outcomes["b"][0] == "lifted"  # rendered: needs no read
