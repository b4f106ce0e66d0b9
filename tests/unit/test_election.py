"""The election's I/O side (depgate.election) when the Lease cannot be read: the process never leads, says
so again every minute rather than once, and reports each failure (the operator counts them in
depgate_lease_errors_total)."""

from __future__ import annotations

import asyncio
import logging
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

    async def attempts(n: int) -> None:
        for _ in range(n):
            await election.attempt()
            clock[0] += 2.0  # a retry period

    asyncio.run(attempts(31))  # 60 s of attempts: the first warns, the 31st (60 s later) warns again
    warnings = [r.getMessage() for r in caplog.records if "could not read or write Lease" in r.getMessage()]
    assert kube.gets == 31 and len(errors) == 31
    assert len(warnings) == 2, warnings
    assert "31 attempts in a row" in warnings[1] and "not found" in warnings[1]
    assert not elected and not election.leading and election.failures == 31
