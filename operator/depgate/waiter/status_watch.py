"""`depgate wait verdict`: the waiter's watch on its policy's status, until the operator's verdict
on a precondition (depgate.verdicts, written into status.preconditions[]) says Satisfied.

GET the DependencyPolicy; while its status does not say `Satisfied` for our precondition, WATCH
it (one object, by field selector) from the resourceVersion we saw: reconnect when the server
ends the watch, list again on 410 Gone. The bearer token is read from its file on every
connection (projected tokens rotate). Pure parts: paths, `judge`, `parse_watch_line`,
`api_error`. For in-process use (tests against a real API server): `wait_for_verdict`.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote

from depgate.constants import API_VERSION, PLURAL, SATISFIED
from depgate.waiter.checks import USER_AGENT, _Base, _HttpTarget, tls_context
from depgate.waiter.config import SA_DIR, ConfigError, VerdictConfig
from depgate.waiter.loop import Attempt, Timing, run
from depgate.waiter.reasons import MAX_MESSAGE, Failed, Result, clean
from depgate.waiter.statelog import Outcome, StateLog

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time
if TYPE_CHECKING:
    import http.client
    import ssl
    from dataclasses import dataclass
    from typing import Any
else:
    from depgate.waiter._record import dataclass

WATCH_TIMEOUT = 300  # seconds the server keeps one watch open
READ_SLACK = 30.0  # how much longer than that a read may block before we call the stream dead
MAX_OBJECT = 8 << 20
MAX_RELISTS = 5  # consecutive 410s without a usable watch before backing off


def collection_path(namespace: str, policy: str | None = None) -> str:
    path = f"/apis/{API_VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}"
    return path if policy is None else f"{path}/{quote(policy, safe='')}"


def watch_path(namespace: str, policy: str, resource_version: str, timeout_seconds: int) -> str:
    query = f"watch=true&fieldSelector=metadata.name%3D{quote(policy, safe='')}"
    if resource_version:
        query += f"&resourceVersion={quote(resource_version, safe='')}"
    query += f"&allowWatchBookmarks=true&timeoutSeconds={timeout_seconds}"
    return f"{collection_path(namespace)}?{query}"


def judge(obj: Mapping[str, Any], policy: str, precondition: str) -> Result:
    """Ready when status.preconditions[name == precondition].state is Satisfied; else why not."""
    status = obj.get("status")
    entries = status.get("preconditions") if isinstance(status, Mapping) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and entry.get("name") == precondition:
            state = entry.get("state")
            reason = entry.get("reason")
            message = entry.get("message")
            if state == SATISFIED:
                return Result("Ready", f"precondition {precondition} is {SATISFIED}")
            head = f"{state or 'no state'}" + (f"/{reason}" if reason else "")
            return Result("NotSatisfied", clean(f"{head}: {message}" if message else head))
    spec = obj.get("spec")
    declared = spec.get("preconditions") if isinstance(spec, Mapping) else None
    names = (
        {p.get("name") for p in declared if isinstance(p, Mapping)} if isinstance(declared, list) else set()
    )
    if declared is not None and precondition not in names:
        return Result("NotSatisfied", f"policy {policy} declares no precondition {precondition}")
    return Result("NotSatisfied", f"not judged yet: the status has no entry for {precondition}")


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
    object: Mapping[str, Any]

    @property
    def resource_version(self) -> str:
        meta = self.object.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        return rv if isinstance(rv, str) else ""

    @property
    def name(self) -> str:
        meta = self.object.get("metadata")
        name = meta.get("name") if isinstance(meta, Mapping) else None
        return name if isinstance(name, str) else ""


class WatchProtocolError(ValueError):
    pass


def parse_watch_line(line: bytes) -> WatchEvent:
    """One line of a watch stream: `{"type": ..., "object": {...}}`."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise WatchProtocolError(f"watch line is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WatchProtocolError("watch line is not a JSON object")
    kind, obj = data.get("type"), data.get("object")
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise WatchProtocolError("watch line lacks type or object")
    return WatchEvent(kind, obj)


def _status_message(body: bytes | Mapping[str, Any]) -> str:
    if isinstance(body, Mapping):
        data: Any = body
    else:
        try:
            data = json.loads(body)
        except ValueError:
            return ""
    message = data.get("message") if isinstance(data, Mapping) else None
    return clean(message, 240) if isinstance(message, str) else ""


def api_error(code: int, body: bytes | Mapping[str, Any], verb: str, namespace: str, policy: str) -> Result:
    """A non-2xx answer from the API server (or an ERROR watch event) as a reason and message."""
    detail = _status_message(body)
    if code == 401:
        return Result(
            "Unauthorized",
            clean(f"the API server rejected the ServiceAccount token (401){': ' + detail if detail else ''}"),
        )
    if code == 403:
        head = f"the ServiceAccount cannot {verb} {PLURAL}/{policy} in namespace {namespace}"
        hint = f"; depgate grants this with RoleBinding depgate-verdict-{policy} of ClusterRole depgate-verdict-reader"
        detail = clean(detail, max(40, MAX_MESSAGE - len(head) - len(hint) - 2))  # the hint must survive
        return Result("Forbidden", clean(f"{head}{': ' + detail if detail else ''}{hint}"))
    if code == 404:
        return Result("NotFound", f"dependencypolicy {namespace}/{policy} not found")
    return Result(
        "HTTPStatus", clean(f"the API server answered {code} to {verb}{': ' + detail if detail else ''}")
    )


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def _read_namespace(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"--namespace: not given, DEPGATE_NAMESPACE is not set, and {path} is unreadable: "
            f"{exc.strerror or exc}"
        ) from None


class VerdictCheck(_Base):
    kind = "verdict"
    bounded = False  # one attempt is a list + watch that lasts until Ready or the deadline

    def __init__(
        self,
        cfg: VerdictConfig,
        *,
        watch_timeout: int = WATCH_TIMEOUT,
        namespace_file: str = f"{SA_DIR}/namespace",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self.precondition = cfg.policy, cfg.precondition
        self.namespace = cfg.namespace or _read_namespace(namespace_file)
        if not self.namespace:
            raise ConfigError(f"--namespace: not given and {namespace_file} is empty")
        self.server = _HttpTarget(cfg.server)
        if self.server.path not in ("/", ""):
            raise ConfigError("--server: expected scheme://host:port without a path")
        self.tls: ssl.SSLContext | None = tls_context(cfg.ca_file, False) if self.server.https else None
        self.token_file = cfg.token_file
        try:
            self._token()
        except OSError as exc:
            raise ConfigError(f"--token-file: cannot read {cfg.token_file}: {exc.strerror or exc}") from None
        self.watch_timeout = watch_timeout
        self.clock = clock
        self.target = f"{self.namespace}/{self.policy} precondition {self.precondition}"
        self.connections = 0  # for tests and curiosity
        self.sock: socket.socket | None = None

    def _token(self) -> str:
        with open(self.token_file, encoding="utf-8") as f:
            return f.read().strip()

    def _open(self, path: str, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send an authenticated GET; the caller closes the connection."""
        try:
            token = self._token()
        except OSError as exc:
            raise Failed(
                "Unauthorized", f"cannot read the token file {self.token_file}: {exc.strerror}"
            ) from None
        conn = self.server.connect(timeout, self.tls)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.putheader("Accept", "application/json")
            conn.putheader("User-Agent", USER_AGENT)
            if token:
                conn.putheader("Authorization", f"Bearer {token}")
            conn.endheaders()
            self.connections += 1
            self.sock = conn.sock  # kept: getresponse() may hand the socket over to the response
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def attempt(self, ctx: Attempt) -> Result:
        relists = 0
        while True:
            seen, rv = self._get(ctx)
            if seen.ready:
                return seen
            ctx.observe(seen)
            try:
                return self._watch(ctx, rv)
            except _Gone:
                relists += 1
                if relists > MAX_RELISTS:
                    raise Failed("Protocol", "the watch kept answering 410 Gone") from None

    def _get(self, ctx: Attempt) -> tuple[Result, str]:
        conn, resp = self._open(collection_path(self.namespace, self.policy), ctx.timeout)
        try:
            body = resp.read(MAX_OBJECT + 1)
        finally:
            conn.close()
        if resp.status == 404:
            # watch from "now" without a resourceVersion: the server starts with the current state
            return api_error(404, body, "get", self.namespace, self.policy), ""
        if resp.status != 200:
            raise Failed(*_unpack(api_error(resp.status, body, "get", self.namespace, self.policy)))
        if len(body) > MAX_OBJECT:
            raise Failed("ResponseTooLarge", "the DependencyPolicy is larger than 8 MiB")
        try:
            obj = json.loads(body)
        except ValueError:
            raise Failed("Protocol", "the API server answered with invalid JSON") from None
        if not isinstance(obj, dict):
            raise Failed("Protocol", "the API server answered with a non-object")
        return judge(obj, self.policy, self.precondition), WatchEvent("GET", obj).resource_version

    def _watch_seconds(self, ctx: Attempt) -> int:
        remaining = ctx.remaining()
        if remaining is None:
            return self.watch_timeout
        return max(1, min(self.watch_timeout, math.ceil(remaining)))

    def _watch(self, ctx: Attempt, rv: str) -> Result:
        """Watch until Ready (returned); raise _Gone to list again, Failed on errors."""
        while True:
            seconds = self._watch_seconds(ctx)
            started = self.clock()
            events = 0
            conn, resp = self._open(watch_path(self.namespace, self.policy, rv, seconds), ctx.timeout)
            try:
                if resp.status == 410:
                    raise _Gone()
                if resp.status != 200:
                    body = resp.read(MAX_OBJECT)
                    raise Failed(*_unpack(api_error(resp.status, body, "watch", self.namespace, self.policy)))
                if self.sock is not None:  # reads wait for events far longer than connect/headers may
                    self.sock.settimeout(seconds + READ_SLACK)
                while True:
                    line = resp.readline(MAX_OBJECT)
                    if not line:
                        break
                    if not line.endswith(b"\n") and len(line) >= MAX_OBJECT:
                        raise Failed("ResponseTooLarge", "a watch event is larger than 8 MiB")
                    if not line.strip():
                        continue
                    try:
                        event = parse_watch_line(line)
                    except WatchProtocolError as exc:
                        raise Failed("Protocol", str(exc)) from None
                    events += 1
                    resume, ready = self._handle(ctx, event)
                    if ready is not None:
                        return ready
                    rv = resume or rv
            finally:
                conn.close()
            if events == 0 and self.clock() - started < 1.0:
                raise Failed("Protocol", "the watch ended at once without any event")

    def _handle(self, ctx: Attempt, event: WatchEvent) -> tuple[str, Result | None]:
        """Act on one event: (resourceVersion to resume from, '' = keep the old one; Ready or None)."""
        if event.type == "BOOKMARK":
            return event.resource_version, None
        if event.type == "ERROR":
            code = event.object.get("code")
            if code == 410:
                raise _Gone()
            code = code if isinstance(code, int) else 500
            raise Failed(*_unpack(api_error(code, event.object, "watch", self.namespace, self.policy)))
        if event.name and event.name != self.policy:
            return event.resource_version, None
        if event.type == "DELETED":
            ctx.observe(Result("NotFound", f"dependencypolicy {self.namespace}/{self.policy} was deleted"))
            return event.resource_version, None
        if event.type in ("ADDED", "MODIFIED"):
            seen = judge(event.object, self.policy, self.precondition)
            if seen.ready:
                return event.resource_version, seen
            ctx.observe(seen)
            return event.resource_version, None
        return "", None  # an event type from the future: ignore it


def _unpack(result: Result) -> tuple[Any, str]:
    return result.reason, result.message


def wait_for_verdict(
    cfg: VerdictConfig,
    *,
    timeout: float = 0.0,
    period: float = 1.0,
    attempt_timeout: float = 5.0,
    write: Callable[[str], None] | None = None,
    watch_timeout: int = WATCH_TIMEOUT,
) -> Outcome:
    """Run `depgate wait verdict` in-process (no exit, no termination log); the Outcome says how it ended."""
    check = VerdictCheck(cfg, watch_timeout=watch_timeout)
    log = StateLog(f"depgate-wait verdict {check.target}", write or (lambda line: None))
    outcome = run(check, Timing(timeout, period, attempt_timeout), log)
    log.finish(outcome)
    return outcome
