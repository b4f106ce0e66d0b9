"""Two replicas and no gap (issue 18): the leader SIGKILLed at random moments of a burst, and a leader
frozen (SIGSTOP: its connection as good as black-holed) while the standby takes over. Every replica
elects on one Lease (--lease-name, the defaults' 15 s lease, 10 s renew deadline, 2 s retry)."""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time

import pytest

from tests.chaos import support
from tests.chaos.conftest import Operators, sized
from tests.chaos.test_sigkill import make_deployment, make_policy, rolled_out
from tests.conftest import Operator, Plane, stop_operator

LEASE_SECONDS = 15.0
LEADER = 'depgate_leader{shard=""}'


def leads(op: Operator) -> bool:
    try:
        return op.metrics().get(LEADER) == 1.0
    except OSError:
        return False


def start_pair(ops: Operators, lease: str) -> list[Operator]:
    first = ops.start(f"--lease-name={lease}")
    support.poll(lambda: [] if leads(first) else ["not leading"], 30, "the first replica to take the Lease")
    second = ops.start(f"--lease-name={lease}")
    return [first, second]


def failover(ops: Operators, live: list[Operator], lease: str) -> tuple[float, Operator]:
    """SIGKILL the leader (no lease handed back, as when its node dies), start a replacement (the
    Deployment's controller would make a new pod), and time from the kill to the first reconcile of the new
    leader: whichever candidate, the old standby or the replacement, sees the lease expire and wins it."""
    leader = next(op for op in live if leads(op))
    standbys = [op for op in live if op is not leader]
    for op in standbys:
        assert not leads(op) and op.counter("depgate_reconciles_total") == 0, "a standby reconciled"
    leader.proc.kill()
    leader.proc.wait(10)
    killed = time.monotonic()
    live.remove(leader)
    live.append(ops.start(f"--lease-name={lease}"))
    found: list[Operator] = []

    def new_leader() -> list[str]:
        found[:] = [op for op in live if leads(op) and op.counter("depgate_reconciles_total") > 0]
        return [] if found else ["no replica leads and reconciles yet"]

    support.poll(new_leader, LEASE_SECONDS * 3, "a new leader to reconcile", interval=0.1)
    assert len(found) == 1, "two replicas lead"
    return time.monotonic() - killed, found[0]


@sized()
def test_leader_sigkilled_during_a_burst_the_standby_takes_over_and_everything_converges(
        sizes, api, namespace, operators, rng, report):
    ns = namespace
    n, kills = (300, 10) if sizes.name == "full" else (sizes.policies, 2)  # the sizes; the fast part
    deploys, policies = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns)
    for i in range(n):
        api.create(deploys, make_deployment(i))
    original = api.by_name(deploys)
    wanted = {f"p-{i}": make_policy(i, rng) for i in range(n)}
    lease = f"depgate-ha-{rng.randrange(1 << 30)}"
    live = start_pair(operators, lease)
    pace = kills * 20.0 / n  # the burst spans the kills

    def burst() -> None:
        for name, pol in wanted.items():
            api.apply(f"{policies}/{name}", pol, "chaos-test")
            time.sleep(pace)

    t = threading.Thread(target=burst, name="burst")
    t.start()
    times: list[float] = []
    for _ in range(kills):
        time.sleep(rng.uniform(0.5, 4.0))
        took, _ = failover(operators, live, lease)
        times.append(took)
    t.join()

    def converged() -> list[str]:
        return support.rendered_problems(api, ns, [(f"p-{i}", f"app-{i}") for i in range(n)], original)

    took = support.poll(converged, sizes.converge_timeout, "every Deployment to carry its policy's init containers")
    standby = next(op for op in live if not leads(op))
    assert standby.counter("depgate_reconciles_total") == 0 and standby.counter("depgate_api_writes_total") == 0
    support.poll(lambda: [d for d, dep in api.by_name(deploys).items() if not rolled_out(dep)],
                 sizes.converge_timeout, "the rollouts to finish")
    for name in wanted:
        api.delete(f"{policies}/{name}")

    def released() -> list[str]:
        return support.all_released_problems(api, ns, original)

    released_in = support.poll(released, sizes.converge_timeout, "every policy gone and every Deployment original")
    assert not operators.tracebacks(), "\n".join(operators.tracebacks())
    p50, worst = statistics.median(times), max(times)
    report(f"{n} policies, {kills} leader SIGKILLs, 2 replicas on Lease {lease}: failover (kill -> first reconcile "
           f"of the new leader) p50 {p50:.1f}s, max {worst:.1f}s against the {LEASE_SECONDS:g}s lease "
           f"({', '.join(f'{x:.1f}' for x in times)}); converged {took:.1f}s after the burst; released in "
           f"{released_in:.1f}s")
    # the standby waits out a lease it saw renewed at most a retry period before the kill, then reads again
    assert worst < LEASE_SECONDS + 2 * 2.0 + 5.0, times


def write_requests(plane: Plane) -> float:
    """The API server's own count of depgate-shaped writes: every write to a DependencyPolicy (status and
    finalizers included) and every PATCH of a Deployment (server-side apply; kube-controller-manager
    writes a Deployment's status with PUT)."""
    text = plane.run_kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        verb = labels.split('verb="', 1)[1].split('"', 1)[0]
        resource = labels.split('resource="', 1)[1].split('"', 1)[0] if 'resource="' in labels else ""
        if (resource == "dependencypolicies" and verb in ("PATCH", "PUT", "POST", "DELETE")) or \
                (resource == "deployments" and verb == "PATCH"):
            total += float(value)
    return total


@pytest.mark.chaos
def test_a_frozen_leader_is_replaced_and_sends_no_write_after_its_renew_deadline(
        plane, api, namespace, operators, rng, report):
    """SIGSTOP the leader (it can neither renew nor write, as with a black-holed connection): the standby
    takes over once the lease runs out. Then freeze the new leader too and let the old one run again with
    work waiting for it (a policy changed while it was stopped): the API server sees no write from it."""
    ns = namespace
    deploys, policies = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns)
    for i in range(3):
        api.create(deploys, make_deployment(i))
    lease = f"depgate-ha-{rng.randrange(1 << 30)}"
    old, new = start_pair(operators, lease)
    for i in range(3):
        api.apply(f"{policies}/p-{i}", make_policy(i, rng), "chaos-test")
    support.poll(lambda: [p for p in ("p-0", "p-1", "p-2") if not support.caught_up(api.get(f"{policies}/{p}"))],
                 60, "the leader to reconcile the policies")
    old.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        support.poll(lambda: [] if leads(new) else ["standby"], LEASE_SECONDS * 3, "the standby to take over",
                     interval=0.2)
        took = time.monotonic() - stopped
        changed = make_policy(0, random.Random(1))
        changed["spec"]["preconditions"] = [{"name": "db", "tcp": {"host": "db-new", "port": 5432}}]
        api.apply(f"{policies}/p-0", changed, "chaos-test")
        support.poll(lambda: [] if support.caught_up(api.get(f"{policies}/p-0")) else ["p-0"], 60,
                     "the new leader to reconcile the change")
        new.proc.send_signal(signal.SIGSTOP)  # the new leader frozen too: any write now is the old leader's
        changed["spec"]["preconditions"] = [{"name": "db", "tcp": {"host": "db-newer", "port": 5432}}]
        api.apply(f"{policies}/p-0", changed, "chaos-test")
        before = write_requests(plane)
        old.proc.send_signal(signal.SIGCONT)  #  it wakes up past its renew deadline, with work to do
        woke = time.monotonic()
        support.poll(lambda: [] if "stopped leading" in old.log_text() else ["still leading"], 10,
                     "the old leader to notice it no longer leads")
        while time.monotonic() < woke + 6.0:  # less than a lease: it must not take the Lease back either
            time.sleep(0.5)
        after = write_requests(plane)
        assert not leads(old)
    finally:
        for op in (old, new):
            if op.proc.poll() is None:
                op.proc.send_signal(signal.SIGCONT)
    assert before > 0  # the count sees depgate's writes (the policies' status, finalizers, applies)
    assert after - before == 0, f"{after - before:.0f} writes while only the old leader ran"
    assert "stopped leading" in old.log_text()
    support.poll(lambda: [] if support.caught_up(api.get(f"{policies}/p-0")) else ["p-0"], 60,
                 "the change reconciled once the new leader runs again")
    assert not operators.tracebacks(), "\n".join(operators.tracebacks())
    report(f"leader frozen (SIGSTOP): the standby led {took:.1f}s later (lease {LEASE_SECONDS:g}s); the old leader, "
           f"woken past its renew deadline with a change waiting, sent {after - before:.0f} writes in 6s")


SHARD_LABEL = "sharding.depgate.io/key"


def reconciled_by(op: Operator, ns: str) -> set[str]:
    """The policies this process reconciled and still holds: the ones it has depgate_preconditions series for."""
    out = set()
    for key in op.metrics():
        if key.startswith("depgate_preconditions{") and f'namespace="{ns}"' in key:
            out.add(key.split('policy="', 1)[1].split('"', 1)[0])
    return out


@sized()
def test_two_shards_each_policy_is_reconciled_by_exactly_one_and_a_moved_policy_is_taken_over(
        sizes, api, namespace, operators, rng, report):
    ns = namespace
    n = 500 if sizes.name == "full" else 40  # the size; the fast part
    budget = max(120.0, n * 0.6)  # seconds for a burst or its deletion to settle
    deploys, policies = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns)
    for i in range(n):
        api.create(deploys, make_deployment(i))
    original = api.by_name(deploys)
    wanted = {f"p-{i}": make_policy(i, rng) for i in range(n)}
    for i, pol in enumerate(wanted.values()):
        if i % 2:
            pol["metadata"].setdefault("labels", {})[SHARD_LABEL] = "b"
    lease = f"depgate-shard-{rng.randrange(1 << 30)}"

    def converged() -> list[str]:
        return support.rendered_problems(api, ns, [(name, name.replace("p-", "app-")) for name in wanted], original)

    def burst(sharded: bool) -> float:
        started = time.monotonic()
        for name, pol in wanted.items():
            body = pol if sharded else {**pol, "metadata": {k: v for k, v in pol["metadata"].items() if k != "labels"}}
            api.apply(f"{policies}/{name}", body, "chaos-test")
        support.poll(converged, budget, "every Deployment to carry its policy's init containers", interval=0.5)
        return time.monotonic() - started

    def delete_all() -> None:
        for name in wanted:
            api.delete(f"{policies}/{name}")
        support.poll(lambda: sorted(api.by_name(policies)), budget, "the policies to be deleted")

    one = operators.start(f"--lease-name={lease}-one")
    alone = burst(sharded=False)  # one replica serves the default shard: no policy labelled
    delete_all()
    stop_operator(one)

    a = operators.start(f"--lease-name={lease}")
    b = operators.start(f"--lease-name={lease}", "--shard=b")
    sharded = burst(sharded=True)
    even = {f"p-{i}" for i in range(0, n, 2)}
    odd = {f"p-{i}" for i in range(1, n, 2)}
    assert reconciled_by(a, ns) == even and reconciled_by(b, ns) == odd

    moved = wanted["p-0"]  # relabelled to shard b, with a new spec: b renders it, a lets go and stays away
    moved["metadata"].setdefault("labels", {})[SHARD_LABEL] = "b"
    moved["spec"]["preconditions"] = [{"name": "db", "tcp": {"host": "db-moved", "port": 5432}}]
    api.apply(f"{policies}/p-0", moved, "chaos-test")
    support.poll(lambda: [] if "p-0" in reconciled_by(b, ns) and "p-0" not in reconciled_by(a, ns) else ["p-0"],
                 60, "shard b to take p-0 over", interval=0.2)
    support.poll(converged, 60, "p-0's change rendered by its new shard", interval=0.2)
    assert reconciled_by(a, ns) == even - {"p-0"} and reconciled_by(b, ns) == odd | {"p-0"}
    delete_all()
    released_by = [op for op in (a, b) if f"released deployment {ns}/app-0 from policy p-0" in op.log_text()]
    assert released_by == [b]  # the moved policy's deletion is its new shard's alone
    assert not operators.tracebacks(), "\n".join(operators.tracebacks())
    report(f"{n} policies over 2 shards (Leases {lease}, {lease}-b): each reconciled by exactly one "
           f"({len(even)} and {len(odd)}), burst to converged {sharded:.1f}s against {alone:.1f}s on one replica; "
           "a policy relabelled to the other shard taken over, rendered and released by it alone")
