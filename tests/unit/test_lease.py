"""depgate.lease: who leads, when a standby takes over, and the fence (plain data, times passed in)."""

from __future__ import annotations

from typing import Any

import pytest

from depgate import lease
from depgate.lease import Create, Elector, Update, Wait

NS = "depgate-system"


def stored(body: dict[str, Any], rv: int) -> dict[str, Any]:
    """The Lease as the API server returns it after a write."""
    return {**body, "metadata": {**body["metadata"], "resourceVersion": str(rv)}}


def test_a_first_replica_creates_the_lease_and_writes_only_until_its_renew_deadline() -> None:
    a = Elector("a_1", "depgate-leader", NS)
    step = a.step(None, 100.0, 1_700_000_000.0)
    assert isinstance(step, Create)
    spec = step.body["spec"]
    assert spec["holderIdentity"] == "a_1" and spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    assert spec["renewTime"] == "2023-11-14T22:13:20.000000Z"
    assert not a.may_write(100.0)  # not before the API server said yes
    assert a.renewed(100.0, stored(step.body, 1)) and a.leading
    assert a.may_write(109.9) and not a.may_write(110.0)  # renew deadline 10 s after the renewal was sent
    assert a.write_budget(105.0) == pytest.approx(9.0)  # the lease could expire at 115 for others: less 1 s
    assert a.write_budget(110.0) == 0.0 and a.deadline_passed(110.0)
    again = a.step(stored(step.body, 1), 102.0, 1_700_000_002.0)  # our own: renew, conditional on its version
    assert isinstance(again, Update) and not again.takeover and again.body["metadata"]["resourceVersion"] == "1"
    assert not a.renewed(102.0, stored(again.body, 2))  # still the leader, not a new one
    assert a.may_write(111.9)


def test_a_standby_waits_a_whole_lease_from_when_it_saw_the_record_then_takes_it_over() -> None:
    a, b = Elector("a_1", "l", NS), Elector("b_1", "l", NS)
    held = stored(a.step(None, 0.0, 1000.0).body, 5)  # type: ignore[union-attr]
    w = b.step(held, 50.0, 9999.0)  # b's wall clock is far off: it is never compared
    assert isinstance(w, Wait) and w.holder == "a_1" and w.expires_in == 15.0
    assert isinstance(b.step(held, 64.9, 0.0), Wait)
    renewed = stored({**held, "spec": {**held["spec"], "renewTime": "later"}}, 6)
    w = b.step(renewed, 60.0, 0.0)  # a renewed: counted again from now
    assert isinstance(w, Wait) and w.expires_in == 15.0
    assert isinstance(b.step(renewed, 74.9, 0.0), Wait)
    take = b.step(renewed, 75.0, 0.0)
    assert isinstance(take, Update) and take.takeover
    assert take.body["spec"]["holderIdentity"] == "b_1" and take.body["spec"]["leaseTransitions"] == 1
    assert take.body["metadata"]["resourceVersion"] == "6"  # of two candidates only one write succeeds
    assert b.renewed(75.0, stored(take.body, 7)) and b.transitions == 1


def test_a_released_lease_is_taken_at_once_and_only_its_holder_releases_it() -> None:
    a, b = Elector("a_1", "l", NS), Elector("b_1", "l", NS)
    body = a.step(None, 0.0, 0.0).body  # type: ignore[union-attr]
    a.renewed(0.0, stored(body, 1))
    assert b.release_body(stored(body, 1), 1.0) is None
    released = a.release_body(stored(body, 1), 1.0)
    assert released is not None and released["spec"]["holderIdentity"] == "" and \
        released["spec"]["leaseDurationSeconds"] == 1
    take = b.step(stored(released, 2), 3.0, 3.0)
    assert isinstance(take, Update) and take.takeover and take.body["spec"]["leaseTransitions"] == 1


def test_a_leader_that_finds_another_holder_stops_leading_and_a_restarted_process_is_not_its_predecessor() -> None:
    a = Elector("a_1", "l", NS)
    body = a.step(None, 0.0, 0.0).body  # type: ignore[union-attr]
    a.renewed(0.0, stored(body, 1))
    other = stored({**body, "spec": {**body["spec"], "holderIdentity": "b_1"}}, 2)
    assert isinstance(a.step(other, 1.0, 1.0), Wait) and not a.leading and not a.may_write(1.0)
    restarted = Elector("a_2", "l", NS)  # the same pod after a restart: a new identity
    assert isinstance(restarted.step(stored(body, 1), 0.0, 0.0), Wait)


def test_shards_have_their_own_lease_and_an_odd_record_reads_as_none() -> None:
    # (retry < renew deadline < lease is depgate.settings' rule: test_settings refuses the flags that break it)
    assert lease.lease_name("depgate-leader", "") == "depgate-leader"
    assert lease.lease_name("depgate-leader", "b") == "depgate-leader-b"
    assert lease.shard_of({"metadata": {"labels": {lease.SHARD_LABEL: "b"}}}) == "b"
    assert lease.shard_of({"metadata": {"labels": {lease.SHARD_LABEL: 3}}}) == ""  # not text: the default shard
    assert lease.shard_of({"metadata": {}}) == ""
    odd = lease.Record.of({"spec": {"leaseDurationSeconds": -4, "leaseTransitions": True}})
    assert (odd.duration, odd.transitions, odd.holder) == (0.0, 0, "")
