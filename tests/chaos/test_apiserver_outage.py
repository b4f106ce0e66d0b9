"""kube-apiserver stops mid-run (right after a burst of changes the operator may not have seen yet),
etcd is compacted while it is down, so every watch resumed from an old resourceVersion gets
410 Gone; then more changes. No update may be lost: every policy's status reflects the final
state of its ConfigMap, every Deployment carries its policy's final init containers — long before
the operator's periodic resync (set to an hour here) could paper over a lost event.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from depgate import verdicts
from tests.chaos import support
from tests.chaos.conftest import sized


def make_policy(i: int, generation: int) -> dict[str, Any]:
    """Policy i's spec at a given edit: the ConfigMap check always, a TCP check on some edits."""
    pres: list[dict[str, Any]] = [{"name": "settings", "configMap": {"name": f"cm-{i}", "keys": ["a"]}}]
    if (i + generation) % 2:
        pres.insert(0, {"name": "db", "tcp": {"host": "db", "port": 5432 + generation}})
    placement = ["BeforeExisting", "AfterExisting"][(i + generation) % 2]
    return support.policy(f"p-{i}", {"workloadRef": {"name": f"app-{i}"}}, pres, placement=placement)


def entry(pol: dict[str, Any], name: str) -> dict[str, Any]:
    return next((e for e in (pol.get("status") or {}).get("preconditions") or [] if e.get("name") == name), {})


def watch_from(api: support.Api, path: str, rv: str) -> list[dict[str, Any]]:
    """The events of a watch resumed from `rv` (the server ends it within 2 s)."""
    raw = api.client.call_api(*api.client.param_serialize(
        "GET", path, query_params=[("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", "2")],
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])[:3],
        _request_timeout=15)
    body = raw.read().decode()
    if raw.status >= 400:
        return [{"type": "HTTP", "object": {"code": raw.status, "message": body[:300]}}]
    return [json.loads(line) for line in body.splitlines() if line.strip()]


@sized()
def test_apiserver_outage_and_compaction_lose_no_update(sizes, api, namespace, operators, plane_dir, report):
    from depgate.dev import plane as devplane

    ns, n = namespace, sizes.outage_policies
    deploys, policies, cms = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns), support.CM.format(ns=ns)
    for i in range(n):
        api.create(deploys, support.deployment(f"app-{i}", init=["own-init"] if i % 3 == 0 else []))
        api.apply(f"{cms}/cm-{i}", support.config_map(f"cm-{i}", {"a": "1"} if i % 2 else {"b": "1"}), "chaos-test")
    original = api.by_name(deploys)
    for i in range(n):
        api.apply(f"{policies}/p-{i}", make_policy(i, 1), "chaos-test")
    ops = operators
    ops.start("--resync-seconds=3600")

    def converged() -> list[str]:
        live_pols, live_deps, live_cms = api.by_name(policies), api.by_name(deploys), api.by_name(cms)
        problems: list[str] = []
        for i in range(n):
            pol = live_pols.get(f"p-{i}")
            problems += support.policy_problems(pol, f"p-{i}")
            if pol is None:
                continue
            want = verdicts.judge_keys("ConfigMap", f"cm-{i}", live_cms.get(f"cm-{i}"), ["a"])
            have = entry(pol, "settings")
            if (have.get("state"), have.get("reason")) != (want.state, want.reason):
                problems.append(f"p-{i}: settings {have.get('state')}/{have.get('reason')}, "
                                f"cm-{i} says {want.state}/{want.reason}")
            problems += support.deployment_problems(live_deps.get(f"app-{i}"),
                                                    support.expected(pol, original[f"app-{i}"]), original[f"app-{i}"])
        return problems

    support.poll(converged, sizes.converge_timeout, "the first convergence")
    before = api.request("GET", cms)["metadata"]["resourceVersion"]

    # burst A, and the API server goes down at once: some of these events may never reach the operator
    for i in range(0, n, 2):
        api.apply(f"{cms}/cm-{i}", support.config_map(f"cm-{i}", {"a": "2"} if i % 4 == 0 else {"c": "2"}),
                  "chaos-test")
    for i in range(1, n, 4):
        api.apply(f"{policies}/p-{i}", make_policy(i, 2), "chaos-test")
    etcd = support.etcd_url(plane_dir)
    compacted: list[int] = []
    compactor = threading.Timer(sizes.outage_seconds / 2, lambda: compacted.append(support.etcd_compact(etcd)))
    t_stop = time.monotonic()
    compactor.start()
    devplane.restart(plane_dir, "kube-apiserver", sizes.outage_seconds)  # from this thread (parent-death signal)
    t_ready = time.monotonic()
    compactor.join()
    assert compacted, "etcd was not compacted during the outage"
    probe = watch_from(api, cms, before)
    assert probe and probe[0]["type"] in ("ERROR", "HTTP") and probe[0]["object"].get("code") == 410, \
        f"a watch resumed from before the outage did not get 410 Gone: {probe[:2]}"

    # burst B, while the operator's watches are still finding their way back
    for i in range(0, n, 3):
        api.apply(f"{cms}/cm-{i}", support.config_map(f"cm-{i}", {"a": "3"} if i % 2 else {"d": "3"}), "chaos-test")
    api.delete(f"{cms}/cm-{n - 1}")
    for i in range(3, n, 4):
        api.apply(f"{policies}/p-{i}", make_policy(i, 3), "chaos-test")

    took = support.poll(converged, sizes.converge_timeout, "convergence after the outage, with no update lost")
    assert ops.alive(), f"the operator exited during the outage:\n{ops.current.log_text()[-3000:]}"
    tracebacks = ops.tracebacks()
    report(f"{n} policies; kube-apiserver down {t_ready - t_stop:.1f}s, etcd compacted at revision {compacted[0]} "
           f"(a watch from before got {probe[0]['object'].get('code')}); converged {time.monotonic() - t_ready:.1f}s "
           f"after the API server was back ({took:.1f}s after the last change); "
           f"{len(tracebacks)} operator log(s) with a Traceback")
    assert not tracebacks, "\n".join(tracebacks)


@pytest.mark.chaos
def test_a_change_undone_right_after_an_outage_is_not_lost(api, namespace, operators, plane_dir, report):
    """The lost update the outage test above hits now and then, made likely: right after the outage every
    ConfigMap flips back as soon as its policy's status shows the first flip."""
    from depgate.dev import plane as devplane

    ns, n, rounds = namespace, 20, 3
    deploys, policies, cms = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns), support.CM.format(ns=ns)
    for i in range(n):
        api.create(deploys, support.deployment(f"app-{i}"))
        api.apply(f"{cms}/cm-{i}", support.config_map(f"cm-{i}", {"b": "0"}), "chaos-test")
        api.apply(f"{policies}/p-{i}", support.policy(f"p-{i}", {"workloadRef": {"name": f"app-{i}"}}, [
            {"name": "settings", "configMap": {"name": f"cm-{i}", "keys": ["a"]}}]), "chaos-test")
    ops = operators
    ops.start("--resync-seconds=3600")

    def states() -> dict[str, str | None]:
        return {name: entry(p, "settings").get("state") for name, p in api.by_name(policies).items()}

    def blocking() -> list[str]:
        return [f"{k}: {v} (cm-{k[2:]} has no key a)" for k, v in states().items() if v != "Blocking"]

    for r in range(rounds):  # until an update is lost (most rounds lose one)
        support.poll(blocking, 60, "every policy Blocking")
        support.settled(lambda: ops.current.counter("depgate_reconciles_total"), quiet=1.0)
        for i in range(n):  # the key arrives, and the API server goes down at once
            api.apply(f"{cms}/cm-{i}", support.config_map(f"cm-{i}", {"a": str(r)}), "chaos-test")
        devplane.restart(plane_dir, "kube-apiserver", 5)
        flipped: set[str] = set()

        def flip_back(r: int = r, flipped: set[str] = flipped) -> list[str]:
            for name, state in states().items():  # a policy shows Satisfied: its key goes again
                if state == "Satisfied" and name not in flipped:
                    api.apply(f"{cms}/cm-{name[2:]}", support.config_map(f"cm-{name[2:]}", {"b": str(r)}),
                              "chaos-test")
                    flipped.add(name)
            return [f"{n - len(flipped)} policies not Satisfied yet"] if len(flipped) < n else []

        support.poll(flip_back, 60, "every policy Satisfied once after the outage", interval=0.02)
        try:
            support.poll(blocking, 20, "every policy Blocking again")
        except AssertionError as e:
            report(f"round {r + 1}: {e}")
            raise
