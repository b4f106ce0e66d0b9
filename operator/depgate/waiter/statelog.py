"""One stderr line per change of state, and the termination-log line (pure formatting)."""

from __future__ import annotations

import os
from collections.abc import Callable

from depgate.waiter.reasons import Result, clean

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; mypy knows the name
if TYPE_CHECKING:
    from dataclasses import dataclass
else:
    from depgate.waiter._record import dataclass

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_LIMIT = 4000  # the kubelet keeps at most 4096 bytes


def secs(seconds: float) -> str:
    return f"{seconds:.1f}s"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class Outcome:
    """How a wait ended: ready, or not (timed out / terminated), with the last thing seen."""

    ready: bool
    last: Result
    attempts: int
    elapsed: float


def waiting_line(prefix: str, result: Result) -> str:
    return f"{prefix}: waiting ({result})"


def final_line(prefix: str, outcome: Outcome, terminated: bool = False) -> str:
    tail = f"after {secs(outcome.elapsed)} ({plural(outcome.attempts, 'attempt')})"
    if outcome.ready:
        return f"{prefix}: ready {tail}: {outcome.last.message}"
    verb = "terminated" if terminated else "timed out"
    return f"{prefix}: {verb} {tail}; last: {outcome.last}"


def termination_message(summary: str, outcome: Outcome, terminated: bool = False) -> str:
    """`Ready: <summary>` / `Timeout: <class>: <message> after <n>s` / `Terminated: ...`."""
    if outcome.ready:
        return clean(f"Ready: {summary}: {outcome.last.message} after {secs(outcome.elapsed)}", 1000)
    word = "Terminated" if terminated else "Timeout"
    return clean(f"{word}: {outcome.last} after {secs(outcome.elapsed)}", 1000)


def config_message(message: str) -> str:
    return clean(f"Config: {message}", 1000)


class StateLog:
    """Writes a line only when (reason, message) differs from the last one written."""

    def __init__(self, prefix: str, write: Callable[[str], None]) -> None:
        self.prefix = prefix
        self.write = write
        self.last: Result | None = None
        self.lines = 0

    def observe(self, result: Result) -> bool:
        """Record what an attempt saw; log it when the state changed. Ready is left to `finish`."""
        if result == self.last:
            return False
        self.last = result
        if result.ready:
            return False
        self.write(waiting_line(self.prefix, result))
        self.lines += 1
        return True

    def finish(self, outcome: Outcome, terminated: bool = False) -> None:
        self.write(final_line(self.prefix, outcome, terminated))
        self.lines += 1


def write_termination_log(path: str, line: str) -> bool:
    """Write `line` to the termination log; skip silently where it cannot be written.

    The default /dev/termination-log is only written when it exists (the kubelet creates it), so
    running the waiter by hand as root does not leave a stray file in /dev.
    """
    if not path:
        return False
    if path == DEFAULT_TERMINATION_LOG and not os.path.exists(path):
        return False
    data = clean(line, 10**6).encode("utf-8")[:TERMINATION_LOG_LIMIT]
    data = data.decode("utf-8", "ignore").encode("utf-8") + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError:
        return False
    try:
        os.write(fd, data)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
