"""`depgate wait <type> [--flag=value ...]`: exit 0 ready, 124 timed out, 1 bad configuration.

Dispatched from depgate.cli. Logs one stderr line per change of state and writes a one-line
reason to the termination log (`Ready: ...`, `Timeout: ...`, `Config: ...`) on every exit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from depgate.waiter.config import ConfigError, HelpExit, parse, termination_log_from_argv
from depgate.waiter.reasons import Result
from depgate.waiter.statelog import (
    Outcome,
    StateLog,
    config_message,
    termination_message,
    write_termination_log,
)

EXIT_READY = 0
EXIT_CONFIG = 1
EXIT_TIMEOUT = 124
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    pass


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    try:
        parsed = parse(argv, os.environ)
        from depgate.waiter.checks import build

        check = build(parsed.kind, parsed.config, os.environ)
    except HelpExit as exc:
        return exc.code
    except ConfigError as exc:
        _stderr(f"depgate-wait: {exc}")
        write_termination_log(termination_log_from_argv(argv), config_message(str(exc)))
        return EXIT_CONFIG

    from depgate.waiter.loop import Timing, run

    common = parsed.common
    label = f"[{common.label}]" if common.label else ""
    log = StateLog(f"depgate-wait{label} {check.kind} {check.target}", _stderr)
    summary = f"{check.kind} {check.target}"
    progress: list[Outcome] = []

    def keep(outcome: Outcome) -> None:
        progress[:] = [outcome]

    started = time.monotonic()
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (called in-process): leave signals alone
        previous = None
    terminated = False
    try:
        timing = Timing(common.timeout, common.period, common.attempt_timeout, common.fast_window)
        outcome = run(check, timing, log, on_progress=keep)
    except _Terminated:
        terminated = True
        last = log.last or Result("Timeout", "terminated before the first attempt finished")
        attempts = progress[-1].attempts if progress else 0
        outcome = Outcome(False, last, attempts, time.monotonic() - started)
    except ConfigError as exc:
        _stderr(f"depgate-wait: {exc}")
        write_termination_log(common.termination_log, config_message(str(exc)))
        return EXIT_CONFIG
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        check.cleanup()
    log.finish(outcome, terminated)
    write_termination_log(common.termination_log, termination_message(summary, outcome, terminated))
    if outcome.ready:
        return EXIT_READY
    return EXIT_TERMINATED if terminated else EXIT_TIMEOUT
