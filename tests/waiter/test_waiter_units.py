"""The waiter's pure parts, without I/O: backoff, state log, classification, RESP, flags, loop, verdict."""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from depgate.waiter import resp
from depgate.waiter.backoff import Backoff, base_delay
from depgate.waiter.config import (
    ConfigError,
    DnsConfig,
    DownloadConfig,
    HttpConfig,
    RedisConfig,
    TcpConfig,
    VerdictConfig,
    parse,
    termination_log_from_argv,
)
from depgate.waiter.loop import Attempt, Timing, run, run_inline
from depgate.waiter.reasons import REASONS, Failed, Result, classify, clean
from depgate.waiter.statelog import (
    Outcome,
    StateLog,
    config_message,
    final_line,
    termination_message,
    write_termination_log,
)
from depgate.waiter.status_watch import _unpack, api_error, judge, parse_watch_line, watch_path

# ---------------------------------------------------------------- backoff


def test_backoff_doubles_from_50ms_and_caps_at_period() -> None:
    top = Backoff(1.0, rand=lambda: 1.0)  # the top of the jitter range
    assert [round(top.next(), 3) for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    low = Backoff(1.0, rand=lambda: 0.0)  # the bottom: half
    assert [round(low.next(), 3) for _ in range(7)] == [0.025, 0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


def test_backoff_fast_window_keeps_pauses_short_then_grows_to_period() -> None:
    b = Backoff(5.0, rand=lambda: 1.0, fast_window=60.0)
    early = [round(b.next(elapsed), 3) for elapsed in (0.0, 0.1, 0.3, 0.7, 1.5, 10.0, 59.9)]
    assert early == [0.05, 0.1, 0.2, 0.25, 0.25, 0.25, 0.25]
    late = [round(b.next(elapsed), 3) for elapsed in (60.0, 61.0, 62.0, 64.0, 70.0, 80.0)]
    assert late == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    # a --period under 0.25 s is never exceeded, fast window or not
    tight = Backoff(0.1, rand=lambda: 1.0, fast_window=60.0)
    assert max(tight.next(0.0) for _ in range(6)) == 0.1


def test_backoff_ceiling_below_initial() -> None:
    b = Backoff(0.01, rand=lambda: 1.0)
    assert [b.next() for _ in range(3)] == [0.01, 0.01, 0.01]


def test_base_delay_never_overflows() -> None:
    assert base_delay(10**6, 300.0) == 300.0


@given(st.floats(min_value=0.001, max_value=300), st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_backoff_pause_bounds(ceiling: float, draws: list[float]) -> None:
    it = iter(draws)
    b = Backoff(ceiling, rand=lambda: next(it))
    for n in range(len(draws)):
        pause = b.next()
        assert 0 < pause <= ceiling
        assert pause >= 0.5 * base_delay(n, ceiling) - 1e-12


# ---------------------------------------------------------------- state log and termination log


def test_state_log_writes_once_per_change() -> None:
    lines: list[str] = []
    log = StateLog("depgate-wait redis data-tier:6379", lines.append)
    refused = Result("Refused", "connection refused")
    for r in [refused, refused, refused, Result("Loading", "LOADING ..."), refused, refused]:
        log.observe(r)
    log.observe(Result("Ready", "PONG"))
    assert lines == [
        "depgate-wait redis data-tier:6379: waiting (Refused: connection refused)",
        "depgate-wait redis data-tier:6379: waiting (Loading: LOADING ...)",
        "depgate-wait redis data-tier:6379: waiting (Refused: connection refused)",
    ]
    log.finish(Outcome(True, Result("Ready", "PONG"), 14, 3.24))
    assert lines[-1] == "depgate-wait redis data-tier:6379: ready after 3.2s (14 attempts): PONG"


def test_final_and_termination_messages() -> None:
    ok = Outcome(True, Result("Ready", "HTTP 200 OK"), 1, 0.04)
    late = Outcome(False, Result("Refused", "connection refused"), 30, 30.02)
    assert termination_message("http http://x/", ok) == "Ready: http http://x/: HTTP 200 OK after 0.0s"
    assert termination_message("tcp a:1", late) == "Timeout: Refused: connection refused after 30.0s"
    assert termination_message("tcp a:1", late, terminated=True).startswith("Terminated: Refused")
    assert (
        final_line("p", late) == "p: timed out after 30.0s (30 attempts); last: Refused: connection refused"
    )
    assert config_message("--port: bad\nvalue") == "Config: --port: bad value"


def test_write_termination_log(tmp_path: Path) -> None:
    target = tmp_path / "termination-log"
    assert write_termination_log(str(target), "Timeout: x\ny " + "z" * 5000)
    data = target.read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n") and len(data) <= 4001
    assert data.startswith(b"Timeout: x y zzz")
    # a directory that does not exist: skipped, no error
    assert not write_termination_log(str(tmp_path / "missing" / "log"), "Ready: x")


def test_clean_makes_one_printable_line() -> None:
    assert clean("a\r\nb\x00c\t d") == "a b c d"
    assert len(clean("x" * 1000)) == 400


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "DNS"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "Refused"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "Refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "Refused"),
        (TimeoutError("timed out"), "Timeout"),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), "Timeout"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "TLS"),
        (ssl.SSLError(1, "wrong version number"), "TLS"),
        (http.client.RemoteDisconnected("Remote end closed connection"), "Protocol"),
        (http.client.BadStatusLine("garbage"), "Protocol"),
        (Failed("ChecksumMismatch", "got sha256 x"), "ChecksumMismatch"),
        (RuntimeError("surprise"), "Protocol"),
    ],
)
def test_classify(exc: BaseException, reason: str) -> None:
    got = classify(exc)
    assert got.reason == reason
    assert got.reason in REASONS
    assert "\n" not in got.message


# ---------------------------------------------------------------- RESP


def test_resp_encode() -> None:
    assert (
        resp.encode_command(["AUTH", "user", "pä ss"])
        == b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$6\r\np\xc3\xa4 ss\r\n"
    )


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"+PONG\r\n", "PONG"),
        (
            b"-LOADING Redis is loading the dataset in memory\r\n",
            resp.RespError("LOADING Redis is loading the dataset in memory"),
        ),
        (b":42\r\n", 42),
        (b":-7\r\n", -7),
        (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*2\r\n+OK\r\n*1\r\n:1\r\n", ["OK", [1]]),
    ],
)
def test_resp_parse(raw: bytes, value: resp.Reply) -> None:
    assert resp.parse_reply(raw) == (value, len(raw))
    for cut in range(len(raw)):  # every strict prefix is incomplete, never wrong
        assert resp.parse_reply(raw[:cut]) is None


@pytest.mark.parametrize(
    "raw", [b"HTTP/1.1 400 Bad Request\r\n", b"$abc\r\n", b"$3\r\nabcd\r\n", b":1x\r\n", b"\x00"]
)
def test_resp_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(resp.ProtocolError):
        resp.parse_reply(raw)


_replies = st.recursive(
    st.one_of(st.binary(max_size=20), st.integers(-(10**9), 10**9), st.none()),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


def _encode(value: resp.Reply) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    assert isinstance(value, list)
    return b"*%d\r\n" % len(value) + b"".join(_encode(v) for v in value)


@given(_replies, st.binary(max_size=8))
def test_resp_roundtrip_with_trailing_bytes(value: resp.Reply, tail: bytes) -> None:
    raw = _encode(value)
    assert resp.parse_reply(raw + tail) == (value, len(raw))


def test_resp_judgements() -> None:
    assert resp.judge_ping("PONG") == Result("Ready", "PONG")
    assert (
        resp.judge_ping(resp.RespError("LOADING Redis is loading the dataset in memory")).reason == "Loading"
    )
    assert resp.judge_ping(resp.RespError("NOAUTH Authentication required.")).reason == "Auth"
    assert resp.judge_ping(resp.RespError("MASTERDOWN Link with MASTER is down")).reason == "Protocol"
    assert resp.judge_ping(b"PONG").reason == "Protocol"
    assert resp.judge_auth("OK") is None
    wrong = resp.judge_auth(resp.RespError("WRONGPASS invalid username-password pair or user is disabled."))
    assert wrong is not None and wrong.reason == "Auth"
    unset = resp.judge_auth(resp.RespError("ERR AUTH <password> called without any password configured"))
    assert unset is not None and unset.reason == "Auth"


# ---------------------------------------------------------------- flags


def test_parse_every_type_in_rendered_form() -> None:
    env = {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "DEPGATE_NAMESPACE": "shop",
    }
    p = parse(["tcp", "--timeout=30", "--period=2", "--host=db", "--port=5432"], env)
    assert (p.kind, p.config) == ("tcp", TcpConfig("db", 5432))
    assert (p.common.timeout, p.common.period, p.common.attempt_timeout) == (30.0, 2.0, 5.0)
    p = parse(
        [
            "redis",
            "--timeout=0",
            "--period=1",
            "--host=cache",
            "--port=6380",
            "--tls",
            "--password-env=DEPGATE_REDIS_PASSWORD",
        ],
        env,
    )
    assert p.config == RedisConfig("cache", 6380, True, "DEPGATE_REDIS_PASSWORD", None, None)
    assert p.common.timeout == 0.0 and p.common.attempt_timeout == 5.0
    p = parse(
        [
            "http",
            "--timeout=2",
            "--url=https://api/healthz",
            "--expect-status=200",
            "--expect-status=204",
            "--ca-file=/depgate/ca/api/ca.crt",
            "--header=Authorization: Bearer x:y",
            "--insecure",
        ],
        env,
    )
    assert p.config == HttpConfig(
        "https://api/healthz", (200, 204), "/depgate/ca/api/ca.crt", (("Authorization", "Bearer x:y"),), True
    )
    assert p.common.attempt_timeout == 2.0  # min(5, --timeout)
    assert parse(["http", "--url=http://a/"], env).config.expect_status == (200,)  # type: ignore[union-attr]
    p = parse(["dns", "--name=data-tier.shop.svc.cluster.local."], env)
    assert p.config == DnsConfig("data-tier.shop.svc.cluster.local") and p.common.label is None
    sha = "AB" * 32
    p = parse(["download", "--url=https://x/m.bin", f"--sha256={sha}", "--dest=/depgate/shared/m.bin"], env)
    assert p.config == DownloadConfig("https://x/m.bin", "ab" * 32, "/depgate/shared/m.bin", None, False)
    p = parse(["verdict", "--timeout=0", "--period=1", "--policy=gate", "--precondition=jobs"], env)
    assert p.config == VerdictConfig(
        "gate",
        "jobs",
        "shop",
        "https://10.96.0.1:443",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    )
    p = parse(["verdict", "--policy=g", "--precondition=j"], {"KUBERNETES_SERVICE_HOST": "fd00::1"})
    assert isinstance(p.config, VerdictConfig)
    assert p.config.server == "https://[fd00::1]:443" and p.config.namespace is None
    p = parse(["tcp", "--host", "h", "--port", "1", "--name", "db", "--attempt-timeout=0.5"], {})
    assert p.common.label == "db" and p.common.attempt_timeout == 0.5


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["tcp", "--host=h"], "--port"),
        (["tcp", "--host=h", "--port=70000"], "--port"),
        (["tcp", "--host=h", "--port=1", "--timeout=-1"], "--timeout"),
        (["tcp", "--host=h", "--port=1", "--period=0"], "--period"),
        (["tcp", "--host=h", "--port=1", "--time=3"], "--time"),  # no abbreviations
        (["tcp", "--host=h", "--port=1", "--bogus"], "--bogus"),
        (["http", "--url=ftp://x/"], "--url"),
        (["http", "--url=http:///nohost"], "--url"),
        (["http", "--url=http://x/", "--expect-status=99"], "--expect-status"),
        (["http", "--url=http://x/", "--header=NoColon"], "--header"),
        (["download", "--url=http://x/", "--sha256=abc", "--dest=/d/f"], "--sha256"),
        (["download", "--url=http://x/", "--sha256=" + "a" * 64, "--dest=/d/"], "--dest"),
        (["redis", "--host=h", "--username-env=U"], "--username-env"),
        (["verdict", "--policy=p", "--precondition=c"], "--server"),
        (["nope"], "nope"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(argv, {})
    assert flag in str(err.value)


def test_header_values_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse(["http", "--url=http://x/", "--header=Bad Name: s3cr3t"], {})
    assert "s3cr3t" not in str(err.value)


def test_termination_log_from_argv() -> None:
    assert termination_log_from_argv(["tcp", "--termination-log=/tmp/x"]) == "/tmp/x"
    assert termination_log_from_argv(["tcp", "--termination-log", "/tmp/y"]) == "/tmp/y"
    assert termination_log_from_argv(["tcp"]) == "/dev/termination-log"


# ---------------------------------------------------------------- the loop, with a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Scripted:
    kind, target, bounded = "fake", "x", True

    def __init__(self, results: list[Result | Exception], clock: FakeClock, cost: float = 0.01) -> None:
        self.results = results
        self.clock = clock
        self.cost = cost
        self.calls = 0

    def attempt(self, ctx: Attempt) -> Result:
        self.calls += 1
        self.clock.now += self.cost
        r = self.results[min(self.calls - 1, len(self.results) - 1)]
        if isinstance(r, Exception):
            raise r
        return r

    def cleanup(self) -> None:
        pass


def test_loop_retries_until_ready_and_logs_changes_only() -> None:
    clock = FakeClock()
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    check = Scripted([refused] * 6 + [Result("Loading", "LOADING")] * 3 + [Result("Ready", "PONG")], clock)
    lines: list[str] = []
    out = run(
        check,
        Timing(0, 1.0, 5.0),
        StateLog("p", lines.append),
        clock=clock,
        sleep=clock.sleep,
        rand=lambda: 1.0,
        runner=run_inline,
    )
    assert out.ready and out.attempts == 10 and out.last == Result("Ready", "PONG")
    assert lines == ["p: waiting (Refused: connection refused)", "p: waiting (Loading: LOADING)"]
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


def test_loop_times_out_at_the_deadline() -> None:
    clock = FakeClock()
    check = Scripted([Result("HTTPStatus", "HTTP 503, want 200")], clock)
    out = run(
        check,
        Timing(10, 2.0, 5.0),
        StateLog("p", lambda s: None),
        clock=clock,
        sleep=clock.sleep,
        rand=lambda: 1.0,
        runner=run_inline,
    )
    assert not out.ready and out.last.reason == "HTTPStatus"
    assert out.elapsed == pytest.approx(10.0)
    assert max(clock.sleeps) <= 2.0


def test_loop_counts_an_overrunning_attempt_as_timeout() -> None:
    clock = FakeClock()
    check = Scripted([Result("Ready", "late")], clock)
    out = run(
        check,
        Timing(1, 1.0, 0.2),
        StateLog("p", lambda s: None),
        clock=clock,
        sleep=clock.sleep,
        runner=lambda fn, limit: None,
    )
    assert not out.ready and out.last.reason == "Timeout"


def test_loop_stops_on_config_error() -> None:
    clock = FakeClock()
    check = Scripted([ConfigError("--dest: cannot create /ro: Read-only file system")], clock)
    with pytest.raises(ConfigError):
        run(
            check,
            Timing(0, 1.0, 1.0),
            StateLog("p", lambda s: None),
            clock=clock,
            sleep=clock.sleep,
            runner=run_inline,
        )


# ---------------------------------------------------------------- verdict, pure


def _policy(state: str | None, rv: str = "7", name: str = "jobs") -> dict[str, object]:
    status: dict[str, object] = {}
    if state is not None:
        status["preconditions"] = [
            {"name": "other", "state": "Satisfied"},
            {
                "name": name,
                "state": state,
                "reason": "JobRunning",
                "message": "job migrate has not completed",
            },
        ]
    return {
        "metadata": {"name": "gate", "resourceVersion": rv},
        "spec": {"preconditions": [{"name": "other"}, {"name": name}]},
        "status": status,
    }


def test_judge() -> None:
    assert judge(_policy("Satisfied"), "gate", "jobs") == Result("Ready", "precondition jobs is Satisfied")
    blocking = judge(_policy("Blocking"), "gate", "jobs")
    assert blocking == Result("NotSatisfied", "Blocking/JobRunning: job migrate has not completed")
    assert "not judged yet" in judge(_policy(None), "gate", "jobs").message
    assert "declares no precondition jobs" in judge(_policy("Satisfied", name="x"), "gate", "jobs").message
    assert judge({"status": {"preconditions": "garbage"}}, "gate", "jobs").reason == "NotSatisfied"


def test_watch_path_is_the_documented_query() -> None:
    assert watch_path("shop", "gate", "123", 300) == (
        "/apis/depgate.io/v1alpha1/namespaces/shop/dependencypolicies?watch=true"
        "&fieldSelector=metadata.name%3Dgate&resourceVersion=123&allowWatchBookmarks=true&timeoutSeconds=300"
    )
    assert "resourceVersion" not in watch_path("shop", "gate", "", 5)


def test_parse_watch_line() -> None:
    ev = parse_watch_line(
        json.dumps({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}).encode()
    )
    assert (ev.type, ev.resource_version) == ("BOOKMARK", "9")
    for bad in [b"{", b"[]", b'{"type": "ADDED"}']:
        with pytest.raises(ValueError):
            parse_watch_line(bad)


def test_api_error_messages() -> None:
    body = json.dumps(
        {
            "kind": "Status",
            "message": 'dependencypolicies.depgate.io "gate" is forbidden: '
            'User "system:serviceaccount:shop:default" cannot get resource',
        }
    ).encode()
    forbidden = api_error(403, body, "get", "shop", "gate")
    assert forbidden.reason == "Forbidden"
    assert "cannot get dependencypolicies/gate in namespace shop" in forbidden.message
    assert "system:serviceaccount:shop:default" in forbidden.message
    assert forbidden.message.endswith("depgate grants this with RoleBinding depgate-verdict-gate"
        " of ClusterRole depgate-verdict-reader")
    long_ns = "n" * 63
    real = json.dumps(
        {
            "message": f'dependencypolicies.depgate.io "gate" is forbidden: User "system:serviceaccount:'
            f'{long_ns}:stranger" cannot get resource "dependencypolicies" in API group "depgate.io" '
            f'in the namespace "{long_ns}"'
        }
    ).encode()
    hinted = Failed(*_unpack(api_error(403, real, "get", long_ns, "gate"))).result.message
    assert hinted.endswith("depgate grants this with RoleBinding depgate-verdict-gate"
        " of ClusterRole depgate-verdict-reader") and "stranger" in hinted
    assert api_error(401, b"", "get", "shop", "gate").reason == "Unauthorized"
    assert api_error(404, b"", "get", "shop", "gate") == Result(
        "NotFound", "dependencypolicy shop/gate not found"
    )
    assert api_error(500, b"not json", "watch", "shop", "gate").reason == "HTTPStatus"


# ---------------------------------------------------------------- the start-up-cheap record decorator


def test_record_behaves_like_a_frozen_dataclass() -> None:
    from depgate.waiter._record import dataclass as record

    @record(frozen=True)
    class Point:
        x: int
        y: int = 2

    assert Point(1) == Point(x=1, y=2) and Point(1) != Point(1, 3)
    assert hash(Point(1)) == hash(Point(1, 2))
    assert repr(Point(1)) == "Point(x=1, y=2)"
    assert Point(1).__eq__((1, 2)) is NotImplemented
    with pytest.raises(AttributeError):
        Point(1).x = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, x=1)  # type: ignore[misc]

    @record
    class Box:
        items: list[int]

    b = Box([1])
    b.items = [2]
    assert b == Box([2])
