"""The network and task checks: tcp, redis, http, dns, download.

Each check is built once from its config (loading CA files and reading secrets from the
environment, so bad configuration fails fast with ConfigError), then `attempt()` is called until
it returns Ready. `attempt` raises on failure; loop.run classifies the exception.
ssl, http.client, hashlib and urllib are imported by the checks that use them, not at start-up.
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
        socket.create_connection((self.host, self.port), timeout=ctx.timeout).close()
        return Result("Ready", "connected")


def read_reply(sock: socket.socket) -> Reply:
    buf = b""
    while True:
        try:
            parsed = parse_reply(buf)
        except ProtocolError as exc:
            raise Failed("Protocol", str(exc)) from None
        if parsed is not None:
            return parsed[0]
        chunk = sock.recv(4096)
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
        sock = socket.create_connection((self.host, self.port), timeout=ctx.timeout)
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            if self.password is not None:
                args = (
                    ["AUTH", self.password]
                    if self.username is None
                    else ["AUTH", self.username, self.password]
                )
                sock.sendall(encode_command(args))
                refused = judge_auth(read_reply(sock))
                if refused is not None:
                    return refused
            sock.sendall(encode_command(["PING"]))
            return judge_ping(read_reply(sock))
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
        import http.client

        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def _get(
    target: _HttpTarget,
    headers: tuple[tuple[str, str], ...],
    timeout: float,
    tls: ssl.SSLContext | None,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send a GET; the caller closes the connection. Never reads the body."""
    conn = target.connect(timeout, tls)
    try:
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
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _status_text(resp: http.client.HTTPResponse) -> str:
    return clean(f"HTTP {resp.status} {resp.reason or ''}".strip(), 80)


class HttpCheck(_Base):
    kind = "http"

    def __init__(self, cfg: HttpConfig) -> None:
        self.http = _HttpTarget(cfg.url)
        self.expect = cfg.expect_status
        self.headers = cfg.headers
        self.tls = tls_context(cfg.ca_file, cfg.insecure) if self.http.https or cfg.ca_file else None
        self.target = redact_url(cfg.url)

    def attempt(self, ctx: Attempt) -> Result:
        conn, resp = _get(self.http, self.headers, ctx.timeout, self.tls)
        try:
            status = resp.status
            text = _status_text(resp)
        finally:
            conn.close()  # the body is never read, logged or reported
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
    https to http): the checksum, not the host, vouches for the bytes.
    """

    kind = "download"
    bounded = False  # a large file may take longer than one attempt timeout; reads still time out

    def __init__(self, cfg: DownloadConfig) -> None:
        self.url = cfg.url
        self.sha256 = cfg.sha256
        self.dest = os.path.abspath(cfg.dest)
        self.dir = os.path.dirname(self.dest)
        self.tmp_prefix = f".{os.path.basename(self.dest)}.depgate-"
        self.ca_file, self.insecure = cfg.ca_file, cfg.insecure
        self.tls = (
            tls_context(cfg.ca_file, cfg.insecure) if cfg.url.startswith("https:") or cfg.ca_file else None
        )
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
            conn, resp = _get(target, (), ctx.timeout, self.tls)
            try:
                if resp.status in (301, 302, 303, 307, 308):
                    url = self._redirect(url, resp.getheader("Location"))
                    continue
                if resp.status != 200:
                    raise Failed("HTTPStatus", f"{_status_text(resp)}, want 200")
                size = self._store(resp)
            finally:
                conn.close()
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

    def _store(self, resp: http.client.HTTPResponse) -> int:
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
                while chunk := resp.read(CHUNK):
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
        return HttpCheck(cfg)
    if isinstance(cfg, DnsConfig):
        return DnsCheck(cfg)
    if isinstance(cfg, DownloadConfig):
        return DownloadCheck(cfg)
    if isinstance(cfg, VerdictConfig):
        from depgate.waiter.verdict import VerdictCheck

        return VerdictCheck(cfg)
    raise ConfigError(f"unknown type {kind!r}")  # pragma: no cover - the parser knows only the six
