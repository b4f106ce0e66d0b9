"""The network and task checks: tcp, redis, http, dns, download.

Each check is built once from its config (loading CA files and reading secrets from the
environment, so bad configuration fails fast with ConfigError), then `attempt()` is called until
it returns Ready. `attempt` raises on failure; loop.run classifies the exception.
ssl, http.client, hashlib and urllib are imported by the checks that use them, not at start-up.

Every socket call is armed with what is left of the attempt and every read is bounded in size
(netio.py): a Redis reply at most MAX_REPLY bytes, an HTTP status line and headers at most
netio.MAX_HEAD, a download body at most --max-bytes. Beyond a bound the attempt fails with
ResponseTooLarge / TooLarge, naming it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

from depgate.waiter.config import (
    ConfigError,
    DnsConfig,
    DownloadConfig,
    HttpConfig,
    RedisConfig,
    TcpConfig,
    TypeConfig,
    VerdictConfig,
)
from depgate.waiter.netio import MAX_HEAD, Head, Stream, body, connect, content_length, read_head
from depgate.waiter.reasons import Failed, Result, clean
from depgate.waiter.resp import ProtocolError, Reply, encode_command, judge_auth, judge_ping, parse_reply

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    import http.client
    import ssl

    from depgate.waiter.loop import Attempt, Check

USER_AGENT = "depgate-wait/0.1"
MAX_REDIRECTS = 5
CHUNK = 1 << 16
MAX_REPLY = 1 << 16  # one Redis reply (PONG, OK or an error line need a few bytes)


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_context(ca_file: str | None, insecure: bool, flag: str = "--ca-file") -> ssl.SSLContext:
    """A client context verifying against `ca_file` only (else the system CAs); --insecure: none."""
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{flag}: cannot load {ca_file}: {clean(str(getattr(exc, 'reason', None) or exc))}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {ca_file}: {clean(exc.strerror or str(exc))}") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def redact_url(url: str) -> str:
    """The URL for logs: no user-info, no query (both may carry credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class _Base:
    kind = ""
    target = ""
    bounded = True

    def cleanup(self) -> None:
        return None


class TcpCheck(_Base):
    kind = "tcp"

    def __init__(self, cfg: TcpConfig) -> None:
        self.host, self.port = cfg.host, cfg.port
        self.target = hostport(cfg.host, cfg.port)

    def attempt(self, ctx: Attempt) -> Result:
        connect(self.host, self.port, ctx).close()
        return Result("Ready", "connected")


def read_reply(stream: Stream, command: str, limit: int = MAX_REPLY) -> Reply:
    """One reply, in at most `limit` bytes (ResponseTooLarge beyond: nothing more is read)."""
    buf = b""
    while True:
        try:
            parsed = parse_reply(buf)
        except ProtocolError as exc:
            raise Failed("Protocol", str(exc)) from None
        if parsed is not None:
            return parsed[0]
        if len(buf) >= limit:
            raise Failed("ResponseTooLarge", f"the reply to {command} exceeds {limit} bytes")
        chunk = stream.recv(min(4096, limit - len(buf)))
        if not chunk:
            raise Failed("Protocol", "the server closed the connection before replying")
        buf += chunk


class RedisCheck(_Base):
    kind = "redis"

    def __init__(self, cfg: RedisConfig, env: Mapping[str, str]) -> None:
        self.host, self.port = cfg.host, cfg.port
        self.target = hostport(cfg.host, cfg.port) + (" (tls)" if cfg.tls else "")
        self.tls = tls_context(cfg.ca_file, False) if cfg.tls else None
        if cfg.ca_file and not cfg.tls:
            raise ConfigError("--ca-file: only meaningful with --tls")
        self.password = _secret_env(env, "--password-env", cfg.password_env)
        self.username = _secret_env(env, "--username-env", cfg.username_env)

    def attempt(self, ctx: Attempt) -> Result:
        sock = connect(self.host, self.port, ctx)
        try:
            if self.tls is not None:
                sock.settimeout(ctx.op_timeout())  # the whole handshake (ssl keeps one deadline for it)
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            stream = Stream(sock, ctx)
            if self.password is not None:
                args = (
                    ["AUTH", self.password]
                    if self.username is None
                    else ["AUTH", self.username, self.password]
                )
                stream.send(encode_command(args))
                refused = judge_auth(read_reply(stream, "AUTH"))
                if refused is not None:
                    return refused
            stream.send(encode_command(["PING"]))
            return judge_ping(read_reply(stream, "PING"))
        finally:
            sock.close()


def _secret_env(env: Mapping[str, str], flag: str, var: str | None) -> str | None:
    if var is None:
        return None
    value = env.get(var)
    if value is None:
        raise ConfigError(f"{flag}: environment variable {var} is not set")
    if not value:
        raise ConfigError(f"{flag}: environment variable {var} is empty")
    return value


class _HttpTarget:
    """A parsed http(s) URL and how to open a connection to it."""

    def __init__(self, url: str) -> None:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.userinfo: tuple[str, str] | None = None
        if "@" in parts.netloc:
            self.userinfo = (unquote(parts.username or ""), unquote(parts.password or ""))

    def connect(self, timeout: float, tls: ssl.SSLContext | None) -> http.client.HTTPConnection:
        """An http.client connection (for verdict's watch, whose reads are long by design)."""
        import http.client

        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def open(self, ctx: Attempt, tls: ssl.SSLContext | None) -> socket.socket:
        """A connected socket, TLS when https, within the attempt's time; the caller closes it."""
        sock = connect(self.host, self.port, ctx)
        if not self.https:
            return sock
        try:
            sock.settimeout(ctx.op_timeout())  # the whole handshake (ssl keeps one deadline for it)
            return (tls or tls_context(None, False)).wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def request_bytes(target: _HttpTarget, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The GET request, formatted (and its path and headers validated) by http.client, not sent by it."""
    import http.client

    class Writer(http.client.HTTPConnection):
        def send(self, data: object) -> None:
            assert isinstance(data, bytes)
            out.append(data)

    out: list[bytes] = []
    conn = Writer(target.host, target.port)
    conn.default_port = 443 if target.https else 80  # the Host header omits the scheme's own port
    names = {name.lower() for name, _ in headers}
    conn.putrequest("GET", target.path, skip_host="host" in names, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if "user-agent" not in names:
        conn.putheader("User-Agent", USER_AGENT)
    if target.userinfo is not None and "authorization" not in names:
        import base64

        raw = f"{target.userinfo[0]}:{target.userinfo[1]}".encode()
        conn.putheader("Authorization", "Basic " + base64.b64encode(raw).decode("ascii"))
    conn.endheaders()
    return b"".join(out)


def _get(
    target: _HttpTarget,
    headers: tuple[tuple[str, str], ...],
    ctx: Attempt,
    tls: ssl.SSLContext | None,
) -> tuple[Stream, Head]:
    """Send a GET and read the response's head (at most MAX_HEAD bytes); the caller closes
    `stream.sock`. Never reads the body."""
    request = request_bytes(target, headers)
    sock = target.open(ctx, tls)
    try:
        stream = Stream(sock, ctx)
        stream.send(request)
        return stream, read_head(stream, MAX_HEAD)
    except BaseException:
        sock.close()
        raise


def basic_auth_header(env: Mapping[str, str], username_env: str | None, password_env: str | None) -> tuple[str, str]:
    """`Authorization: Basic ...` from the two env vars (ConfigError when either is unset or empty)."""
    import base64

    username = _secret_env(env, "--username-env", username_env) or ""
    password = _secret_env(env, "--password-env", password_env) or ""
    return "Authorization", "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _env_headers(env: Mapping[str, str], cfg: HttpConfig) -> tuple[tuple[str, str], ...]:
    """The headers given in the args, then those whose values come from env vars, then basic auth."""
    out = list(cfg.headers)
    for name, var in cfg.header_envs:
        value = _secret_env(env, f"--header-env={name}", var) or ""
        if any(ch in value for ch in "\r\n\0"):  # never echo the value: it is a secret
            raise ConfigError(f"--header-env={name}: environment variable {var} contains a line break or NUL")
        out.append((name, value))
    if cfg.username_env is not None:
        out.append(basic_auth_header(env, cfg.username_env, cfg.password_env))
    return tuple(out)


class HttpCheck(_Base):
    kind = "http"

    def __init__(self, cfg: HttpConfig, env: Mapping[str, str] | None = None) -> None:
        self.http = _HttpTarget(cfg.url)
        self.expect = cfg.expect_status
        self.headers = _env_headers(env or {}, cfg)
        self.tls = tls_context(cfg.ca_file, cfg.insecure) if self.http.https or cfg.ca_file else None
        self.target = redact_url(cfg.url)

    def attempt(self, ctx: Attempt) -> Result:
        stream, head = _get(self.http, self.headers, ctx, self.tls)
        stream.sock.close()  # the body is never read, logged or reported
        status, text = head.status, head.text
        if status in self.expect:
            return Result("Ready", text)
        want = ", ".join(str(s) for s in self.expect)
        raise Failed("HTTPStatus", f"{text}, want {want}")


class DnsCheck(_Base):
    kind = "dns"

    def __init__(self, cfg: DnsConfig) -> None:
        self.name = cfg.name
        self.target = cfg.name

    def attempt(self, ctx: Attempt) -> Result:
        infos = socket.getaddrinfo(self.name, None, type=socket.SOCK_STREAM)
        addrs = sorted({str(info[4][0]) for info in infos})
        if not addrs:
            raise Failed("DNS", "resolved to no address")
        more = f" and {len(addrs) - 3} more" if len(addrs) > 3 else ""
        return Result("Ready", f"resolves to {', '.join(addrs[:3])}{more}")


def _same_origin(a: str, b: str) -> bool:
    x, y = _HttpTarget(a), _HttpTarget(b)
    return (x.https, x.host.lower(), x.port) == (y.https, y.host.lower(), y.port)


def file_sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadCheck(_Base):
    """Fetch `url` to `dest` once, verified by sha256, moved into place atomically.

    Idempotent: a `dest` that already has the right sha256 is ready without any request (the
    pod restarted, the emptyDir kept the file). A wrong checksum removes the temporary file and
    is retried: the source may be mid-publish. Redirects are followed (up to 5, never from
    https to http): the checksum, not the host, vouches for the bytes. A body over --max-bytes
    (by its Content-Length, before any byte is written, or while it streams, before the byte
    that would pass the cap is written) fails with TooLarge and removes the temporary file. A
    failure after a body was fetched pauses the whole --period before the next attempt.
    """

    kind = "download"
    bounded = False  # a large file may take longer than one attempt timeout; reads still time out

    def __init__(self, cfg: DownloadConfig, env: Mapping[str, str] | None = None) -> None:
        self.url = cfg.url
        self.auth: tuple[tuple[str, str], ...] = ()
        if cfg.username_env is not None:
            self.auth = (basic_auth_header(env or {}, cfg.username_env, cfg.password_env),)
        self.sha256 = cfg.sha256
        self.dest = os.path.abspath(cfg.dest)
        self.dir = os.path.dirname(self.dest)
        self.tmp_prefix = f".{os.path.basename(self.dest)}.depgate-"
        self.ca_file, self.insecure = cfg.ca_file, cfg.insecure
        self.tls = (
            tls_context(cfg.ca_file, cfg.insecure) if cfg.url.startswith("https:") or cfg.ca_file else None
        )
        self.max_bytes = cfg.max_bytes
        self.target = f"{redact_url(cfg.url)} -> {self.dest}"
        self.current_tmp: str | None = None
        self.fetches = 0
        self.swept = False

    def attempt(self, ctx: Attempt) -> Result:
        if os.path.isfile(self.dest) and file_sha256(self.dest) == self.sha256:
            return Result("Ready", "in place, sha256 verified")
        self._prepare_dir()
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            target = _HttpTarget(url)
            if target.https and self.tls is None:
                self.tls = tls_context(self.ca_file, self.insecure)
            # basic auth goes to the URL's own origin only, never to where a redirect points elsewhere
            stream, head = _get(target, self.auth if _same_origin(url, self.url) else (), ctx, self.tls)
            try:
                if head.status in (301, 302, 303, 307, 308):
                    url = self._redirect(url, head.get("location"))
                    continue
                if head.status != 200:
                    raise Failed("HTTPStatus", f"{head.text}, want 200")
                declared = content_length(head)
                if declared is not None and declared > self.max_bytes:
                    raise Failed("TooLarge", f"Content-Length {declared} exceeds --max-bytes={self.max_bytes}")
                ctx.costly = True  # from here on a failure has cost a (partial) body
                size = self._store(stream, head)
            finally:
                stream.sock.close()
            return Result("Ready", f"fetched {size} bytes, sha256 verified")
        raise Failed("Protocol", f"more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _redirect(url: str, location: str | None) -> str:
        from urllib.parse import urljoin

        if not location:
            raise Failed("Protocol", "redirect without a Location header")
        new = urljoin(url, location)
        if not new.startswith(("http://", "https://")):
            raise Failed("Protocol", "redirect to a non-http(s) URL")
        if url.startswith("https:") and new.startswith("http:"):
            raise Failed("Protocol", "refusing a redirect from https to http")
        return new

    def _prepare_dir(self) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--dest: cannot create {self.dir}: {exc.strerror or exc}") from None
        if self.swept:
            return
        self.swept = True
        # temporary files left by a killed earlier run of this container (the emptyDir survives it)
        for name in os.listdir(self.dir):
            if name.startswith(self.tmp_prefix):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, name))

    def _store(self, stream: Stream, head: Head) -> int:
        import hashlib

        self.fetches += 1
        tmp = os.path.join(self.dir, f"{self.tmp_prefix}{os.getpid()}-{self.fetches}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise ConfigError(f"--dest: cannot write in {self.dir}: {exc.strerror or exc}") from None
        self.current_tmp = tmp
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o644)
                for chunk in body(stream, head):
                    if size + len(chunk) > self.max_bytes:  # checked before writing: never over the cap
                        raise Failed("TooLarge", f"the body exceeds --max-bytes={self.max_bytes}")
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                got = digest.hexdigest()
                if got != self.sha256:
                    raise Failed("ChecksumMismatch", f"got sha256 {got} ({size} bytes), want {self.sha256}")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.replace(tmp, self.dest)
            except OSError as exc:  # e.g. --dest names a directory: retrying cannot help
                raise ConfigError(
                    f"--dest: cannot move the file to {self.dest}: {exc.strerror or exc}"
                ) from None
            self.current_tmp = None
        finally:
            self.cleanup()
        _fsync_dir(self.dir)
        return size

    def cleanup(self) -> None:
        tmp, self.current_tmp = self.current_tmp, None
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def build(kind: str, cfg: TypeConfig, env: Mapping[str, str]) -> Check:
    """The check for a parsed config; ConfigError for inputs that cannot work (CA file, env vars)."""
    if isinstance(cfg, TcpConfig):
        return TcpCheck(cfg)
    if isinstance(cfg, RedisConfig):
        return RedisCheck(cfg, env)
    if isinstance(cfg, HttpConfig):
        return HttpCheck(cfg, env)
    if isinstance(cfg, DnsConfig):
        return DnsCheck(cfg)
    if isinstance(cfg, DownloadConfig):
        return DownloadCheck(cfg, env)
    if isinstance(cfg, VerdictConfig):
        from depgate.waiter.status_watch import VerdictCheck

        return VerdictCheck(cfg)
    raise ConfigError(f"unknown type {kind!r}")  # pragma: no cover - the parser knows only the six
