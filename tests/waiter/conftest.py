"""The waiter fixture: `waiter(*args)` starts `python -m depgate wait ...` and stops it afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from waiter_loopback import Waiter


@pytest.fixture
def waiter(tmp_path: Path) -> Iterator[Callable[..., Waiter]]:
    started: list[Waiter] = []

    def start(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None) -> Waiter:
        w = Waiter(list(args), tmp_path / f"termination-log-{len(started)}", env, prefix)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
