"""The waiter's resources stay bounded against hostile servers on loopback (issue 12).

Real servers (raw sockets on 127.0.0.1) that trickle bytes, send endless Redis arrays, endless
HTTP headers and endless bodies; the waiter runs as a subprocess, its threads and file descriptors
its peak RSS (VmHWM) read from /proc while it runs. The pure pieces (netio over
a socketpair, the loop's pauses, the thread cap, the --max-bytes flag) are tested in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from waiter_loopback import (
    Answer,
    HttpServer,
    RawServer,
    Waiter,
    flood,
    fsize_limit,
    peer_closed,
    trickle,
    wait_until,
)

from depgate.waiter import netio
from depgate.waiter.config import DEFAULT_MAX_BYTES, ConfigError, DownloadConfig, parse
from depgate.waiter.loop import Attempt, ThreadRunner, Timing, run, run_inline
from depgate.waiter.reasons import Failed, Result
from depgate.waiter.statelog import StateLog

pytestmark = pytest.mark.waiter

Start = Callable[..., Waiter]
PEAK_RSS_KIB = 40 * 1024  # the init container's limit is 64Mi; the waiter peaks at 15-21 MiB here


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(serve: Callable[[socket.socket, threading.Event], None]) -> RawServer:
        s = RawServer(serve)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def attempts_of(w: Waiter) -> int:
    found = re.search(r"\((\d+) attempts?\)", w.lines[-1])
    assert found, w.lines
    return int(found.group(1))


def sample_until_exit(w: Waiter, timeout: float, also: Callable[[], None] = lambda: None) -> list[tuple[int, int, int]]:
    """(threads, fds, peak RSS KiB) of the waiter every 10 ms until it exits (at most `timeout` s)."""
    samples: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout
    while w.proc.poll() is None and time.monotonic() < deadline:
        got = w.sample()
        if got is not None:
            samples.append(got)
        also()
        time.sleep(0.01)
    return samples


def peak_kib(samples: list[tuple[int, int, int]]) -> int:
    assert samples, "the waiter exited before it could be sampled once"
    return max(rss for _, _, rss in samples)


# ---------------------------------------------------------------- threads and sockets


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        ("http", b"HTTP/1.1 200 OK\r\nX-Trickle: "),  # a header line that never ends
        ("redis", b"+"),  # a simple string that never ends
    ],
)
def test_a_trickling_server_leaves_no_thread_or_socket_behind(
    waiter: Start, raw_server: Callable[..., RawServer], kind: str, prefix: bytes
) -> None:
    """One byte every 150 ms, never a whole answer: a socket timeout (5 s per read) never fires, so
    before the fix every attempt was abandoned with its thread and socket still reading (issue 12:
    26 of each after 150 s). Now each attempt ends on its own deadline and closes its socket."""
    server = raw_server(trickle(prefix, 0.15))
    target = [f"--url=http://127.0.0.1:{server.port}/"] if kind == "http" else [
        "--host=127.0.0.1", f"--port={server.port}"
    ]
    w = waiter(kind, *target, "--attempt-timeout=0.4", "--period=0.1", "--timeout=6")
    samples = sample_until_exit(w, 30)
    assert w.wait(10) == 124, w.stderr
    assert w.termination().startswith("Timeout: Timeout: "), w.termination()
    assert len(samples) > 50
    threads = max(t for t, _, _ in samples)
    fds = max(f for _, f, _ in samples)
    # no growth with the attempts: the main thread and one attempt's; stdin/out/err, the attempt's
    # socket and, at exit, the termination log (the last attempt ends with the deadline, as it is written)
    assert threads <= 2, (threads, samples[-5:])
    assert fds <= 5, (fds, samples[-5:])
    attempts = attempts_of(w)
    assert attempts >= 8, w.stderr  # ... after that many attempts, each given up at its deadline
    assert server.accepted >= attempts - 1
    assert server.peak <= 2, server.peak  # the server never saw two attempts' connections pile up
    wait_until(lambda: server.open == 0, 5, "the server to see the last connection closed")
    # every connection was closed by the waiter by its attempt's deadline (0.4 s), with slack for load
    assert len(server.lifetimes) == server.accepted
    assert max(server.lifetimes) < 2.0, sorted(server.lifetimes)[-3:]


def test_the_runner_caps_live_attempt_threads() -> None:
    """Attempts stuck where nothing can bound them (getaddrinfo) are abandoned, but at most
    MAX_LIVE_WORKERS threads are ever alive: the next attempt waits for a slot instead."""
    release = threading.Event()
    started: list[int] = []

    def stuck() -> Result:
        started.append(1)
        release.wait(30)
        return Result("Ready", "late")

    runner = ThreadRunner(max_live=2)
    try:
        assert [runner(stuck, 0.05) for _ in range(6)] == [None] * 6
        assert len(started) == 2  # the other four never got a thread
        assert len(runner.live) == 2 and all(t.is_alive() for t in runner.live)
    finally:
        release.set()
    # once the stuck ones end, attempts run again
    assert runner(lambda: Result("Ready", "now"), 5.0) == Result("Ready", "now")
    assert len(started) == 2
    wait_until(lambda: not any(t.is_alive() for t in runner.live), 5, "the attempt threads to end")


# ---------------------------------------------------------------- bounded reads


@pytest.mark.parametrize(
    ("name", "prefix", "piece"),
    [
        ("huge array", b"*1024\r\n", b"$1048576\r\n" + b"x" * (1 << 20) + b"\r\n"),
        ("endless line", b"+", b"P" * (1 << 16)),
    ],
)
def test_a_huge_redis_reply_is_response_too_large(
    waiter: Start, raw_server: Callable[..., RawServer], name: str, prefix: bytes, piece: bytes
) -> None:
    """Issue 12: a Redis-like server sending a huge array took the waiter to 153 MB in 30 s and was
    reported as a plain Timeout (before the fix, these settings reach ~68 MB in 6 s)."""
    server = raw_server(flood(prefix, piece))
    w = waiter(
        "redis", "--host=127.0.0.1", f"--port={server.port}", "--timeout=6", "--attempt-timeout=1", "--period=0.2"
    )
    peak = peak_kib(sample_until_exit(w, 30))
    assert w.wait(10) == 124, w.stderr
    assert w.termination().startswith("Timeout: ResponseTooLarge: the reply to PING exceeds 65536 bytes")
    assert "waiting (ResponseTooLarge: the reply to PING exceeds 65536 bytes)" in w.stderr
    assert peak < PEAK_RSS_KIB, f"peak RSS {peak} KiB"
    assert attempts_of(w) <= 6 / 0.2 + 2  # a deterministic failure pauses the whole --period


@pytest.mark.parametrize(
    ("name", "prefix", "piece"),
    [
        ("one endless header", b"HTTP/1.1 200 OK\r\nX-Filler: ", b"a" * (1 << 16)),
        ("endless headers", b"HTTP/1.1 200 OK\r\n", b"X-Filler: 1\r\n" * 4096),
        ("endless status line", b"HTTP/1.1 200 ", b"O" * (1 << 16)),
    ],
)
def test_an_endless_http_head_is_response_too_large(
    waiter: Start, raw_server: Callable[..., RawServer], name: str, prefix: bytes, piece: bytes
) -> None:
    server = raw_server(flood(prefix, piece))
    w = waiter("http", f"--url=http://127.0.0.1:{server.port}/", "--timeout=3", "--period=0.2")
    peak = peak_kib(sample_until_exit(w, 30))
    assert w.wait(10) == 124, w.stderr
    assert w.termination().startswith(
        "Timeout: ResponseTooLarge: the response's status line and headers exceed 65536 bytes"
    ), w.termination()
    assert peak < PEAK_RSS_KIB, f"peak RSS {peak} KiB"


# ---------------------------------------------------------------- download size cap

CAP = 1 << 20


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("no Content-Length", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
        ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
)
def test_an_endless_download_stops_at_max_bytes(
    waiter: Start, raw_server: Callable[..., RawServer], tmp_path: Path, name: str, head: bytes
) -> None:
    """Issue 12: an endless body filled the volume, then was fetched again (62 x 50 MB in 20 s).

    The waiter runs with RLIMIT_FSIZE = --max-bytes: a write past the cap would fail with EFBIG
    (reported as such, not as TooLarge), so the file provably never exceeds the cap on disk."""
    piece = b"\0" * (1 << 16)
    if b"chunked" in head:
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    server = raw_server(flood(head, piece))
    dest = tmp_path / "shared" / "big.bin"
    w = waiter(
        "download",
        f"--url=http://127.0.0.1:{server.port}/big.bin",
        f"--sha256={'0' * 64}",
        f"--dest={dest}",
        f"--max-bytes={CAP}",
        "--timeout=4",
        "--period=0.5",
        prefix=fsize_limit(CAP),
    )
    sizes = [0]

    def file_sizes() -> None:
        for p in dest.parent.glob("*") if dest.parent.exists() else []:
            with contextlib.suppress(FileNotFoundError):
                sizes.append(p.stat().st_size)

    peak = peak_kib(sample_until_exit(w, 30, also=file_sizes))
    assert w.wait(10) == 124, w.stderr
    assert w.termination().startswith(f"Timeout: TooLarge: the body exceeds --max-bytes={CAP} after "), (
        w.termination()
    )
    assert max(sizes) <= CAP
    assert list(dest.parent.iterdir()) == []  # neither the file nor a partial one is left
    # never a tight loop: a pause of the whole --period (0.5 s) after each TooLarge
    assert 2 <= server.accepted <= 4 / 0.5 + 2, (server.accepted, w.stderr)
    assert peak < PEAK_RSS_KIB, f"peak RSS {peak} KiB"


def test_a_declared_content_length_over_max_bytes_fails_before_writing(
    waiter: Start, raw_server: Callable[..., RawServer], tmp_path: Path
) -> None:
    size = 10**12
    server = raw_server(flood(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size, b"\0" * (1 << 16)))
    dest = tmp_path / "big.bin"
    w = waiter(
        "download",
        f"--url=http://127.0.0.1:{server.port}/big.bin",
        f"--sha256={'0' * 64}",
        f"--dest={dest}",
        f"--max-bytes={CAP}",
        "--timeout=2",
        "--period=0.5",
        # streaming would fail at 4 KiB with EFBIG (reported as such): TooLarge says nothing was streamed
        prefix=fsize_limit(4096),
    )
    assert w.wait(30) == 124, w.stderr
    assert w.termination().startswith(f"Timeout: TooLarge: Content-Length {size} exceeds --max-bytes={CAP}")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("termination-log")] == []
    assert 2 <= server.accepted <= 2 / 0.5 + 2


PAYLOAD = bytes(range(256)) * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def artifact() -> Iterator[HttpServer]:
    def answer(path: str, headers: Mapping[str, str]) -> Answer:
        return 200, {}, PAYLOAD

    web = HttpServer(answer)
    yield web
    web.close()


def test_a_body_of_exactly_max_bytes_is_fetched(waiter: Start, artifact: HttpServer, tmp_path: Path) -> None:
    dest = tmp_path / "m.bin"
    common = (f"--url={artifact.url('/m.bin')}", f"--sha256={DIGEST}", f"--dest={dest}", "--period=0.2")
    exact = waiter("download", *common, f"--max-bytes={len(PAYLOAD)}", "--timeout=30")
    assert exact.wait(30) == 0, exact.stderr
    assert dest.read_bytes() == PAYLOAD
    dest.unlink()
    under = waiter("download", *common, f"--max-bytes={len(PAYLOAD) - 1}", "--timeout=1")
    assert under.wait(30) == 124
    assert under.termination().startswith(
        f"Timeout: TooLarge: Content-Length {len(PAYLOAD)} exceeds --max-bytes={len(PAYLOAD) - 1}"
    )
    assert not dest.exists()


def test_a_chunked_download_is_decoded(
    waiter: Start, raw_server: Callable[..., RawServer], tmp_path: Path
) -> None:
    """Chunked bodies (with extensions and trailers) are decoded by the waiter's own reader."""

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        peer_closed(conn, 2.0)
        pieces = [PAYLOAD[i : i + 70_000] for i in range(0, len(PAYLOAD), 70_000)]
        out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for p in pieces:
            out += b"%x;ext=1\r\n%s\r\n" % (len(p), p)
        conn.sendall(out + b"0\r\nX-Trailer: t\r\n\r\n")
        peer_closed(conn, 5.0)

    server = raw_server(serve)
    dest = tmp_path / "m.bin"
    w = waiter(
        "download", f"--url=http://127.0.0.1:{server.port}/m.bin", f"--sha256={DIGEST}", f"--dest={dest}",
        "--timeout=30",
    )
    assert w.wait(30) == 0, w.stderr
    assert dest.read_bytes() == PAYLOAD


# ---------------------------------------------------------------- in-process: flags, loop, netio


def test_max_bytes_flag() -> None:
    base = ["download", "--url=http://x/m", f"--sha256={'a' * 64}", "--dest=/d/m"]
    assert parse(base, {}).config == DownloadConfig("http://x/m", "a" * 64, "/d/m", None, False, DEFAULT_MAX_BYTES)
    assert DEFAULT_MAX_BYTES == 104857600
    assert parse([*base, "--max-bytes=5"], {}).config.max_bytes == 5  # type: ignore[union-attr]
    for bad in ("0", "-1", "1e6", "lots", ""):
        with pytest.raises(ConfigError, match=r"^--max-bytes: "):
            parse([*base, f"--max-bytes={bad}"], {})
    with pytest.raises(ConfigError, match="--max-bytes"):
        parse(["http", "--url=http://x/", "--max-bytes=5"], {})  # a download flag only


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class _Failing:
    kind, target, bounded = "fake", "x", True

    def __init__(self, reason: str, costly: bool = False) -> None:
        self.reason, self.costly = reason, costly

    def attempt(self, ctx: Attempt) -> Result:
        ctx.costly = self.costly
        raise Failed(self.reason, "no")  # type: ignore[arg-type]

    def cleanup(self) -> None:
        pass


@pytest.mark.parametrize(
    ("reason", "costly", "full_period"),
    [
        ("TooLarge", False, True),
        ("ChecksumMismatch", False, True),
        ("ResponseTooLarge", False, True),
        ("Protocol", True, True),  # e.g. a download whose body ended early: it cost a body
        ("Refused", False, False),
        ("HTTPStatus", False, False),
    ],
)
def test_deterministic_or_costly_failures_pause_the_whole_period(
    reason: str, costly: bool, full_period: bool
) -> None:
    clock = _Clock()
    run(
        _Failing(reason, costly),
        Timing(20, 2.0, 5.0, fast_window=60.0),
        StateLog("p", lambda s: None),
        clock=clock,
        sleep=clock.sleep,
        rand=lambda: 0.0,
        runner=run_inline,
    )
    if full_period:
        assert clock.sleeps == [2.0] * 10
    else:  # the fast window: pauses of at most 0.25 s
        assert max(clock.sleeps) <= 0.25 and len(clock.sleeps) > 50


def _attempt(timeout: float, until: float | None) -> Attempt:
    return Attempt(timeout, None, lambda r: None, time.monotonic, until)


def test_op_timeout_is_cut_to_what_is_left_of_the_attempt() -> None:
    now = time.monotonic()
    assert _attempt(5.0, None).op_timeout() == 5.0
    assert _attempt(5.0, now + 60).op_timeout() == 5.0
    short = _attempt(5.0, now + 1).op_timeout()
    assert 0 < short <= 1
    over = _attempt(5.0, now - 0.001)
    with pytest.raises(TimeoutError):
        over.op_timeout()
    assert over.cut


def _pair(data: bytes, until: float) -> netio.Stream:
    a, b = socket.socketpair()
    b.sendall(data)
    b.close()
    return netio.Stream(a, _attempt(2.0, until))


def test_read_head_and_bodies_over_a_socketpair() -> None:
    until = time.monotonic() + 10
    s = _pair(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 302 Found\r\nLocation: /x\r\nX-F: a\r\n b\r\n\r\nrest", until)
    head = netio.read_head(s)
    assert (head.status, head.text, head.get("location"), head.get("x-f")) == (302, "HTTP 302 Found", "/x", "a b")
    assert list(netio.body(s, head)) == [b"rest"]
    s = _pair(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", until)
    assert b"".join(netio.body(s, netio.read_head(s))) == b"abc"
    s = _pair(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", until)
    with pytest.raises(Failed, match="ended early"):
        b"".join(netio.body(s, netio.read_head(s)))
    for bad, match in [
        (b"", "closed the connection without a response"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line starts with 'SSH-2.0-OpenSSH'"),
        (b"HTTP/1.1 200 OK\r\nX: y", "in the middle of the response headers"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "exceed 65536 bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "bad Content-Length"),
    ]:
        s = _pair(bad, until)
        with pytest.raises(Failed, match=match):
            list(netio.body(s, netio.read_head(s)))


def test_a_stream_never_buffers_past_its_bound() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"x" * 50_000)  # fits the socketpair's buffers
        s = netio.Stream(a, _attempt(2.0, time.monotonic() + 10))
        assert s.readline(1000) is None
        assert s.received == 1000 and len(s.buf) == 1000
    finally:
        a.close()
        b.close()


def test_a_stream_ends_at_its_deadline_while_bytes_trickle() -> None:
    a, b = socket.socketpair()
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.05):
            try:
                b.send(b"a")
            except OSError:
                return

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    try:
        s = netio.Stream(a, _attempt(5.0, time.monotonic() + 0.5))
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            s.readline(1 << 16)
        assert 0.4 < time.monotonic() - began < 2.0
        assert s.received > 3  # bytes kept coming: a per-read timeout alone would never fire
    finally:
        stop.set()
        t.join(5)
        a.close()
        b.close()
