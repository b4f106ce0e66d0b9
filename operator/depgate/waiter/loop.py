"""The retry loop: one attempt at a time, backoff between them, an overall deadline.

Each attempt runs in a daemon worker thread that the loop waits for at most the attempt's hard
limit: getaddrinfo has no timeout, and --timeout must hold whatever the resolver does. Everything
else an attempt does is bounded on the socket itself: every blocking call is armed with
`Attempt.op_timeout()`, the per-operation timeout cut to what is left of the attempt (netio.py), so
a server that trickles bytes ends the attempt on time and its thread closes the socket and ends
with it. An attempt that still overruns (in the resolver) is abandoned (its late observations are
dropped) and counted as Timeout; at most MAX_LIVE_WORKERS attempt threads are ever alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from depgate.waiter.backoff import Backoff, urandom_unit
from depgate.waiter.config import ConfigError
from depgate.waiter.reasons import DETERMINISTIC, Result, classify
from depgate.waiter.statelog import Outcome, StateLog

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; mypy knows the name
if TYPE_CHECKING:
    from dataclasses import dataclass
    from typing import Protocol
else:
    from depgate.waiter._record import dataclass

GRACE = 0.5  # how long past its own timeout an attempt may take before it is abandoned
MAX_LIVE_WORKERS = 2  # the running attempt and one abandoned in getaddrinfo, at most


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
    until: float | None = None  # monotonic time by which this attempt's I/O must be over, None = none
    costly: bool = False  # set by a check whose failure cost much (a body was fetched): pause a --period
    cut: bool = False  # set by op_timeout when `until`, not `timeout`, limited the last blocking call

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def op_timeout(self) -> float:
        """The timeout for the next blocking call: `timeout`, cut to what is left of the attempt.

        TimeoutError when nothing is left: a check arms every socket call with this, so no
        trickle of bytes can keep an attempt (and its thread and socket) alive past `until`.
        """
        if self.until is None:
            return self.timeout
        left = self.until - self.clock()
        self.cut = left <= self.timeout
        if left <= 0:
            raise TimeoutError("the attempt's time is up")
        return min(self.timeout, left)


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


class ThreadRunner:
    """Runs each attempt in a daemon thread; its result, or None when it did not finish within `limit`.

    At most `max_live` attempt threads are alive: when every slot is held by attempts abandoned in
    the resolver, the next attempt waits (within its own limit) for the oldest to end instead of
    starting another, so a resolver that hangs cannot pile up threads either.
    """

    def __init__(self, max_live: int = MAX_LIVE_WORKERS) -> None:
        self.max_live = max_live
        self.live: list[threading.Thread] = []

    def __call__(self, fn: Callable[[], Result], limit: float | None) -> Result | None:
        end = None if limit is None else time.monotonic() + limit
        self.live = [t for t in self.live if t.is_alive()]
        while len(self.live) >= self.max_live:
            wait = None if end is None else end - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            self.live[0].join(wait)
            self.live = [t for t in self.live if t.is_alive()]
        box: list[Result] = []

        def target() -> None:
            box.append(fn())

        worker = threading.Thread(target=target, name="depgate-wait-attempt", daemon=True)
        worker.start()
        self.live.append(worker)
        worker.join(None if end is None else max(0.0, end - time.monotonic()))
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
    runner: Runner | None = None,
    on_progress: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Attempt until ready or the deadline. Logs state changes; never logs Ready (the caller does)."""
    runner = runner or ThreadRunner()
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
        # a bounded attempt's I/O ends after per_op, or at the deadline when that comes first; a long one's
        # (watch, download) at the deadline
        until = deadline
        if check.bounded and (remaining is None or remaining > timing.attempt_timeout):
            until = clock() + per_op
        ctx = Attempt(per_op, deadline, gate.observe, clock, until)
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
        at_deadline = result is None and deadline is not None and clock() >= deadline
        if result is not None and result.reason == "Timeout" and ctx.cut and deadline is not None and until == deadline:
            at_deadline = True  # its I/O was cut short by the overall deadline, not by a slow answer
        if result is None or at_deadline:
            if gate.last is not None:  # a long attempt (watch) saw something: that is what blocked
                result = gate.last
            elif at_deadline and attempts > 1:
                # cut short by the overall deadline: the previous attempt's reason says more than "no answer"
                return Outcome(False, last, attempts, clock() - start)
            elif result is not None:
                pass  # the first attempt's own Timeout
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
        if ctx.costly or result.reason in DETERMINISTIC:
            pause = max(pause, timing.period)  # never a tight loop of downloads or oversized reads
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - clock()))
        if pause > 0:
            sleep(pause)
