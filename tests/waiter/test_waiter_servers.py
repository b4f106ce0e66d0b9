"""`depgate wait <type>` as a subprocess against real servers on loopback (no socket mocks).

Each test starts the waiter first, waits until it has logged that it is waiting, and only then
brings the dependency up, so what is tested is the waiting, not a lucky first attempt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from waiter_loopback import PYTHON, Answer, HttpServer, Waiter, free_port, make_certs, server_tls, wait_until

pytestmark = pytest.mark.waiter

Start = Callable[..., Waiter]
SLACK = 5.0  # how long after the dependency is up the waiter may take to exit, on a loaded machine
PERIOD = "--period=0.2"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not on PATH (needed to make a test CA)")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def http_server() -> Iterator[Callable[..., HttpServer]]:
    servers: list[HttpServer] = []

    def start(answer: Callable[[str, Mapping[str, str]], Answer], tls: object = None) -> HttpServer:
        s = HttpServer(answer, tls)  # type: ignore[arg-type]
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


REDIS = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not on PATH (apt-get install redis-server; make test installs it)"
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int, *extra: str, directory: Path | None = None) -> subprocess.Popen[bytes]:
        assert REDIS is not None
        cmd = [
            REDIS,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory or tmp_path),
            "--logfile",
            "",
            *extra,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def raw_ping(port: int) -> bytes:
    """PING as an inline command, independent of the waiter's RESP code: b'+PONG' when ready."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(200).split(b"\r\n")[0]
    except OSError:
        return b""


def assert_exit(w: Waiter, code: int, timeout: float = 30.0) -> None:
    got = w.wait(timeout)
    assert got == code, f"exit {got}, want {code}; stderr:\n{w.stderr}\ntermination log: {w.termination()}"


# ---------------------------------------------------------------- tcp


def test_tcp_waits_for_a_listener(waiter: Start) -> None:
    port = free_port()
    w = waiter("tcp", "--host=127.0.0.1", f"--port={port}", "--timeout=60", PERIOD)
    w.wait_for_line("waiting (Refused: connection refused)")
    listener = socket.create_server(("127.0.0.1", port))
    try:
        up = time.monotonic()
        assert_exit(w, 0)
        assert w.exited_at is not None and w.exited_at - up < SLACK
    finally:
        listener.close()
    assert w.lines[-1].startswith(f"depgate-wait tcp 127.0.0.1:{port}: ready after ")
    assert len([line for line in w.lines if "waiting" in line]) == 1  # one line per change, not per attempt
    assert w.termination().startswith(f"Ready: tcp 127.0.0.1:{port}: connected after ")


def test_timeout_exits_124_and_writes_the_reason(waiter: Start) -> None:
    port = free_port()
    w = waiter("tcp", "--host=127.0.0.1", f"--port={port}", "--timeout=1", "--name=db")
    assert_exit(w, 124)
    assert w.termination() == w.termination().strip() + "\n"
    assert w.termination().startswith("Timeout: Refused: connection refused after 1.")
    assert f"depgate-wait[db] tcp 127.0.0.1:{port}: timed out after 1." in w.stderr


def test_sigterm_writes_the_last_reason(waiter: Start) -> None:
    w = waiter("tcp", "--host=127.0.0.1", f"--port={free_port()}", "--timeout=60")
    w.wait_for_line("waiting (Refused")
    w.proc.send_signal(signal.SIGTERM)
    assert_exit(w, 143)
    assert w.termination().startswith("Terminated: Refused: connection refused after ")


@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["tcp", "--host=h"], {}, "--port"),
        (["tcp", "--host=h", "--port=0"], {}, "--port"),
        (["http", "--url=gopher://h/"], {}, "--url"),
        (["http", "--url=https://h/", "--ca-file=/nonexistent/ca.crt"], {}, "--ca-file"),
        (["redis", "--host=h", "--password-env=DEPGATE_TEST_UNSET"], {}, "--password-env"),
        (
            [
                "verdict",
                "--policy=p",
                "--precondition=c",
                "--server=http://127.0.0.1:1",
                "--namespace=ns",
                "--token-file=/nonexistent/token",
            ],
            {},
            "--token-file",
        ),
    ],
)
def test_bad_configuration_exits_1(waiter: Start, args: list[str], env: dict[str, str], flag: str) -> None:
    w = waiter(*args, env=env)
    assert_exit(w, 1)
    assert flag in w.stderr
    assert w.termination().startswith(f"Config: {flag}")


def test_tcp_start_up_imports_stay_lean(tmp_path: Path) -> None:
    """The init container pays for every import: tcp loads neither ssl, http.client, json, hashlib,
    nor typing or dataclasses (the waiter's records use depgate.waiter._record at run time)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = (
            "import sys\nfrom depgate.waiter.cli import main\n"
            f"rc = main(['tcp', '--host=127.0.0.1', '--port={port}', '--termination-log='])\n"
            "heavy = [m for m in ('ssl', 'http.client', 'json', 'hashlib', 'urllib.parse', 'kopf', "
            "'kubernetes', 'yaml', 'random', 'typing', 'dataclasses', 'inspect') if m in sys.modules]\n"
            "print(rc, heavy)\n"
        )
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "0 []", out.stdout + out.stderr


# ---------------------------------------------------------------- redis


@needs_redis
def test_redis_started_after_the_waiter(waiter: Start, redis: Callable[..., subprocess.Popen[bytes]]) -> None:
    port = free_port()
    w = waiter("redis", "--host=127.0.0.1", f"--port={port}", "--timeout=90", PERIOD)
    w.wait_for_line("waiting (Refused: connection refused)")
    redis(port)
    wait_until(
        lambda: raw_ping(port) == b"+PONG" or w.proc.poll() is not None, 30, "redis-server to answer PONG"
    )
    pong = time.monotonic()
    assert_exit(w, 0)
    assert w.exited_at is not None and w.exited_at - pong < SLACK
    assert w.lines[-1].endswith(": PONG") and "ready after" in w.lines[-1]
    assert w.termination().startswith(f"Ready: redis 127.0.0.1:{port}: PONG after ")


@needs_redis
def test_redis_loading_is_not_ready(
    waiter: Start, redis: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A real loading state: an RDB of 15k keys loaded with a per-key delay, events processed every 1 KiB."""
    seed_port, port = free_port(), free_port()
    seed = redis(seed_port, "--enable-debug-command", "yes")
    wait_until(lambda: raw_ping(seed_port) == b"+PONG", 30, "the seed redis-server")
    cli = ["redis-cli", "-p", str(seed_port)]
    subprocess.run([*cli, "DEBUG", "POPULATE", "15000"], check=True, capture_output=True, timeout=60)
    subprocess.run([*cli, "SAVE"], check=True, capture_output=True, timeout=60)
    seed.terminate()
    seed.wait(10)
    assert (tmp_path / "dump.rdb").stat().st_size > 100_000

    w = waiter("redis", "--host=127.0.0.1", f"--port={port}", "--timeout=120", PERIOD)
    w.wait_for_line("waiting (Refused")
    redis(port, "--key-load-delay", "200", "--loading-process-events-interval-bytes", "1024")
    w.wait_for_line("waiting (Loading: LOADING Redis is loading the dataset in memory)", timeout=60)
    assert w.proc.poll() is None, "the waiter must not be ready while Redis loads"
    assert_exit(w, 0, timeout=120)
    assert raw_ping(port) == b"+PONG"
    assert [line.split(": ", 1)[1] for line in w.lines[:2]] == [
        "waiting (Refused: connection refused)",
        "waiting (Loading: LOADING Redis is loading the dataset in memory)",
    ]


@needs_redis
def test_redis_requirepass(waiter: Start, redis: Callable[..., subprocess.Popen[bytes]]) -> None:
    port = free_port()
    redis(port, "--requirepass", "s3cret-pw")
    wait_until(lambda: raw_ping(port).startswith(b"-NOAUTH"), 30, "redis-server with requirepass")
    args = ("redis", "--host=127.0.0.1", f"--port={port}", PERIOD)
    right = waiter(
        *args,
        "--timeout=60",
        "--password-env=DEPGATE_REDIS_PASSWORD",
        env={"DEPGATE_REDIS_PASSWORD": "s3cret-pw"},
    )
    wrong = waiter(
        *args, "--timeout=4", "--password-env=DEPGATE_REDIS_PASSWORD", env={"DEPGATE_REDIS_PASSWORD": "nope"}
    )
    user = waiter(
        *args, "--timeout=60", "--password-env=P", "--username-env=U", env={"P": "s3cret-pw", "U": "default"}
    )
    missing = waiter(*args, "--timeout=4")
    assert_exit(right, 0)
    assert_exit(user, 0)
    assert_exit(wrong, 124)
    assert_exit(missing, 124)
    assert wrong.termination().startswith("Timeout: Auth: WRONGPASS")
    assert missing.termination().startswith("Timeout: Auth: NOAUTH")
    for w in (right, wrong, user, missing):
        assert "s3cret-pw" not in w.stderr + w.termination()


@needs_redis
def test_redis_tls(
    waiter: Start, redis: Callable[..., subprocess.Popen[bytes]], certs: dict[str, Path]
) -> None:
    port = free_port()
    redis(
        port,
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(certs["cert"]),
        "--tls-key-file",
        str(certs["key"]),
        "--tls-ca-cert-file",
        str(certs["ca"]),
        "--tls-auth-clients",
        "no",
    )
    client = ssl.create_default_context(cafile=str(certs["ca"]))

    def tls_ping() -> bool:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=2)
            with client.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"PING\r\n")
                return s.recv(100).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(tls_ping, 30, "redis-server with TLS")
    args = ("redis", "--host=127.0.0.1", f"--port={port}", "--tls", PERIOD)
    trusted = waiter(*args, f"--ca-file={certs['ca']}", "--timeout=60")
    untrusted = waiter(*args, "--timeout=1.5")
    plain = waiter("redis", "--host=127.0.0.1", f"--port={port}", "--timeout=1.5")
    assert_exit(trusted, 0)
    assert trusted.lines[-1].endswith(": PONG")
    assert_exit(untrusted, 124)
    assert untrusted.termination().startswith("Timeout: TLS: certificate verify failed")
    assert_exit(plain, 124)  # plaintext RESP to a TLS port: never ready


def test_redis_port_answered_by_something_else(waiter: Start, http_server: Callable[..., HttpServer]) -> None:
    web = http_server(lambda path, headers: (200, {}, b"hello"))
    w = waiter("redis", "--host=127.0.0.1", f"--port={web.port}", "--timeout=1.5")
    assert_exit(w, 124)
    assert w.termination().startswith("Timeout: Protocol: not a Redis server (reply starts with ")


# ---------------------------------------------------------------- http(s)


def test_http_503_then_200(waiter: Start, http_server: Callable[..., HttpServer]) -> None:
    state = {"status": 503}
    web = http_server(lambda path, headers: (state["status"], {}, b"SECRET-BODY " * 10))
    w = waiter(
        "http",
        f"--url={web.url('/healthz?token=abc')}",
        "--expect-status=200",
        "--expect-status=204",
        "--header=X-Probe: depgate",
        "--timeout=60",
        PERIOD,
    )
    w.wait_for_line("waiting (HTTPStatus: HTTP 503 Service Unavailable, want 200, 204)")
    state["status"] = 204
    assert_exit(w, 0)
    assert w.lines[-1].endswith(": HTTP 204 No Content")
    assert all(h.get("x-probe") == "depgate" for _, h in web.requests)
    assert "SECRET-BODY" not in w.stderr + w.termination()
    assert "token=abc" not in w.stderr + w.termination()  # the query may carry credentials


def test_https_with_a_custom_ca(
    waiter: Start, http_server: Callable[..., HttpServer], certs: dict[str, Path]
) -> None:
    web = http_server(lambda path, headers: (200, {}, b"ok"), server_tls(certs))
    trusted = waiter(
        "http", f"--url={web.url('/', host='localhost')}", f"--ca-file={certs['ca']}", "--timeout=60", PERIOD
    )
    by_ip = waiter("http", f"--url={web.url('/')}", f"--ca-file={certs['ca']}", "--timeout=60", PERIOD)
    untrusted = waiter("http", f"--url={web.url('/')}", "--timeout=2", PERIOD)
    insecure = waiter("http", f"--url={web.url('/')}", "--insecure", "--timeout=60", PERIOD)
    assert_exit(trusted, 0)
    assert_exit(by_ip, 0)
    assert_exit(insecure, 0)
    assert_exit(untrusted, 124)
    assert untrusted.termination().startswith("Timeout: TLS: certificate verify failed: ")
    assert "waiting (TLS: certificate verify failed" in untrusted.stderr


def test_https_hostname_must_match(
    waiter: Start, http_server: Callable[..., HttpServer], certs: dict[str, Path]
) -> None:
    web = http_server(lambda path, headers: (200, {}, b"ok"), server_tls(certs, "other_"))
    w = waiter("http", f"--url={web.url('/')}", f"--ca-file={certs['ca']}", "--timeout=1.5")
    assert_exit(w, 124)
    assert w.termination().startswith("Timeout: TLS: certificate verify failed: IP address mismatch")


# ---------------------------------------------------------------- dns


def test_dns_localhost_and_an_invalid_name(waiter: Start) -> None:
    good = waiter("dns", "--name=localhost", "--timeout=30")
    bad = waiter("dns", "--name=depgate-no-such-host.invalid", "--timeout=1.5")
    assert_exit(good, 0)
    assert "resolves to 127.0.0.1" in good.lines[-1]
    assert_exit(bad, 124)
    assert bad.termination().startswith("Timeout: DNS: ")


def _can_unshare_mounts() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="mount namespaces are Linux only")
def test_dns_name_that_appears(waiter: Start, tmp_path: Path) -> None:
    """A name that starts resolving while the waiter waits, through the real resolver.

    The waiter runs in its own mount namespace (`unshare --mount`) where /etc/hosts is a bind
    mount of a copy in tmp_path; the test appends the name to that copy once the waiter has
    logged a DNS failure. glibc's `files` source re-reads /etc/hosts on every getaddrinfo, so
    this is real resolution (NSS, the hosts file) with nothing mocked, and the machine's own
    /etc/hosts is never touched. Needs root (CAP_SYS_ADMIN); skipped otherwise.
    """
    if not _can_unshare_mounts():
        pytest.skip("needs root and `unshare --mount` to give the waiter a private /etc/hosts")
    name = f"depgate-appears-{os.getpid()}.test"
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text())
    prefix = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
    w = waiter("dns", f"--name={name}", "--timeout=60", PERIOD, prefix=prefix)
    w.wait_for_line("waiting (DNS: ")
    with hosts.open("a") as f:
        f.write(f"127.0.0.9 {name}\n")
    assert_exit(w, 0)
    assert w.lines[-1].endswith("resolves to 127.0.0.9")
    assert name not in Path("/etc/hosts").read_text()


# ---------------------------------------------------------------- download


PAYLOAD = os.urandom(200_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def _artifact_server(http_server: Callable[..., HttpServer], bodies: list[bytes]) -> HttpServer:
    """/artifact serves `bodies` in turn (the last one from then on); /moved redirects to it."""

    def answer(path: str, headers: Mapping[str, str]) -> Answer:
        if path == "/moved":
            return 302, {"Location": "/artifact"}, b""
        if path == "/artifact":
            n = web.hits("/artifact") - 1
            return 200, {"Content-Type": "application/octet-stream"}, bodies[min(n, len(bodies) - 1)]
        return 404, {}, b""

    web = http_server(answer)
    return web


def test_download_verifies_and_is_idempotent(
    waiter: Start, http_server: Callable[..., HttpServer], tmp_path: Path
) -> None:
    web = _artifact_server(http_server, [PAYLOAD])
    dest = tmp_path / "shared" / "models" / "m.bin"
    args = ("download", f"--url={web.url('/moved')}", f"--sha256={DIGEST}", f"--dest={dest}", "--timeout=60")
    first = waiter(*args)
    assert_exit(first, 0)
    assert dest.read_bytes() == PAYLOAD
    assert dest.stat().st_mode & 0o777 == 0o644
    assert first.lines[-1].endswith(f"fetched {len(PAYLOAD)} bytes, sha256 verified")
    assert web.hits("/moved") == 1 and web.hits("/artifact") == 1

    second = waiter(*args)
    assert_exit(second, 0)
    assert web.hits("/moved") == 1 and web.hits("/artifact") == 1  # no request at all
    assert second.lines[-1].endswith("in place, sha256 verified")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.bin"]


def test_download_retries_a_source_mid_publish(
    waiter: Start, http_server: Callable[..., HttpServer], tmp_path: Path
) -> None:
    web = _artifact_server(http_server, [PAYLOAD[:1000], PAYLOAD[:50_000], PAYLOAD])
    dest = tmp_path / "m.bin"
    w = waiter(
        "download",
        f"--url={web.url('/artifact')}",
        f"--sha256={DIGEST}",
        f"--dest={dest}",
        "--timeout=60",
        PERIOD,
    )
    assert_exit(w, 0)
    assert dest.read_bytes() == PAYLOAD
    assert "waiting (ChecksumMismatch: got sha256 " in w.stderr
    assert web.hits("/artifact") == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.bin")) == []


def test_download_wrong_checksum_times_out(
    waiter: Start, http_server: Callable[..., HttpServer], tmp_path: Path
) -> None:
    web = _artifact_server(http_server, [PAYLOAD])
    dest = tmp_path / "m.bin"
    wrong = "0" * 64
    w = waiter(
        "download",
        f"--url={web.url('/artifact')}",
        f"--sha256={wrong}",
        f"--dest={dest}",
        "--timeout=1.5",
        PERIOD,
    )
    assert_exit(w, 124)
    assert w.termination().startswith(f"Timeout: ChecksumMismatch: got sha256 {DIGEST} ")
    assert f"want {wrong}" in w.termination()
    assert web.hits("/artifact") >= 2  # retried
    assert list(tmp_path.glob("*m.bin*")) == []  # neither the file nor a temporary one


def test_download_http_error_status(
    waiter: Start, http_server: Callable[..., HttpServer], tmp_path: Path
) -> None:
    web = _artifact_server(http_server, [PAYLOAD])
    w = waiter(
        "download",
        f"--url={web.url('/missing')}",
        f"--sha256={DIGEST}",
        f"--dest={tmp_path / 'x'}",
        "--timeout=1.5",
    )
    assert_exit(w, 124)
    assert w.termination().startswith("Timeout: HTTPStatus: HTTP 404 Not Found, want 200")


def test_download_into_a_directory_is_a_config_error(
    waiter: Start, http_server: Callable[..., HttpServer], tmp_path: Path
) -> None:
    web = _artifact_server(http_server, [PAYLOAD])
    (tmp_path / "m.bin").mkdir()
    w = waiter(
        "download", f"--url={web.url('/artifact')}", f"--sha256={DIGEST}", f"--dest={tmp_path / 'm.bin'}"
    )
    assert_exit(w, 1)
    assert w.termination().startswith("Config: --dest: cannot move the file to ")
    assert [p.name for p in tmp_path.iterdir() if p.name != "m.bin" and "termination" not in p.name] == []
