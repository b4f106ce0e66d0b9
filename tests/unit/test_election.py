"""The election's I/O side (depgate.election) when the Lease cannot be read: the process never leads, says
so again every minute rather than once, and reports each failure (the operator counts them in
depgate_lease_errors_total)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import time
from typing import Any

import pytest

from depgate import lease
from depgate.election import Election


class Refusing:
    """A client whose every Lease read fails as on a cluster without the operator's namespace."""

    def __init__(self) -> None:
        self.gets = 0

    def get(self, *_: Any, **__: Any) -> None:
        self.gets += 1
        raise RuntimeError('namespaces "depgate-system" not found')


def test_a_lease_that_cannot_be_read_is_counted_and_warned_again_every_minute(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("depgate.election.time.monotonic", lambda: clock[0])
    elected: list[str] = []
    errors: list[str] = []
    kube = Refusing()
    elector = lease.Elector("me_1", "depgate", "depgate-system", lease.Timing(15, 10, 2))
    election = Election(kube, elector, on_elected=lambda: elected.append("elected"),  # type: ignore[arg-type]
                        on_lost=lambda: None, on_error=lambda: errors.append("error"))
    caplog.set_level(logging.WARNING, logger="depgate.election")

    for _ in range(31):  # 60 s of attempts: the first warns, the 31st (60 s later) warns again
        election.attempt()
        clock[0] += 2.0  # a retry period
    warnings = [r.getMessage() for r in caplog.records if "could not read or write Lease" in r.getMessage()]
    assert kube.gets == 31 and len(errors) == 31
    assert len(warnings) == 2, warnings
    assert "31 attempts in a row" in warnings[1] and "not found" in warnings[1]
    assert not elected and not election.leading and election.failures == 31


class Store:
    """One Lease in memory, written as the API server does: resourceVersion checked on update."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.writes = 0

    def get(self, *_: Any, **__: Any) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def create(self, body: dict[str, Any], **__: Any) -> dict[str, Any]:
        assert self.lease is None
        return self._store(body, 1)

    def replace(self, body: dict[str, Any], **__: Any) -> dict[str, Any]:
        assert self.lease is not None
        live = self.lease["metadata"]["resourceVersion"]
        assert body["metadata"]["resourceVersion"] == live, "a write not conditional on the Lease read"
        return self._store(body, int(live) + 1)

    def _store(self, body: dict[str, Any], rv: int) -> dict[str, Any]:
        self.writes += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(rv)
        return copy.deepcopy(self.lease)


def test_the_leader_renews_while_the_event_loops_threads_are_all_busy() -> None:
    """A burst of reconciles fills asyncio's default executor (asyncio.to_thread) for longer than the renew
    deadline: the election, in a thread of its own, still renews, and the leader never loses its lease.
    (With the Lease requests in asyncio.to_thread, the only replica of a 500-policy burst lost it.)"""
    store, events = Store(), []
    elector = lease.Elector("me_1", "depgate", "depgate-system", lease.Timing(1.5, 1.0, 0.2))
    election = Election(store, elector, on_elected=lambda: events.append("elected"),  # type: ignore[arg-type]
                        on_lost=lambda: events.append("lost"))

    async def busy_loop() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        election.start(loop)
        # both threads of the default executor blocked for 3 s, three renew deadlines, with more queued
        hogs = [asyncio.to_thread(time.sleep, 1.5) for _ in range(4)]
        await asyncio.gather(*hogs)
        await asyncio.to_thread(election.stop)

    asyncio.run(busy_loop())
    assert events == ["elected"], events
    assert store.writes >= 10  # a renewal every retry period (0.2 s) through the 3 s the executor was busy
