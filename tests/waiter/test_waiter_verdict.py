"""`depgate wait verdict` against a loopback HTTP server that speaks the API server's watch protocol.

The server streams real watch JSON lines (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR 410) over a
chunked HTTP response, as kube-apiserver does. The test against the real API server lives with the
control-plane tests; these pin the protocol handling: resourceVersions, bookmarks, reconnects,
re-lists, token rotation, 401/403/404.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from waiter_loopback import Waiter, wait_until

from depgate.waiter.config import VerdictConfig
from depgate.waiter.statelog import Outcome
from depgate.waiter.status_watch import wait_for_verdict

pytestmark = pytest.mark.waiter

OBJECT_PATH = "/apis/depgate.io/v1alpha1/namespaces/shop/dependencypolicies/gate"
COLLECTION_PATH = "/apis/depgate.io/v1alpha1/namespaces/shop/dependencypolicies"
END = "END"


def policy(state: str, rv: str, message: str = "job migrate has not completed") -> dict[str, Any]:
    return {
        "apiVersion": "depgate.io/v1alpha1",
        "kind": "DependencyPolicy",
        "metadata": {"name": "gate", "namespace": "shop", "resourceVersion": rv},
        "spec": {"preconditions": [{"name": "db"}, {"name": "jobs", "job": {"name": "migrate"}}]},
        "status": {
            "preconditions": [
                {"name": "db", "type": "tcp", "state": "Satisfied"},
                {"name": "jobs", "type": "job", "state": state, "reason": "JobRunning", "message": message},
            ]
        },
    }


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rv: str) -> dict[str, Any]:
    return event("BOOKMARK", {"kind": "DependencyPolicy", "metadata": {"resourceVersion": rv}})


GONE = event(
    "ERROR",
    {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Expired",
        "code": 410,
        "message": "too old resource version: 10 (25)",
    },
)


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    auth: str

    @property
    def watch(self) -> bool:
        return self.query.get("watch") == ["true"]

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class FakeApi:
    """GET answers with `obj` (or `get_status`); each watch streams items from `events` until END."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.get_status = 200
        self.watch_statuses: list[int] = []
        self.events: queue.Queue[Any] = queue.Queue()
        self.seen: list[Seen] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(parts.path, parse_qs(parts.query), self.headers.get("Authorization", ""))
                api.seen.append(seen)
                if seen.watch:
                    self.watch()
                elif api.get_status != 200:
                    self.status(api.get_status)
                elif api.obj is None:
                    self.status(404)
                else:
                    self.json(200, api.obj)

            def json(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def status(self, code: int) -> None:
                messages = {
                    403: 'dependencypolicies.depgate.io "gate" is forbidden: User '
                    '"system:serviceaccount:shop:default" cannot get resource "dependencypolicies"',
                    401: "Unauthorized",
                    404: 'dependencypolicies.depgate.io "gate" not found',
                }
                self.json(
                    code,
                    {
                        "kind": "Status",
                        "status": "Failure",
                        "code": code,
                        "message": messages.get(code, "boom"),
                    },
                )

            def watch(self) -> None:
                code = api.watch_statuses.pop(0) if api.watch_statuses else 200
                if code != 200:
                    self.status(code)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while True:
                    try:
                        item = api.events.get(timeout=60)
                    except queue.Empty:
                        break
                    if item == END:
                        break
                    line = (json.dumps(item) + "\n").encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    if item["type"] == "ERROR":  # the API server ends the stream after an ERROR event
                        break
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self) -> list[Seen]:
        return [s for s in list(self.seen) if not s.watch]

    def watches(self) -> list[Seen]:
        return [s for s in list(self.seen) if s.watch]

    def close(self) -> None:
        self.events.put(END)
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    yield server
    server.close()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


class InProcess:
    """wait_for_verdict in a thread, with its log lines collected."""

    def __init__(self, api: FakeApi, token: Path, timeout: float = 60.0) -> None:
        self.lines: list[str] = []
        self.outcome: Outcome | None = None
        cfg = VerdictConfig("gate", "jobs", "shop", api.server, str(token), "/nonexistent/ca.crt")

        def target() -> None:
            self.outcome = wait_for_verdict(cfg, timeout=timeout, period=0.2, write=self.lines.append)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 30.0) -> Outcome:
        self.thread.join(timeout)
        assert self.outcome is not None, f"wait_for_verdict still running: {self.lines}"
        return self.outcome


def test_satisfied_at_the_first_get_needs_no_watch(api: FakeApi, token: Path) -> None:
    api.obj = policy("Satisfied", "5")
    out = InProcess(api, token).result()
    assert out.ready and out.attempts == 1
    assert [s.path for s in api.seen] == [OBJECT_PATH]
    assert api.seen[0].auth == "Bearer token-1"


def test_watch_resumes_from_bookmarks_relists_on_gone_and_rereads_the_token(
    api: FakeApi, token: Path
) -> None:
    api.obj = policy("Blocking", "10")
    run = InProcess(api, token)

    wait_until(lambda: len(api.watches()) == 1, 30, "the first watch")
    first = api.watches()[0]
    assert first.path == COLLECTION_PATH
    assert (first.q("fieldSelector"), first.q("resourceVersion"), first.q("allowWatchBookmarks")) == (
        "metadata.name=gate",
        "10",
        "true",
    )
    assert 50 <= int(first.q("timeoutSeconds") or 0) <= 60  # never longer than the time left (60 s)
    api.events.put(bookmark("12"))
    api.events.put(event("MODIFIED", policy("Blocking", "13", "job migrate: 1 active pod")))
    wait_until(
        lambda: any("1 active pod" in line for line in run.lines), 30, "the MODIFIED event to be logged"
    )
    token.write_text("token-2\n")  # a projected token rotates
    api.events.put(END)  # the server ends the watch (its timeoutSeconds): resume from the last version

    wait_until(lambda: len(api.watches()) == 2, 30, "a second watch")
    assert api.watches()[1].q("resourceVersion") == "13"
    assert api.watches()[1].auth == "Bearer token-2"
    api.events.put(bookmark("14"))
    api.events.put(END)
    wait_until(lambda: len(api.watches()) == 3, 30, "a third watch")
    assert api.watches()[2].q("resourceVersion") == "14"  # a bookmark alone moves the resume point

    api.obj = policy("Blocking", "25")
    api.events.put(GONE)  # 410: list again, then watch from the list's version
    wait_until(lambda: len(api.watches()) == 4, 30, "the watch after the re-list")
    assert len(api.gets()) == 2
    assert api.watches()[3].q("resourceVersion") == "25"

    api.events.put(event("MODIFIED", policy("Satisfied", "26")))
    out = run.result()
    assert out.ready and out.last.message == "precondition jobs is Satisfied"
    assert out.attempts == 1  # one long attempt: no backoff between watches
    assert [line.split(": ", 1)[1] for line in run.lines] == [
        "waiting (NotSatisfied: Blocking/JobRunning: job migrate has not completed)",
        "waiting (NotSatisfied: Blocking/JobRunning: job migrate: 1 active pod)",
        "waiting (NotSatisfied: Blocking/JobRunning: job migrate has not completed)",
        run.lines[-1].split(": ", 1)[1],
    ]
    assert run.lines[-1].startswith("depgate-wait verdict shop/gate precondition jobs: ready after ")


def test_watch_http_410_relists(api: FakeApi, token: Path) -> None:
    api.obj = policy("Pending", "3")
    api.watch_statuses = [410]
    run = InProcess(api, token)
    wait_until(lambda: len(api.watches()) == 2, 30, "a watch after the re-list")
    assert len(api.gets()) == 2
    api.events.put(event("MODIFIED", policy("Satisfied", "4")))
    assert run.result().ready


def test_not_found_then_created_and_deleted(api: FakeApi, token: Path) -> None:
    run = InProcess(api, token)
    wait_until(lambda: len(api.watches()) == 1, 30, "a watch after 404")
    assert api.watches()[0].q("resourceVersion") is None  # from now, the server sends the current state
    api.events.put(event("ADDED", policy("Blocking", "7")))
    api.events.put(event("DELETED", policy("Blocking", "8")))
    api.events.put(
        event("ADDED", {**policy("Satisfied", "9"), "metadata": {"name": "other", "resourceVersion": "9"}})
    )
    api.events.put(event("ADDED", policy("Satisfied", "10")))
    out = run.result()
    assert out.ready
    messages = [line.split(": ", 1)[1] for line in run.lines[:-1]]
    assert messages == [
        "waiting (NotFound: dependencypolicy shop/gate not found)",
        "waiting (NotSatisfied: Blocking/JobRunning: job migrate has not completed)",
        "waiting (NotFound: dependencypolicy shop/gate was deleted)",
    ]


@pytest.mark.parametrize(
    ("code", "reason", "text"),
    [
        (403, "Forbidden", "the ServiceAccount cannot get dependencypolicies/gate in namespace shop: "),
        (401, "Unauthorized", "the API server rejected the ServiceAccount token (401)"),
    ],
)
def test_forbidden_and_unauthorized(api: FakeApi, token: Path, code: int, reason: str, text: str) -> None:
    api.get_status = code
    out = InProcess(api, token, timeout=1.5).result()
    assert not out.ready and out.last.reason == reason
    assert text in out.last.message
    if code == 403:
        assert out.last.message.endswith("depgate grants this with RoleBinding depgate-verdict-gate"
        " of ClusterRole depgate-verdict-reader")
        assert "system:serviceaccount:shop:default" in out.last.message
    assert len(api.gets()) >= 2  # retried: RBAC may be granted a moment later


def test_the_cli_end_to_end(api: FakeApi, token: Path, tmp_path: Path) -> None:
    api.obj = policy("Blocking", "10")
    args = [
        "verdict",
        "--timeout=60",
        "--period=1",
        "--policy=gate",
        "--precondition=jobs",
        f"--server={api.server}",
        f"--token-file={token}",
    ]
    w = Waiter(args, tmp_path / "termination-log", env={"DEPGATE_NAMESPACE": "shop"})
    try:
        w.wait_for_line("waiting (NotSatisfied: Blocking/JobRunning: job migrate has not completed)")
        wait_until(lambda: len(api.watches()) == 1, 30, "the watch")
        api.events.put(event("MODIFIED", policy("Satisfied", "11")))
        assert w.wait(30) == 0, w.stderr
        assert w.termination().startswith(
            "Ready: verdict shop/gate precondition jobs: precondition jobs is Satisfied after "
        )
    finally:
        w.stop()


def test_the_cli_times_out_with_the_operators_reason(api: FakeApi, token: Path, tmp_path: Path) -> None:
    api.obj = policy("Blocking", "10")
    args = [
        "verdict",
        "--timeout=1.5",
        "--policy=gate",
        "--precondition=jobs",
        "--namespace=shop",
        f"--server={api.server}",
        f"--token-file={token}",
    ]
    w = Waiter(args, tmp_path / "termination-log")
    try:
        assert w.wait(30) == 124, w.stderr
        assert w.termination().startswith(
            "Timeout: NotSatisfied: Blocking/JobRunning: job migrate has not completed after 1."
        )
    finally:
        w.stop()
