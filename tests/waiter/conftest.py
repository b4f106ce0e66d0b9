"""Helpers for the waiter tests: free ports, the waiter as a subprocess, polling with deadlines."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `cond` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Waiter:
    """`python -m depgate wait ...` running as a subprocess; stderr collected line by line."""

    def __init__(
        self,
        args: list[str],
        termlog: Path,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.termlog = termlog
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.cmd = [*(prefix or []), PYTHON, "-m", "depgate", "wait", *args, f"--termination-log={termlog}"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self.exited_at: float | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def wait_for_line(self, text: str, timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.saw(text) or self.proc.poll() is not None, timeout, f"a log line with {text!r}"
        )
        assert self.saw(text), f"waiter exited {self.proc.returncode} without {text!r}: {self.lines}"

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"waiter still running after {timeout}s: {self.lines}") from None
        self.exited_at = time.monotonic()
        self._reader.join(5)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def termination(self) -> str:
        return self.termlog.read_text(encoding="utf-8") if self.termlog.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


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
