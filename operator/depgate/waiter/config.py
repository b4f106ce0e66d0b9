"""`depgate wait <type> --flag=value ...` -> frozen config dataclasses (pure: the env is passed in).

Every error is a ConfigError whose message starts with the flag at fault, for stderr and for the
termination log (`Config: --port: ...`); the waiter then exits 1.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence

from depgate.waiter.statelog import DEFAULT_TERMINATION_LOG

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; mypy knows the name
if TYPE_CHECKING:
    from dataclasses import dataclass
    from typing import NoReturn, TypeAlias
else:
    from depgate.waiter._record import dataclass

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_ATTEMPT_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 104857600  # 100 MiB: what a download may fetch when --max-bytes is not given
_TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ConfigError(Exception):
    """A bad flag or an unusable input named by a flag (exit code 1)."""


class HelpExit(Exception):
    """--help was printed; exit with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Common:
    timeout: float  # overall, seconds; 0 = forever
    period: float  # the longest pause between attempts
    attempt_timeout: float
    termination_log: str
    label: str | None
    fast_window: float = 60.0  # seconds during which pauses stay at or under 0.25 s


@dataclass(frozen=True)
class TcpConfig:
    host: str
    port: int


@dataclass(frozen=True)
class RedisConfig:
    host: str
    port: int
    tls: bool
    password_env: str | None
    username_env: str | None
    ca_file: str | None


@dataclass(frozen=True)
class HttpConfig:
    url: str
    expect_status: tuple[int, ...]
    ca_file: str | None
    headers: tuple[tuple[str, str], ...]
    insecure: bool
    username_env: str | None = None  # basic auth: the username and password are read from these env vars
    password_env: str | None = None
    header_envs: tuple[tuple[str, str], ...] = ()  # (header name, env var holding its value)


@dataclass(frozen=True)
class DnsConfig:
    name: str


@dataclass(frozen=True)
class DownloadConfig:
    url: str
    sha256: str
    dest: str
    ca_file: str | None
    insecure: bool
    max_bytes: int = DEFAULT_MAX_BYTES
    username_env: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class VerdictConfig:
    policy: str
    precondition: str
    namespace: str | None  # None: read from <SA_DIR>/namespace when the check is built
    server: str
    token_file: str
    ca_file: str


TypeConfig: TypeAlias = TcpConfig | RedisConfig | HttpConfig | DnsConfig | DownloadConfig | VerdictConfig


@dataclass(frozen=True)
class Parsed:
    kind: str
    common: Common
    config: TypeConfig


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --time must not mean --timeout
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise ConfigError(flag_first(message))

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message)
        raise HelpExit(status)


def flag_first(message: str) -> str:
    """argparse's messages, reworded to start with the flag at fault."""
    required = "the following arguments are required: "
    unknown = "unrecognized arguments: "
    if message.startswith("argument "):
        return message[len("argument ") :]
    if message.startswith(required):
        flags = message[len(required) :]
        return f"{flags}: required" if "," not in flags else f"{flags}: all required"
    if message.startswith(unknown):
        return f"{message[len(unknown) :]}: unknown flag (the flags are in `depgate wait <type> --help`)"
    return message


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {text!r}")
    return int(text)


def _status(text: str) -> int:
    if not text.isdigit() or not 100 <= int(text) <= 599:
        raise argparse.ArgumentTypeError(f"expected an HTTP status 100..599, got {text!r}")
    return int(text)


def _byte_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of bytes >= 1, got {text!r}")
    return int(text)


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or not set(name) <= _TCHAR:
        # never echo the value: headers carry tokens
        raise argparse.ArgumentTypeError("expected 'Name: value' with a token for Name")
    value = value.strip()
    if any(ch in value for ch in "\r\n\0"):
        raise argparse.ArgumentTypeError(f"the value of header {name} contains a line break")
    return name, value


def _header_env(text: str) -> tuple[str, str]:
    name, sep, var = text.partition("=")
    if not sep or not name or not set(name) <= _TCHAR or not var.strip():
        raise argparse.ArgumentTypeError("expected 'Name=VAR' with a token for Name")
    return name, var.strip()


def _basic_auth_flags(p: _Parser) -> None:
    p.add_argument("--username-env", type=_nonempty, metavar="VAR", help="basic auth: the username in $VAR")
    p.add_argument("--password-env", type=_nonempty, metavar="VAR", help="basic auth: the password in $VAR")


def _basic_auth_envs(ns: argparse.Namespace) -> tuple[str | None, str | None]:
    if (ns.username_env is None) != (ns.password_env is None):
        flag = "--password-env" if ns.username_env else "--username-env"
        raise ConfigError(f"{flag}: basic auth needs both --username-env and --password-env")
    return ns.username_env, ns.password_env


def check_url(flag: str, url: str) -> str:
    """An absolute http(s) URL with a host, else ConfigError naming `flag`."""
    from urllib.parse import urlsplit

    if any(ch.isspace() for ch in url):
        raise ConfigError(f"{flag}: the URL contains whitespace")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{flag}: bad URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{flag}: expected an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigError(f"{flag}: the URL has no host")
    return url


def _common_flags(p: _Parser) -> None:
    p.add_argument("--timeout", type=_seconds, default=0.0, help="overall seconds; 0 = forever (default)")
    p.add_argument(
        "--period", type=_positive_seconds, default=1.0, help="longest pause between attempts (default 1)"
    )
    p.add_argument(
        "--fast-window", type=_seconds, default=60.0,
        help="for this many seconds from the start, pause at most 0.25 s between attempts (default 60; 0 = off)",
    )
    p.add_argument(
        "--attempt-timeout",
        type=_positive_seconds,
        default=None,
        help=f"seconds per attempt (default {DEFAULT_ATTEMPT_TIMEOUT:g}, at most --timeout)",
    )
    p.add_argument(
        "--termination-log",
        default=DEFAULT_TERMINATION_LOG,
        help=f"file for the one-line exit reason (default {DEFAULT_TERMINATION_LOG})",
    )


def _tcp(p: _Parser) -> None:
    p.add_argument("--host", required=True, type=_nonempty)
    p.add_argument("--port", required=True, type=_port)


def _redis(p: _Parser) -> None:
    p.add_argument("--host", required=True, type=_nonempty)
    p.add_argument("--port", type=_port, default=6379)
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-file", type=_nonempty, help="PEM CA bundle for --tls (default: system CAs)")
    p.add_argument("--password-env", type=_nonempty, metavar="VAR", help="AUTH with the password in $VAR")
    p.add_argument("--username-env", type=_nonempty, metavar="VAR", help="AUTH as the ACL user in $VAR")


def _http(p: _Parser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--expect-status", type=_status, action="append", help="repeatable; default 200")
    p.add_argument("--ca-file", type=_nonempty, help="PEM CA bundle to verify the server with")
    p.add_argument("--header", type=_header, action="append", default=[], help="'Name: value', repeatable")
    p.add_argument(
        "--header-env", type=_header_env, action="append", default=[], metavar="NAME=VAR",
        help="send header NAME with the value of $VAR (a Secret's key), repeatable",
    )
    _basic_auth_flags(p)
    p.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")


def _dns(p: _Parser) -> None:
    p.add_argument("--name", required=True, type=_nonempty, help="the name to resolve")


def _download(p: _Parser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--sha256", required=True)
    p.add_argument("--dest", required=True, type=_nonempty)
    p.add_argument(
        "--max-bytes", type=_byte_count, default=DEFAULT_MAX_BYTES,
        help=f"the largest body fetched; a larger one fails with TooLarge (default {DEFAULT_MAX_BYTES})",
    )
    p.add_argument("--ca-file", type=_nonempty, help="PEM CA bundle to verify the server with")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    _basic_auth_flags(p)


def _verdict(p: _Parser) -> None:
    p.add_argument("--policy", required=True, type=_nonempty)
    p.add_argument("--precondition", required=True, type=_nonempty)
    p.add_argument("--namespace", type=_nonempty, help="default $DEPGATE_NAMESPACE, else the SA's")
    p.add_argument("--server", help="default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT")
    p.add_argument("--token-file", type=_nonempty, default=f"{SA_DIR}/token")
    p.add_argument("--ca-file", type=_nonempty, default=f"{SA_DIR}/ca.crt")


_SUBCOMMANDS: dict[str, tuple[str, Callable[[_Parser], None]]] = {
    "tcp": ("a TCP connection succeeds", _tcp),
    "redis": ("Redis answers PING with PONG (after AUTH when asked)", _redis),
    "http": ("an HTTP(S) GET answers with an expected status", _http),
    "dns": ("a name resolves", _dns),
    "download": ("fetch a file, verify its sha256, move it into place atomically", _download),
    "verdict": ("the operator judged the precondition Satisfied (watches the DependencyPolicy)", _verdict),
}


def _type_flags(p: _Parser, kind: str) -> None:
    _common_flags(p)
    if kind != "dns":  # for dns, --name is the name to resolve
        p.add_argument("--name", dest="label", type=_nonempty, help="a label for the log lines")
    _SUBCOMMANDS[kind][1](p)


def type_parser(kind: str) -> _Parser:
    """The parser of one type alone: what a run builds (argparse is slow to build; one is enough)."""
    p = _Parser(prog=f"depgate wait {kind}", description=_SUBCOMMANDS[kind][0])
    _type_flags(p, kind)
    return p


def build_parser() -> _Parser:
    """The whole `depgate wait` parser, for `--help` and for a missing or unknown type."""
    parser = _Parser(
        prog="depgate wait",
        description="Wait for one precondition. Exit 0 ready, 124 timed out, 1 bad configuration.",
    )
    sub = parser.add_subparsers(dest="kind", metavar="<type>", parser_class=_Parser)
    sub.required = True
    for kind, (help_text, _) in _SUBCOMMANDS.items():
        _type_flags(sub.add_parser(kind, help=help_text, description=help_text), kind)
    return parser


def default_server(env: Mapping[str, str]) -> str | None:
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
    if not host:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}:{port}"


def parse(argv: Sequence[str], env: Mapping[str, str]) -> Parsed:
    if argv and argv[0] in _SUBCOMMANDS:
        kind = argv[0]
        ns = type_parser(kind).parse_args(list(argv[1:]))
    else:
        build_parser().parse_args(list(argv))  # prints help, or raises for the missing/unknown type
        raise ConfigError("<type>: required")  # pragma: no cover - parse_args raised already
    timeout: float = ns.timeout
    attempt = ns.attempt_timeout
    if attempt is None:
        attempt = min(DEFAULT_ATTEMPT_TIMEOUT, timeout) if timeout > 0 else DEFAULT_ATTEMPT_TIMEOUT
    label = None if kind == "dns" else ns.label
    common = Common(timeout, ns.period, attempt, ns.termination_log, label, ns.fast_window)
    config: TypeConfig
    if kind == "tcp":
        config = TcpConfig(ns.host, ns.port)
    elif kind == "redis":
        if ns.username_env and not ns.password_env:
            raise ConfigError("--username-env: needs --password-env too")
        config = RedisConfig(ns.host, ns.port, ns.tls, ns.password_env, ns.username_env, ns.ca_file)
    elif kind == "http":
        statuses = tuple(dict.fromkeys(ns.expect_status or [200]))
        username_env, password_env = _basic_auth_envs(ns)
        config = HttpConfig(
            check_url("--url", ns.url), statuses, ns.ca_file, tuple(ns.header), ns.insecure,
            username_env, password_env, tuple(ns.header_env),
        )
    elif kind == "dns":
        config = DnsConfig(ns.name.rstrip(".") or ns.name)
    elif kind == "download":
        digest = ns.sha256.strip().lower()
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise ConfigError("--sha256: expected 64 hex digits")
        if ns.dest.endswith("/"):
            raise ConfigError("--dest: expected a file path, got a directory")
        username_env, password_env = _basic_auth_envs(ns)
        config = DownloadConfig(
            check_url("--url", ns.url), digest, ns.dest, ns.ca_file, ns.insecure, ns.max_bytes,
            username_env, password_env,
        )
    else:
        server = ns.server or default_server(env)
        if not server:
            raise ConfigError("--server: not given, and KUBERNETES_SERVICE_HOST is not set")
        check_url("--server", server)
        namespace = ns.namespace or env.get("DEPGATE_NAMESPACE", "").strip() or None
        config = VerdictConfig(ns.policy, ns.precondition, namespace, server, ns.token_file, ns.ca_file)
    return Parsed(kind, common, config)


def termination_log_from_argv(argv: Sequence[str]) -> str:
    """Best effort, for errors found before parsing succeeded: the --termination-log given, if any."""
    path = DEFAULT_TERMINATION_LOG
    args = list(argv)
    for i, arg in enumerate(args):
        if arg.startswith("--termination-log="):
            path = arg.split("=", 1)[1]
        elif arg == "--termination-log" and i + 1 < len(args):
            path = args[i + 1]
    return path
