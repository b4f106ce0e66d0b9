"""What depgate makes of Kopf's own log lines (depgate.handlers' filter on Kopf's watching logger).

Kopf's real API client (kopf._cogs.clients.api.request, the code that lists and watches for Kopf)
talks to a loopback HTTP server that answers as a kube-apiserver whose watch cache is still filling:
`429 storage is (re)initializing` (issue 16, item 10: an ERROR line at start-up for a harmless retry).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import api, errors

from depgate import handlers

WATCHING = "kopf._cogs.clients.watching"  # the logger Kopf's lists and watches log their requests with
INITIALIZING = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "storage is (re)initializing", "reason": "TooManyRequests", "code": 429}


class _Context:
    """What kopf's api.request needs of its authenticated context: a session and the server."""

    def __init__(self, session: aiohttp.ClientSession, server: str) -> None:
        self.session, self.server, self.responses = session, server, []

    def add_response(self, response: Any) -> None:
        self.responses.append(response)


async def _kopf_request(answers: list[tuple[int, dict[str, Any]]], backoffs: list[float]) -> tuple[int, str]:
    """Kopf's request through a server that gives `answers` in turn; (the final status, the URL)."""
    async def respond(request: web.Request) -> web.Response:
        status, body = answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/apis/depgate.io/v1alpha1/dependencypolicies", respond)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            response = await api.request("get", "/apis/depgate.io/v1alpha1/dependencypolicies",
                                         settings=kopf.OperatorSettings(), backoffs=backoffs,
                                         context=_Context(session, server),  # type: ignore[arg-type]
                                         logger=logging.getLogger(WATCHING))
            return response.status, f"{server}/apis/depgate.io/v1alpha1/dependencypolicies"
    finally:
        await runner.cleanup()


@pytest.fixture
def kopf_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    handlers._watch_health.install()  # what depgate's start-up does
    caplog.set_level(logging.INFO)
    return caplog


def test_a_429_storage_initializing_that_kopf_retries_is_an_info_line_not_an_error(kopf_log):
    status, url = asyncio.run(_kopf_request([(429, INITIALIZING), (200, {"kind": "List", "items": []})], [0]))
    assert status == 200  # Kopf retried, as it always did
    assert [r for r in kopf_log.records if r.levelno >= logging.WARNING] == []
    said = [(r.name, r.levelname, r.getMessage()) for r in kopf_log.records]
    assert said == [("depgate", "INFO", "the API server's watch cache is still (re)initializing (HTTP 429, as for a "
                     f"while after a CRD is created or the API server starts): Kopf retries GET {url} (attempt #1/2)")]


def test_the_last_attempt_kopf_gives_up_on_stays_an_error(kopf_log):
    with pytest.raises(errors.APITooManyRequestsError):
        asyncio.run(_kopf_request([(429, INITIALIZING)], []))
    errors_logged = [r for r in kopf_log.records if r.levelno >= logging.ERROR]
    assert len(errors_logged) == 1 and "escalating" in errors_logged[0].getMessage()
    assert errors_logged[0].name == WATCHING


def test_other_retried_errors_stay_errors(kopf_log):
    busy = {**INITIALIZING, "message": "the server is busy", "code": 429}
    asyncio.run(_kopf_request([(429, busy), (200, {"kind": "List", "items": []})], [0]))
    assert [r.getMessage()[:34] for r in kopf_log.records if r.levelno >= logging.ERROR] == [
        "Request attempt #1/2 failed; will "]


def test_kopf_storage_initializing_reads_only_kopfs_retry_line():
    line = ("Request attempt #3/9 failed; will retry: GET https://h/apis/x -> "
            "APITooManyRequestsError('storage is (re)initializing', {'code': 429}, status=429)")
    assert handlers.kopf_storage_initializing(line) == "GET https://h/apis/x (attempt #3/9)"
    assert handlers.kopf_storage_initializing(line.replace("will retry", "escalating")) is None
    assert handlers.kopf_storage_initializing("storage is (re)initializing 429") is None
