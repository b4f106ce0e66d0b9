"""Bounded network I/O for one attempt: connect, send, read lines and bodies, parse an HTTP head.

Every blocking call is armed first with `Attempt.op_timeout()`: the per-operation timeout, cut to
what is left of the attempt. A server that trickles one byte at a time therefore cannot stretch an
attempt past its end (a plain socket timeout restarts with every byte), and the attempt's thread
closes its socket and ends on time. Every read is bounded in size too: a line or an HTTP head over
its bound fails the attempt with `ResponseTooLarge`, naming the bound, before more is buffered.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

from depgate.waiter.reasons import Failed, clean

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; mypy knows the name
if TYPE_CHECKING:
    from dataclasses import dataclass

    from depgate.waiter.loop import Attempt
else:
    from depgate.waiter._record import dataclass

CHUNK = 1 << 16  # the most one recv asks for
MAX_HEAD = 1 << 16  # status line + headers of one HTTP response (and of each 1xx before it)
MAX_CHUNK_LINE = 1024  # a chunked body's size line (hex size and extensions)


def connect(host: str, port: int, ctx: Attempt) -> socket.socket:
    """A TCP connection within the attempt's time (what socket.create_connection does, armed per address).

    getaddrinfo takes no timeout (the reason attempts run in a thread, see loop.py); once it
    returns, no address is tried after the attempt's time is up.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    first: OSError | None = None
    for family, kind, proto, _, addr in infos:
        timeout = ctx.op_timeout()  # TimeoutError once the attempt's time is up
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            first = first or exc
            continue
        return sock
    raise first or OSError("getaddrinfo returned no address")


class Stream:
    """One connected socket (plain or TLS), read through a small buffer within the attempt's time."""

    def __init__(self, sock: socket.socket, ctx: Attempt) -> None:
        self.sock = sock
        self.ctx = ctx
        self.buf = bytearray()
        self.received = 0  # bytes read from the socket, for tests and messages

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.ctx.op_timeout())
        self.sock.sendall(data)  # a deadline for the whole call (a request fits the socket buffer)

    def recv(self, n: int) -> bytes:
        """At most `n` bytes (from the buffer first); b"" at end of stream."""
        if self.buf:
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        self.sock.settimeout(self.ctx.op_timeout())
        chunk = self.sock.recv(min(n, CHUNK))
        self.received += len(chunk)
        return chunk

    def readline(self, limit: int) -> bytes | None:
        """One line with its b"\\n"; None when the first `limit` bytes hold no line end (more is
        never buffered); what is left, possibly b"", at end of stream."""
        scanned = 0
        while True:
            end = self.buf.find(b"\n", scanned, limit)
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) >= limit:
                return None
            scanned = len(self.buf)
            self.sock.settimeout(self.ctx.op_timeout())
            chunk = self.sock.recv(min(CHUNK, limit - len(self.buf)))
            self.received += len(chunk)
            if not chunk:
                line = bytes(self.buf)
                self.buf.clear()
                return line
            self.buf += chunk


@dataclass(frozen=True)
class Head:
    """An HTTP response's status line and headers (names lower-cased, in order)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def text(self) -> str:
        return clean(f"HTTP {self.status} {self.reason}".strip(), 80)


def too_large_head(limit: int = MAX_HEAD) -> Failed:
    return Failed("ResponseTooLarge", f"the response's status line and headers exceed {limit} bytes")


def read_head(stream: Stream, limit: int = MAX_HEAD) -> Head:
    """The status line and headers of the response (1xx interim responses skipped), in at most
    `limit` bytes; ResponseTooLarge beyond, Protocol for what is not HTTP."""
    while True:
        budget = limit
        first = stream.readline(budget)
        if first is None:
            raise too_large_head(limit)
        if not first:
            raise Failed("Protocol", "server closed the connection without a response")
        budget -= len(first)
        status, reason = _status_line(first)
        headers: list[tuple[str, str]] = []
        while True:
            line = stream.readline(budget) if budget > 0 else None
            if line is None:
                raise too_large_head(limit)
            if not line.endswith(b"\n"):
                raise Failed("Protocol", "the connection closed in the middle of the response headers")
            budget -= len(line)
            raw = line.rstrip(b"\r\n")
            if not raw:
                break
            text = raw.decode("latin-1")
            if text[:1] in (" ", "\t") and headers:  # obsolete line folding: part of the previous value
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {text.strip()}")
                continue
            name, sep, value = text.partition(":")
            if sep and name.strip():
                headers.append((name.strip().lower(), value.strip()))
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue, 103 Early Hints ...: the real response follows
        return Head(status, reason, tuple(headers))


def _status_line(line: bytes) -> tuple[int, str]:
    text = line.rstrip(b"\r\n").decode("latin-1")
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 999:
        raise Failed("Protocol", f"bad HTTP response: status line starts with {clean(text, 20)!r}")
    return int(code), reason.strip()


def content_length(head: Head) -> int | None:
    """The declared body size, None when not declared (chunked or until the connection closes)."""
    te = head.get("transfer-encoding")
    if te is not None and "chunked" in te.lower():
        return None
    raw = head.get("content-length")
    if raw is None:
        return None
    values = {v.strip() for v in raw.split(",")}
    if len(values) != 1 or not all(v.isdigit() for v in values):
        raise Failed("Protocol", f"bad Content-Length: {clean(raw, 40)!r}")
    return int(values.pop())


def body(stream: Stream, head: Head) -> Iterator[bytes]:
    """The body's bytes in pieces of at most CHUNK; the caller bounds the total."""
    te = head.get("transfer-encoding")
    if te is not None and "chunked" in te.lower():
        yield from _chunked(stream)
        return
    size = content_length(head)
    if size is None:
        while chunk := stream.recv(CHUNK):
            yield chunk
        return
    left = size
    while left > 0:
        chunk = stream.recv(min(left, CHUNK))
        if not chunk:
            raise Failed("Protocol", "response body ended early")
        left -= len(chunk)
        yield chunk


def _chunked(stream: Stream) -> Iterator[bytes]:
    while True:
        line = stream.readline(MAX_CHUNK_LINE)
        if line is None:
            raise Failed("Protocol", f"a chunk size line is longer than {MAX_CHUNK_LINE} bytes")
        if not line.endswith(b"\n"):
            raise Failed("Protocol", "response body ended early")
        digits = line.split(b";", 1)[0].strip()
        if not digits or not all(c in b"0123456789abcdefABCDEF" for c in digits):
            raise Failed("Protocol", "bad chunk size in a chunked body")
        left = int(digits, 16)
        if left == 0:
            _trailers(stream)
            return
        while left > 0:
            chunk = stream.recv(min(left, CHUNK))
            if not chunk:
                raise Failed("Protocol", "response body ended early")
            left -= len(chunk)
            yield chunk
        end = stream.readline(MAX_CHUNK_LINE)
        if end is None or end.strip():
            raise Failed("Protocol", "a chunk is not followed by CRLF")


def _trailers(stream: Stream) -> None:
    budget = MAX_HEAD
    while True:
        line = stream.readline(budget) if budget > 0 else None
        if line is None:
            raise too_large_head()
        if not line.strip():  # the blank line that ends the body (or the end of the stream)
            return
        budget -= len(line)
