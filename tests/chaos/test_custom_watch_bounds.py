"""Bounded resources for `resource` preconditions (issue 12): custom resources are watched through
one shared watch per (apiVersion, kind, namespace), on the operator's event loop, not a thread and a
connection per object; watches are capped per operator (--max-custom-watches) and per policy
(--max-custom-kinds-per-policy), and a precondition over a cap says TooManyWatches until room frees.

Each test runs its own operator (flags), so they live here, in the fault suite (tests/chaos runs
before tests/integration, whose session operator must not run meanwhile).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from depgate.dev.plane import wait_crd_served
from tests.chaos import support
from tests.chaos.blackhole import proxied_kubeconfig

GROUP = "bounds.depgate.io"
KINDS = ("Widget", "Gizmo", "Doohickey")

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.{group}}}
spec:
  group: {group}
  names: {{kind: {kind}, plural: {plural}, singular: {singular}}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"""  # no status subresource: a test writes status.conditions with the object, in one request

READ = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: depgate-read-bounds-kinds
  labels: {{depgate.io/aggregate-to-operator: "true"}}
rules:
- {{apiGroups: [{GROUP}], resources: [{", ".join(k.lower() + "s" for k in KINDS)}], verbs: [get, list, watch]}}
"""


@pytest.fixture
def kinds(plane, operator_kubeconfig) -> Iterator[None]:
    for k in KINDS:
        plane.run_kubectl("apply", "--server-side", "-f", "-", input=CRD.format(
            group=GROUP, kind=k, plural=k.lower() + "s", singular=k.lower()))
        wait_crd_served(plane.kubectl, plane.kubeconfig, f"crd/{k.lower()}s.{GROUP}")
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=READ)  # granted the documented way
    if "DEPGATE_TEST_AS_ADMIN" not in os.environ:
        sa = "system:serviceaccount:depgate-system:depgate"
        for k in KINDS:
            support.poll(lambda k=k: [] if plane.run_kubectl(
                "auth", "can-i", "watch", f"{k.lower()}s.{GROUP}", f"--as={sa}", check=False).stdout.strip() == "yes"
                else ["not yet"], 30, f"the operator's ClusterRole to aggregate the right to watch {k}s")
    yield
    plane.run_kubectl("delete", "clusterrole", "depgate-read-bounds-kinds", check=False)


def path(ns: str, kind: str, name: str = "") -> str:
    p = f"/apis/{GROUP}/v1/namespaces/{ns}/{kind.lower()}s"
    return f"{p}/{name}" if name else p


def obj(kind: str, name: str, ready: bool) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def set_ready(api: support.Api, ns: str, kind: str, name: str, ready: bool) -> None:
    api.merge_patch(path(ns, kind, name), {"status": obj(kind, name, ready)["status"]})


def resource(pname: str, kind: str, name: str) -> dict[str, Any]:
    return {"name": pname, "resource": {"apiVersion": f"{GROUP}/v1", "kind": kind, "name": name,
                                        "condition": "Ready"}}


def entries(pol: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {str(e.get("name")): e for e in ((pol or {}).get("status") or {}).get("preconditions") or []}


def proc_figures(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        threads = next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def healthy(op: Any) -> None:
    assert op.proc.poll() is None, f"the operator exited ({op.proc.returncode}):\n{op.log_text()[-3000:]}"
    assert "Traceback" not in op.log_text(), op.log_text()[-6000:]


POLICIES, PER_POLICY = 16, 32  # the issue's 16 policies, each at the 32-precondition maximum


@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_512_resource_preconditions_cost_one_watch_not_a_thread_each(kinds, api, namespace, operators, report):
    ns = namespace
    policies, deploys, cms = support.DP.format(ns=ns), support.DEPLOY.format(ns=ns), support.CM.format(ns=ns)
    api.create(cms, support.config_map("cm", {"a": "1"}))
    for j in range(POLICIES):
        api.create(deploys, support.deployment(f"app-{j}"))
        for i in range(PER_POLICY):
            api.create(path(ns, "Widget"), obj("Widget", f"w-{j}-{i}", ready=False))
    op = operators.start("--resync-seconds=3600")  # every flip below must come through a watch
    pid = op.proc.pid

    # Warm up with the same 16 policies on a ConfigMap (the reconcile threads, Kopf's watches,
    # connection pools exist), then measure: the baseline before any resource precondition.
    for j in range(POLICIES):
        api.apply(f"{policies}/p-{j}", support.policy(
            f"p-{j}", {"workloadRef": {"name": f"app-{j}"}}, [{"name": "cm", "configMap": {"name": "cm"}}]),
            "chaos-test")
    support.poll(lambda: [f"p-{j}" for j in range(POLICIES)
                          if entries(api.get(f"{policies}/p-{j}")).get("cm", {}).get("state") != "Satisfied"],
                 120, "16 warm-up policies Satisfied")
    support.settled(lambda: op.counter("depgate_reconciles_total"))
    before = proc_figures(pid)

    for j in range(POLICIES):
        api.apply(f"{policies}/p-{j}", support.policy(
            f"p-{j}", {"workloadRef": {"name": f"app-{j}"}},
            [resource(f"r{i}", "Widget", f"w-{j}-{i}") for i in range(PER_POLICY)]), "chaos-test")

    def all_states(want: str, reason: str | None = None) -> list[str]:
        problems = []
        for j in range(POLICIES):
            es = entries(api.get(f"{policies}/p-{j}"))
            bad = [n for n in (f"r{i}" for i in range(PER_POLICY))
                   if es.get(n, {}).get("state") != want or (reason and es.get(n, {}).get("reason") != reason)]
            if bad:
                problems.append(f"p-{j}: {len(bad)} not {want} (e.g. {bad[0]}: {es.get(bad[0])})")
        return problems

    support.poll(lambda: all_states("Blocking", "ConditionNotMet"), 180, "512 preconditions Blocking")
    support.settled(lambda: op.counter("depgate_reconciles_total"))
    during = proc_figures(pid)
    report(f"threads {before[0]} -> {during[0]}, open fds {before[1]} -> {during[1]} "
           f"(before the {POLICIES}x{PER_POLICY} resource preconditions, with them)")
    assert during[0] - before[0] < 5, f"threads {before[0]} -> {during[0]} with the resource preconditions"
    assert during[1] - before[1] < 10, f"open fds {before[1]} -> {during[1]} with the resource preconditions"
    assert op.counter("depgate_custom_watches") == 1, "one shared watch for every Widget"

    # every policy still follows its own objects: all Ready -> Satisfied; one back to False -> Blocking
    for j in range(POLICIES):
        for i in range(PER_POLICY):
            set_ready(api, ns, "Widget", f"w-{j}-{i}", True)
    support.poll(lambda: all_states("Satisfied"), 180, "512 preconditions Satisfied")
    for j in range(POLICIES):
        set_ready(api, ns, "Widget", f"w-{j}-{j}", False)

    def one_blocking() -> list[str]:
        problems = []
        for j in range(POLICIES):
            es = entries(api.get(f"{policies}/p-{j}"))
            blocking = sorted(n for n, e in es.items() if e.get("state") != "Satisfied")
            if blocking != [f"r{j}"]:
                problems.append(f"p-{j}: not Satisfied: {blocking[:5]}")
        return problems

    support.poll(one_blocking, 120, "each policy Blocking on exactly the Widget set back to Ready=False")
    after = proc_figures(pid)
    report(f"after the flips: threads {after[0]}, open fds {after[1]}")
    assert after[0] - before[0] < 5, f"threads {before[0]} -> {after[0]} after the flips"
    assert after[1] - before[1] < 10, f"open fds {before[1]} -> {after[1]} after the flips"

    # the watch stops with its last interested policy
    for j in range(POLICIES):
        api.apply(f"{policies}/p-{j}", support.policy(
            f"p-{j}", {"workloadRef": {"name": f"app-{j}"}}, [{"name": "cm", "configMap": {"name": "cm"}}]),
            "chaos-test")
    support.poll(lambda: [] if op.counter("depgate_custom_watches") == 0
                 else [f"depgate_custom_watches is {op.counter('depgate_custom_watches')}"], 60,
                 "the shared watch to stop once no policy names a Widget")
    healthy(op)


def too_many(e: dict[str, Any], flag: str) -> bool:
    return e.get("state") == "Blocking" and e.get("reason") == "TooManyWatches" and flag in str(e.get("message"))


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_watches_over_a_cap_say_too_many_watches_and_get_one_when_room_frees(kinds, api, namespace, operators,
                                                                             report):
    ns = namespace
    policies, deploys = support.DP.format(ns=ns), support.DEPLOY.format(ns=ns)
    for k in KINDS:
        api.create(path(ns, k), obj(k, "x", ready=False))
    for d in ("app-wide", "app-late"):
        api.create(deploys, support.deployment(d))
    op = operators.start("--resync-seconds=3600", "--max-custom-watches=2", "--max-custom-kinds-per-policy=2")

    # "wide" names three kinds: the first two are watched, the third is over the per-policy cap
    api.apply(f"{policies}/wide", support.policy("wide", {"workloadRef": {"name": "app-wide"}},
                                                 [resource(k.lower(), k, "x") for k in KINDS]), "chaos-test")

    def wide_state() -> list[str]:
        es = entries(api.get(f"{policies}/wide"))
        ok = (es.get("widget", {}).get("reason") == "ConditionNotMet"
              and es.get("gizmo", {}).get("reason") == "ConditionNotMet"
              and too_many(es.get("doohickey", {}), "--max-custom-kinds-per-policy"))
        return [] if ok else [str(es)]

    support.poll(wide_state, 60, "wide: two kinds watched, the third TooManyWatches (per policy)")
    msg = entries(api.get(f"{policies}/wide"))["doohickey"]["message"]
    assert "Ready" in msg, f"the refused precondition is still judged, and says what it read: {msg}"
    assert op.counter("depgate_custom_watches") == 2

    # "late" names the third kind: the operator's two watches are taken
    api.apply(f"{policies}/late", support.policy("late", {"workloadRef": {"name": "app-late"}},
                                                 [resource("doohickey", "Doohickey", "x")]), "chaos-test")
    support.poll(lambda: [] if too_many(entries(api.get(f"{policies}/late")).get("doohickey", {}),
                                        "--max-custom-watches")
                 else [str(entries(api.get(f"{policies}/late")))], 60, "late: TooManyWatches (per operator)")
    refused = entries(api.get(f"{policies}/late"))["doohickey"]["message"]
    report(f"per operator: {refused}")

    # room frees up: "wide" goes away, "late" gets its watch (the resync is an hour away)
    api.delete(f"{policies}/wide")
    support.poll(lambda: [] if entries(api.get(f"{policies}/late")).get("doohickey", {}).get("reason")
                 == "ConditionNotMet" else [str(entries(api.get(f"{policies}/late")))], 60,
                 "late: TooManyWatches clears once wide's watches are gone")
    set_ready(api, ns, "Doohickey", "x", True)
    support.poll(lambda: [] if entries(api.get(f"{policies}/late")).get("doohickey", {}).get("state")
                 == "Satisfied" else [str(entries(api.get(f"{policies}/late")))], 30,
                 "late: Satisfied through its (now) watched Doohickey")
    assert op.counter("depgate_custom_watches") == 1
    healthy(op)


BOUND = 6.0  # the inactivity bound the silent-watch test runs the operator with (the default is 70 s)



@pytest.mark.chaos
def test_a_silent_custom_watch_is_restarted_and_counted(kinds, proxy, api, namespace, operators, tmp_path, report):
    ns = namespace
    policies = support.DP.format(ns=ns)
    api.create(path(ns, "Widget"), obj("Widget", "w", ready=False))
    api.create(support.DEPLOY.format(ns=ns), support.deployment("app"))
    api.apply(f"{policies}/p", support.policy("p", {"workloadRef": {"name": "app"}}, [resource("w", "Widget", "w")]),
              "chaos-test")
    operators.kubeconfig = proxied_kubeconfig(operators.kubeconfig, proxy.port, tmp_path)
    op = operators.start("--resync-seconds=3600", f"--watch-inactivity-seconds={BOUND}")

    def state() -> tuple[Any, Any]:
        e = entries(api.get(f"{policies}/p")).get("w", {})
        return e.get("state"), e.get("reason")

    support.poll(lambda: [] if state() == ("Blocking", "ConditionNotMet") else [str(state())], 60, "Blocking")
    # the shared Widget watch must be up (through the proxy) before the black-hole: it starts after the
    # policy's first reconcile, which can itself take a request timeout; a change it delivers proves it
    def watch_live() -> list[str]:
        before = op.counter("depgate_reconciles_total")
        api.merge_patch(path(ns, "Widget", "w"), {"metadata": {"annotations": {"probe": str(before)}}})
        try:
            support.poll(lambda: [] if op.counter("depgate_reconciles_total") > before else ["no"], 5,
                         "a reconcile woken by the Widget watch")
        except AssertionError:
            return ["the Widget watch delivered no change within 5 s"]
        return []

    support.poll(lambda: [] if op.counter("depgate_custom_watches") == 1 else ["no watch yet"], 60,
                 "the shared Widget watch")
    support.poll(watch_live, 60, "the Widget watch delivering changes")
    silent_before = op.counter('depgate_watch_restarts_total{reason="silent"}')
    holed = proxy.blackhole()
    set_ready(api, ns, "Widget", "w", True)  # unheard on the connection the watch holds
    took = support.poll(lambda: [] if state() == ("Satisfied", "ConditionMet") else [str(state())], BOUND + 90,
                        "Satisfied after the Widget changed during the silence")
    report(f"{holed} connections black-holed; Satisfied {took:.1f}s later (inactivity bound {BOUND:.0f}s)")
    assert op.counter('depgate_watch_restarts_total{reason="silent"}') > silent_before
    assert f"the watch of Widget ({GROUP}/v1) in {ns} delivered nothing, not even a bookmark" in op.log_text()
    set_ready(api, ns, "Widget", "w", False)  # and the restarted watch hears the next change
    support.poll(lambda: [] if state() == ("Blocking", "ConditionNotMet") else [str(state())], 30,
                 "Blocking again through the restarted watch")
    healthy(op)
