"""Leader election, the I/O side (the decisions are depgate.lease's): one thread of its own that reads and
writes the Lease every retry period, as client-go's elector runs in a goroutine of its own, so that a busy
event loop or a thread pool full of reconciles never delays a renewal (a 500-policy burst did, and the
only replica lost its own lease); what it decides reaches the event loop through call_soon_threadsafe.
`fence` is what the writing client (Kube.fence) asks before each write."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from depgate import lease
from depgate.kube import Changed, Kube

log = logging.getLogger("depgate.election")


def identity() -> str:
    """This process's name on the Lease: the pod's (or machine's) host name and a random suffix, as
    client-go's, so that a restarted process never mistakes the lease of its predecessor for its own."""
    host = os.environ.get("POD_NAME") or socket.gethostname() or "depgate"
    return f"{host}_{uuid.uuid4().hex[:8]}"


class Election:
    WARN_EVERY = 60.0  # seconds between repeated warnings while the Lease cannot be read or written

    def __init__(self, kube: Kube, elector: lease.Elector, *, on_elected: Callable[[], None],
                 on_lost: Callable[[], None], on_error: Callable[[], None] = lambda: None) -> None:
        self.kube, self.elector = kube, elector
        self.on_elected, self.on_lost = on_elected, on_lost
        self.elected = threading.Event()  # set while leading
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.dispatch: Callable[[Callable[[], None]], object] = lambda callback: callback()
        self.holder = ""  # who leads, as last read
        self.problem: str | None = None  # the last failure to read or write the Lease
        self.failures = 0  # attempts in a row that failed
        self._warned = -self.WARN_EVERY  # monotonic time of the last warning
        self.on_error = on_error  # each failed attempt (depgate_lease_errors_total)

    def fence(self) -> float:
        """From any thread: the write budget (Kube.fence)."""
        return self.elector.write_budget(time.monotonic())

    @property
    def request_timeout(self) -> float:
        """A Lease request that takes longer than a retry period is as good as failed."""
        return max(0.5, self.elector.timing.retry)

    @property
    def leading(self) -> bool:
        return self.elector.may_write(time.monotonic())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run in a thread of its own; on_elected and on_lost run on `loop`."""
        self.dispatch = lambda callback: loop.call_soon_threadsafe(callback)
        self.thread = threading.Thread(target=self.run, name="depgate-leader-election", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Blocking (call it in a thread): the election's thread ends after its current request."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(self.request_timeout * 3 + 1)

    def run(self) -> None:
        e, timing = self.elector, self.elector.timing
        log.info("leader election on Lease %s/%s as %s (lease %gs, renew deadline %gs, retry %gs)", e.namespace,
                 e.name, e.identity, timing.lease, timing.renew_deadline, timing.retry)
        while not self.stopping.is_set():
            self.attempt()
            if e.deadline_passed(time.monotonic()):
                self._lose(f"no renewal succeeded for the renew deadline of {timing.renew_deadline:g}s")
            self.stopping.wait(timing.retry)

    def attempt(self) -> None:
        """One read and, where the elector says so, one write of the Lease."""
        e, timeout = self.elector, self.request_timeout
        try:
            current = self._get(timeout)
            sent_at = time.monotonic()
            step = e.step(current, sent_at, time.time())
            if isinstance(step, lease.Wait):
                if step.holder != self.holder:
                    log.info("standing by: %s leads (its lease expires in %.0fs unless it renews)", step.holder,
                             step.expires_in)
                self.holder = step.holder
                if self.elected.is_set():
                    self._lose(f"{step.holder} holds the lease")
                return
            if not e.leading and self.elected.is_set():
                self._lose("another holder is on the lease")
            answer = self._write(step, timeout)
            if answer is None:  # created by another meanwhile, or gone: read again next time
                return
            self.problem, self.failures = None, 0
            self.holder = e.identity
            if e.renewed(sent_at, answer):
                log.info("became the leader (Lease %s/%s, transitions %d)", e.namespace, e.name, e.transitions)
                self.elected.set()
                self.dispatch(self.on_elected)
        except Changed:  # another wrote it first: read again next time
            pass
        except Exception as ex:  # the fence decides; the next attempt tries again
            self.on_error()
            self.failures += 1
            problem = f"{type(ex).__name__}: {ex}"
            now = time.monotonic()
            if problem != self.problem or now - self._warned >= self.WARN_EVERY:
                # Said again every minute while it lasts: a process that can never take the Lease (its
                # namespace missing, no right on leases) must not look like a quiet standby.
                log.warning("could not read or write Lease %s/%s (%s; %d attempts in a row); not leading, "
                            "trying again every %gs", e.namespace, e.name, problem, self.failures, e.timing.retry)
                self._warned = now
            self.problem = problem

    def _lose(self, why: str) -> None:
        was = self.elected.is_set()
        self.elector.lost()
        self.elected.clear()
        if was:
            log.warning("stopped leading: %s; standing by", why)
            self.dispatch(self.on_lost)

    def _get(self, timeout: float) -> dict[str, object] | None:
        return self.kube.get(lease.API_VERSION, lease.KIND, self.elector.namespace, self.elector.name, timeout=timeout)

    def _write(self, step: lease.Step, timeout: float) -> dict[str, object] | None:
        if isinstance(step, lease.Create):
            return self.kube.create(step.body, timeout=timeout)
        assert isinstance(step, lease.Update)
        return self.kube.replace(step.body, timeout=timeout)

    def release(self) -> None:
        """In a thread, on a clean stop: hand the Lease back if it is ours (a standby takes over at once)."""
        e = self.elector
        if not e.leading:
            return
        e.lost()
        self.elected.clear()
        try:
            current = self._get(self.request_timeout)
            body = e.release_body(current, time.time()) if current is not None else None
            if body is not None:
                self.kube.replace(body, timeout=self.request_timeout)
                log.info("released Lease %s/%s", e.namespace, e.name)
        except Exception as ex:  # the standby waits out the lease instead
            log.warning("could not release Lease %s/%s (%s: %s)", e.namespace, e.name, type(ex).__name__, ex)
