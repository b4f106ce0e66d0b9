"""The retry loop: one attempt at a time, backoff between them, an overall deadline.

Each attempt runs in a daemon worker thread that the loop waits for at most the attempt's hard
limit: socket timeouts bound most of an attempt, but not everything (getaddrinfo has no timeout),
and --timeout must hold whatever the resolver does. An attempt that overruns is abandoned (its
late observations are dropped) and counted as Timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from depgate.waiter.backoff import Backoff, urandom_unit
from depgate.waiter.config import ConfigError
from depgate.waiter.reasons import Result, classify
from depgate.waiter.statelog import Outcome, StateLog

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; mypy knows the name
if TYPE_CHECKING:
    from dataclasses import dataclass
    from typing import Protocol
else:
    from depgate.waiter._record import dataclass

GRACE = 0.5  # how long past its own timeout an attempt may take before it is abandoned


@dataclass(frozen=True)
class Timing:
    timeout: float  # 0 = forever
    period: float
    attempt_timeout: float
    fast_window: float = 0.0  # seconds from the start during which pauses stay under 0.25 s


@dataclass
class Attempt:
    """What a check gets for one attempt."""

    timeout: float  # for each blocking operation (connect, read)
    deadline: float | None  # monotonic time of the overall deadline, None = none
    observe: Callable[[Result], None]  # report a state seen inside a long attempt (verdict)
    clock: Callable[[], float] = time.monotonic

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()


if TYPE_CHECKING:

    class Check(Protocol):
        kind: str
        target: str
        # False: the attempt may run until the overall deadline (watch, download);
        # True: it must end within the attempt timeout.
        bounded: bool

        def attempt(self, ctx: Attempt) -> Result: ...

        def cleanup(self) -> None: ...

    Runner = Callable[[Callable[[], Result], float | None], Result | None]


def run_in_thread(fn: Callable[[], Result], limit: float | None) -> Result | None:
    """Run `fn` in a daemon thread; its result, or None when it did not finish within `limit`."""
    box: list[Result] = []

    def target() -> None:
        box.append(fn())

    worker = threading.Thread(target=target, name="depgate-wait-attempt", daemon=True)
    worker.start()
    worker.join(limit)
    return box[0] if box else None


def run_inline(fn: Callable[[], Result], limit: float | None) -> Result | None:
    return fn()


class _Gate:
    """Forwards observations from the current attempt until it is abandoned."""

    def __init__(self, log: StateLog) -> None:
        self.log = log
        self.lock = threading.Lock()
        self.open = True
        self.last: Result | None = None

    def observe(self, result: Result) -> None:
        with self.lock:
            if self.open:
                self.last = result
                self.log.observe(result)

    def close(self) -> None:
        with self.lock:
            self.open = False


def run(
    check: Check,
    timing: Timing,
    log: StateLog,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = urandom_unit,
    runner: Runner = run_in_thread,
    on_progress: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Attempt until ready or the deadline. Logs state changes; never logs Ready (the caller does)."""
    start = clock()
    deadline = start + timing.timeout if timing.timeout > 0 else None
    backoff = Backoff(timing.period, rand, fast_window=timing.fast_window)
    attempts = 0
    last = Result("Timeout", "no attempt finished before the deadline")
    while True:
        remaining = None if deadline is None else deadline - clock()
        if remaining is not None and remaining <= 0:
            return Outcome(False, last, attempts, clock() - start)
        per_op = timing.attempt_timeout if remaining is None else min(timing.attempt_timeout, remaining)
        limit: float | None = remaining
        if check.bounded:
            limit = per_op + GRACE if remaining is None else min(per_op + GRACE, remaining)
        gate = _Gate(log)
        ctx = Attempt(per_op, deadline, gate.observe, clock)
        fatal: list[ConfigError] = []

        def one(ctx: Attempt = ctx, fatal: list[ConfigError] = fatal) -> Result:
            try:
                return check.attempt(ctx)
            except ConfigError as exc:  # e.g. --dest not writable: retrying cannot help
                fatal.append(exc)
                return Result("Protocol", str(exc))
            except Exception as exc:  # every other failure is a reason to retry
                return classify(exc)

        result = runner(one, limit)
        gate.close()
        if fatal:
            raise fatal[0]
        attempts += 1
        if result is None:
            if gate.last is not None:  # a long attempt (watch) saw something: that is what blocked
                result = gate.last
            elif deadline is not None and clock() >= deadline and attempts > 1:
                # cut short by the overall deadline: the previous attempt's reason says more than "no answer"
                return Outcome(False, last, attempts, clock() - start)
            elif check.bounded:
                result = Result("Timeout", "no answer within the attempt timeout")
            else:
                result = Result("Timeout", "the attempt was still running at the deadline")
        last = result
        log.observe(result)
        if result.ready:
            return Outcome(True, result, attempts, clock() - start)
        if on_progress is not None:
            on_progress(Outcome(False, last, attempts, clock() - start))
        pause = backoff.next(clock() - start)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - clock()))
        if pause > 0:
            sleep(pause)
