"""SIGKILL the operator at random moments while a burst of policies is created, changed and deleted,
and restart it each time. A level-triggered reconcile must leave every Deployment exactly as
depgate.render says (our init containers, in order, once each; the user's fields untouched) and
every finalizer removed: after deleting every policy, each Deployment is the user's original again.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from tests.chaos import support
from tests.chaos.conftest import Operators, sized

PRECONDITIONS: dict[str, dict[str, Any]] = {
    "db": {"tcp": {"host": "db", "port": 5432}},
    "cache": {"redis": {"host": "cache"}},
    "api": {"http": {"url": "http://api:8080/healthz", "expectStatus": [200, 204]}},
    "resolver": {"dns": {"name": "api.example.internal"}},
    "settings": {"configMap": {"name": "settings", "keys": ["a"]}},  # judged by the operator (+ Role)
    "await": {"command": {"fromContainer": "server", "command": ["npm", "run", "await-redis"]}},
    "model": {"download": {"url": "https://files.example/model.bin", "sha256": "0" * 63 + "a",
                           "path": "models/model.bin"}},  # the shared volume and its mounts
}


def make_policy(i: int, rng: random.Random) -> dict[str, Any]:
    chosen = rng.sample(sorted(PRECONDITIONS), rng.randint(1, 4))
    pres = [{"name": n, **PRECONDITIONS[n]} for n in chosen]
    target = {"selector": {"matchLabels": {"sel": f"app-{i}"}}} if i % 5 == 4 else {"workloadRef": {"name": f"app-{i}"}}
    return support.policy(f"p-{i}", target, pres, placement=rng.choice(["BeforeExisting", "AfterExisting"]))


def make_deployment(i: int) -> dict[str, Any]:
    own = [[], ["own-init"], ["own-init", "migrate"]][i % 3]
    return support.deployment(f"app-{i}", labels={"sel": f"app-{i}"}, init=own,
                              replicas=1 if i % 10 == 0 else 0, extra_volume=i % 4 == 0)


def rolled_out(dep: dict[str, Any]) -> bool:
    st = dep.get("status") or {}
    want = dep["spec"]["replicas"]
    return st.get("observedGeneration") == dep["metadata"]["generation"] and (st.get("replicas") or 0) == want \
        and (st.get("updatedReplicas") or 0) == want and (st.get("readyReplicas") or 0) == want


def pending(api: support.Api, ns: str) -> int:
    """Policies whose status has not caught up with their spec (work the operator still had)."""
    return sum(not support.caught_up(p) for p in api.items(support.DP.format(ns=ns)))


def kill_during(ops: Operators, api: support.Api, ns: str, rng: random.Random, kills: int,
                burst: threading.Thread, log: list[dict[str, Any]]) -> float:
    """Kill the running operator `kills` times at random moments (restarting it each time) while
    `burst` runs; the time of the last restart."""
    last = time.monotonic()
    for _ in range(kills):
        window = 2.5 + len(api.items(support.DP.format(ns=ns))) / 100  # more policies, a longer restart
        time.sleep(rng.uniform(0.1, window))
        writes = ops.current.counter("depgate_api_writes_total")
        ops.kill()
        log.append({"writes": writes, "pending": pending(api, ns), "burst": burst.is_alive()})
        ops.start()
        last = time.monotonic()
    return last


@sized()
def test_sigkill_during_a_burst_converges_and_releases(sizes, api, namespace, operators, rng, report):
    ns, n = namespace, sizes.policies
    deploys, policies = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns)
    for i in range(n):
        api.create(deploys, make_deployment(i))
    original = api.by_name(deploys)
    assert len(original) == n

    wanted = {f"p-{i}": make_policy(i, rng) for i in range(n)}
    changed = {}  # a second generation for a quarter of them
    for i in range(1, n, 4):
        while (pol := make_policy(i, rng))["spec"] == wanted[f"p-{i}"]["spec"]:
            pass
        changed[f"p-{i}"] = pol
    kills_apply = sizes.kills - sizes.kills // 3
    kills_delete = sizes.kills // 3
    pace = kills_apply * 1.3 / (n + len(changed))  # spread the burst over the kill window

    def create_and_change() -> None:
        for name, pol in wanted.items():  # server-side apply: the change below replaces the whole spec
            api.apply(f"{policies}/{name}", pol, "chaos-test")
            time.sleep(pace)
        for name, pol in changed.items():
            api.apply(f"{policies}/{name}", pol, "chaos-test")
            time.sleep(pace)

    log: list[dict[str, Any]] = []
    ops = operators
    ops.start()
    burst = threading.Thread(target=create_and_change, name="burst")
    burst.start()
    last_restart = kill_during(ops, api, ns, rng, kills_apply, burst, log)
    burst.join()

    def converged() -> list[str]:
        return support.rendered_problems(api, ns, [(f"p-{i}", f"app-{i}") for i in range(n)], original)

    took = support.poll(converged, sizes.converge_timeout, "every Deployment to carry its policy's init containers")
    converge_after_restart = time.monotonic() - last_restart
    last = ops.current
    reconciled = (last.counter("depgate_reconciles_total"), last.counter("depgate_reconcile_duration_seconds_sum"))
    assert any(k["pending"] or k["burst"] for k in log), f"no kill hit pending work (not mid-burst): {log}"
    for pname in changed:
        pol = api.get(f"{policies}/{pname}")
        assert pol is not None and pol["metadata"]["generation"] >= 2 and support.caught_up(pol)

    # Let kube-controller-manager finish the rollouts our applies started first: a Deployment written by
    # someone else while its policy is deleted is test_second_writer.py's
    # test_a_second_writer_does_not_keep_a_released_deployment_gated.
    support.poll(lambda: [d for d, dep in api.by_name(deploys).items() if not rolled_out(dep)],
                 sizes.converge_timeout, "the rollouts to finish")

    # delete every policy, killing the operator meanwhile: no finalizer may stay
    def delete_all() -> None:
        for name in wanted:
            api.delete(f"{policies}/{name}")
            time.sleep(max(kills_delete, 1) * 1.3 / n)

    deleter = threading.Thread(target=delete_all, name="deleter")
    deleter.start()
    kill_during(ops, api, ns, rng, kills_delete, deleter, log)
    deleter.join()

    def released() -> list[str]:
        return support.all_released_problems(api, ns, original)

    released_in = support.poll(released, sizes.converge_timeout, "every policy gone and every Deployment original")
    assert ops.alive()
    assert not ops.tracebacks(), "\n".join(ops.tracebacks())
    for k, kill in enumerate(log, 1):
        report(f"kill {k}: after {kill['writes']:.0f} writes of that operator, {kill['pending']} policies pending, "
               f"burst {'running' if kill['burst'] else 'done'}")
    report(f"{n} policies, {sizes.kills} SIGKILLs ({kills_apply} creating/changing, {kills_delete} deleting): "
           f"converged {converge_after_restart:.1f}s after the last restart (polled {took:.1f}s; that operator "
           f"reconciled {reconciled[0]:.0f} times, {1000 * reconciled[1] / max(reconciled[0], 1):.0f} ms each on "
           f"average); "
           f"released in {released_in:.1f}s after the deletes")


class Killed(BaseException):
    """The process dies here (a SIGKILL between two requests leaves the server exactly like this)."""


@pytest.mark.chaos
def test_sigkill_between_the_two_applies_leaves_the_users_init_containers_theirs(plane, api, namespace, operators,
                                                                                 report):
    """For BeforeExisting with the user's own init containers, the reconcile applies twice
    (plan.target_writes, sent by Reconciler._send): first naming the user's entries too (to order the
    list), then ours only (to give theirs back). Until b6908cb the
    first body already carried the final depgate.io/applied hash, so after a SIGKILL between the two
    the restarted operator found nothing to do: depgate co-owned the user's init containers for good,
    and the user's own apply that dropped one was refused (422 initContainers[1].image: Required)."""
    from depgate.controller import Reconciler
    from depgate.kube import Kube

    deploys, policies = support.DEPLOY.format(ns=namespace), support.DP.format(ns=namespace)
    api.apply(f"{deploys}/app", support.deployment("app", init=["own-init"]), "gitops")
    pol = api.apply(f"{policies}/p", support.policy("p", {"workloadRef": {"name": "app"}},
                                                    [{"name": "db", "tcp": {"host": "db", "port": 5432}}]), "t")
    # the operator's own reconcile, in this process, killed right after its first write
    kube = Kube.from_environment(operators.kubeconfig)
    applies: list[dict[str, Any]] = []
    real_apply = kube.apply

    def apply(body: Any, **kw: Any) -> dict[str, Any]:
        applies.append(body)
        if len(applies) == 2:
            raise Killed
        return real_apply(body, **kw)

    kube.apply = apply  # type: ignore[method-assign]
    with pytest.raises(Killed):
        Reconciler(kube, support.CONFIG).reconcile(pol)
    assert [c["name"] for c in applies[0]["spec"]["template"]["spec"]["initContainers"]] == ["depgate-db", "own-init"]

    # restarted: the real operator reconciles the policy
    operators.start()
    support.poll(lambda: support.policy_problems(api.get(f"{policies}/p"), "p"), 60, "the policy reconciled")
    dep = api.request("GET", f"{deploys}/app", query=[("showManagedFields", "true")])
    assert support.init_names(dep) == ["depgate-db", "own-init"]
    ours = [m for m in dep["metadata"]["managedFields"] if m["manager"] == "depgate"]
    owned = [k for m in ours for k in m["fieldsV1"]["f:spec"]["f:template"]["f:spec"].get("f:initContainers", {})]
    report(f"after the restart depgate owns the init containers {owned}")
    # the user drops their own init container from the manifest they apply
    try:
        api.apply(f"{deploys}/app", support.deployment("app"), "gitops", force=False)
    except support.ApiError as e:
        report(f"the user's apply without own-init: {e.status} {e.message}")
        raise AssertionError(f"the user can no longer remove their own init container: {e.message}") from e
    assert support.init_names(api.get(f"{deploys}/app")) == ["depgate-db"]
