"""Helpers for the waiter tests: the waiter as a subprocess, real loopback servers, test certificates."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


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


PYTHON = sys.executable


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

    def sample(self) -> tuple[int, int, int] | None:
        """The waiter's threads, open file descriptors and peak RSS so far (VmHWM, KiB), from /proc;
        None once it has exited. (Not wait4's ru_maxrss: Linux carries the forking parent's peak,
        pytest's, over into the child's.)"""
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
            return int(fields["Threads"]), fds, int(fields["VmHWM"].split()[0])
        except (OSError, KeyError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def fsize_limit(max_bytes: int) -> list[str]:
    """A command prefix: exec the rest with RLIMIT_FSIZE = `max_bytes` (same pid, so /proc and wait4
    see the waiter). Python ignores SIGXFSZ, so a write past the limit fails with EFBIG."""
    code = (
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, {max_bytes}))\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    return [PYTHON, "-c", code]


class RawServer:
    """A TCP server on 127.0.0.1 that hands each connection to `serve(conn, stop)` in a thread of its own.

    Counts connections: accepted, how many are open at once (the peak), and how long each stayed open.
    At most `max_connections` are accepted (the rest are closed at once); close() stops them all.
    """

    def __init__(self, serve: Callable[[socket.socket, threading.Event], None], max_connections: int = 200):
        self.serve = serve
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted = 0
        self.open = 0
        self.peak = 0
        self.lifetimes: list[float] = []
        self.max_connections = max_connections
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                if self.accepted >= self.max_connections:
                    conn.close()
                    continue
                self.accepted += 1
                self.open += 1
                self.peak = max(self.peak, self.open)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        opened = time.monotonic()
        try:
            self.serve(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()
            with self.lock:
                self.open -= 1
                self.lifetimes.append(time.monotonic() - opened)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


def peer_closed(conn: socket.socket, wait: float) -> bool:
    """Wait up to `wait` seconds for the peer: True once it has closed (what it sends is dropped)."""
    import select

    readable, _, _ = select.select([conn], [], [], wait)
    if not readable:
        return False
    try:
        return conn.recv(65536) == b""
    except OSError:
        return True


def trickle(prefix: bytes, interval: float) -> Callable[[socket.socket, threading.Event], None]:
    """A server that answers `prefix`, then one byte every `interval` seconds, never completing."""

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        if peer_closed(conn, 2.0):  # the request (or nothing): the answer starts either way
            return
        conn.sendall(prefix)
        while not stop.is_set() and not peer_closed(conn, interval):
            conn.sendall(b"a")

    return serve


def flood(prefix: bytes, piece: bytes, limit: int = 1 << 30) -> Callable[[socket.socket, threading.Event], None]:
    """A server that answers `prefix`, then `piece` over and over (at most `limit` bytes) until the peer
    closes: an endless reply, header or body."""

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        if peer_closed(conn, 2.0):
            return
        conn.settimeout(10)
        conn.sendall(prefix)
        sent = len(prefix)
        while not stop.is_set() and sent < limit:
            conn.sendall(piece)
            sent += len(piece)

    return serve


Answer = tuple[int, Mapping[str, str], bytes]


class HttpServer:
    """A threaded HTTP server on 127.0.0.1; `answer(path, headers)` decides each response."""

    def __init__(self, answer: Callable[[str, Mapping[str, str]], Answer], tls: ssl.SSLContext | None = None):
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((self.path, headers))
                status, extra, body = server.answer(self.path, headers)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        scheme = "https" if isinstance(self.httpd.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 (SAN), made with the openssl CLI."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)

    sh(
        "req",
        "-x509",
        *ec,
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "2",
        "-subj",
        "/CN=depgate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    sh("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    sh(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    # a second server certificate from the same CA, for a name that is not ours
    other_key, other_csr, other_crt = (
        directory / "other.key",
        directory / "other.csr",
        directory / "other.crt",
    )
    other_ext = directory / "other.ext"
    other_ext.write_text(ext.read_text().replace("DNS:localhost,IP:127.0.0.1", "DNS:not-this-host.test"))
    sh("req", *ec, "-keyout", str(other_key), "-out", str(other_csr), "-subj", "/CN=not-this-host.test")
    sh(
        "x509",
        "-req",
        "-in",
        str(other_csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(other_crt),
        "-days",
        "2",
        "-extfile",
        str(other_ext),
    )
    os.chmod(key, 0o600)
    os.chmod(other_key, 0o600)
    return {"ca": ca_crt, "cert": crt, "key": key, "other_cert": other_crt, "other_key": other_key}


def server_tls(certs: Mapping[str, Path], which: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs[f"{which}cert"]), str(certs[f"{which}key"]))
    return ctx
