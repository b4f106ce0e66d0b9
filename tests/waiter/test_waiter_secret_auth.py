"""Credentials from Secrets, end to end in the pod's terms: depgate renders the waiter container (args
and env with valueFrom.secretKeyRef), this test plays the kubelet (resolves each secretKeyRef from a
Secret's data into the env) and runs `depgate wait` exactly with the rendered args against a real
loopback HTTP server. The server sees the Authorization and header values; the args never hold them."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from waiter_loopback import Answer, HttpServer, Waiter

from depgate.render import RenderConfig, init_containers
from depgate.spec import parse_policy

pytestmark = pytest.mark.waiter

Start = Callable[..., Waiter]
SECRETS = {
    "api-basic-auth": {"username": "reporter", "password": "s3cret-pa55"},
    "api-key": {"token": "k-0123456789"},
    "files-auth": {"user": "fetcher", "pass": "d0wnl0ad-pw"},
}
SECRET_VALUES = [v for data in SECRETS.values() for v in data.values()]
DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": "shop"},
              "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}


@pytest.fixture
def http_server() -> Iterator[Callable[..., HttpServer]]:
    servers: list[HttpServer] = []

    def start(answer: Callable[[str, Mapping[str, str]], Answer]) -> HttpServer:
        servers.append(HttpServer(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def rendered(*preconditions: dict[str, Any]) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"workloadRef": {"name": "app"}, "preconditions": list(preconditions)}
    policy = parse_policy({"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
                           "metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
    return init_containers(policy, DEPLOYMENT, RenderConfig())


def kubelet_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The env the kubelet gives the container: each secretKeyRef resolved from SECRETS."""
    out = {}
    for e in container.get("env", []):
        ref = e["valueFrom"]["secretKeyRef"]
        out[e["name"]] = SECRETS[ref["name"]][ref["key"]]
    return out


def run(waiter: Start, container: Mapping[str, Any], *extra: str) -> Waiter:
    assert container["command"][:2] == ["depgate", "wait"]
    args = [a for a in container["args"] if not a.startswith("--period=")]
    return waiter(container["command"][2], *args, "--period=0.2", "--timeout=30", *extra, env=kubelet_env(container))


def no_secret_in(container: Mapping[str, Any], w: Waiter) -> None:
    visible = " ".join(container["args"]) + repr(container.get("env")) + w.stderr + w.termination()
    for value in SECRET_VALUES:
        assert value not in visible
        assert base64.b64encode(value.encode()).decode() not in visible


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_http_sends_basic_auth_and_secret_header_from_env(
    waiter: Start, http_server: Callable[..., HttpServer]
) -> None:
    want = basic("reporter", "s3cret-pa55")

    def answer(path: str, headers: Mapping[str, str]) -> Answer:
        ok = headers.get("authorization") == want and headers.get("x-api-key") == "k-0123456789"
        return (200 if ok else 401), {}, b""

    web = http_server(answer)
    (c,) = rendered({"name": "api", "http": {
        "url": web.url("/healthz"),
        "basicAuthSecretRef": {"name": "api-basic-auth"},
        "headers": [{"name": "X-Probe", "value": "depgate"},
                    {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "api-key", "key": "token"}}}],
    }})
    w = run(waiter, c)
    assert w.wait(30) == 0, w.stderr
    (_, headers), *_ = web.requests
    assert headers["authorization"] == want
    assert (headers["x-api-key"], headers["x-probe"]) == ("k-0123456789", "depgate")
    no_secret_in(c, w)


def test_http_without_the_secret_values_is_refused(waiter: Start, http_server: Callable[..., HttpServer]) -> None:
    web = http_server(lambda path, headers: (200, {}, b""))
    (c,) = rendered({"name": "api", "http": {"url": web.url("/"), "basicAuthSecretRef": {"name": "api-basic-auth"}}})
    w = waiter(c["command"][2], *c["args"], "--timeout=5", env={"DEPGATE_HTTP_USERNAME": "x"})
    assert w.wait(30) == 1
    assert "--password-env: environment variable DEPGATE_HTTP_PASSWORD is not set" in w.termination()
    assert web.requests == []


def test_download_sends_basic_auth_to_its_own_origin_only(
    waiter: Start, http_server: Callable[..., HttpServer], tmp_path: Path
) -> None:
    payload = b"fonts" * 1000
    want = basic("fetcher", "d0wnl0ad-pw")
    mirror = http_server(lambda path, headers: (200, {}, payload))

    def answer(path: str, headers: Mapping[str, str]) -> Answer:
        if headers.get("authorization") != want:
            return 401, {}, b""
        if path == "/moved":
            return 302, {"Location": "/fonts.tar"}, b""
        if path == "/fonts.tar":
            return 302, {"Location": mirror.url("/fonts.tar")}, b""  # another origin (port)
        return 404, {}, b""

    files = http_server(answer)
    (c,) = rendered({"name": "fonts", "download": {
        "url": files.url("/moved"), "sha256": hashlib.sha256(payload).hexdigest(), "path": "fonts.tar",
        "basicAuthSecretRef": {"name": "files-auth", "usernameKey": "user", "passwordKey": "pass"},
    }})
    dest = tmp_path / "shared" / "fonts.tar"
    args = [a if not a.startswith("--dest=") else f"--dest={dest}" for a in c["args"]]
    w = run(waiter, {**c, "args": args})
    assert w.wait(30) == 0, w.stderr
    assert dest.read_bytes() == payload
    assert [h.get("authorization") for _, h in files.requests] == [want, want]  # /moved, then /fonts.tar
    assert [h.get("authorization") for _, h in mirror.requests] == [None]
    no_secret_in(c, w)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http", "--url=http://a/", "--username-env=U"], "--password-env: basic auth needs both"),
        (["download", "--url=http://a/f", f"--sha256={'a' * 64}", "--dest=/x/f", "--password-env=P"],
         "--username-env: basic auth needs both"),
    ],
)
def test_basic_auth_needs_both_variables(argv: list[str], message: str) -> None:
    from depgate.waiter.config import ConfigError, parse

    with pytest.raises(ConfigError, match=message):
        parse(argv, {})


def test_a_header_env_with_a_line_break_is_refused_without_echoing_it() -> None:
    from depgate.waiter.checks import build
    from depgate.waiter.config import ConfigError, parse

    parsed = parse(["http", "--url=http://a/", "--header-env=X-Key=K"], {})
    with pytest.raises(ConfigError) as info:
        build(parsed.kind, parsed.config, {"K": "evil\r\nX-Other: 1"})
    assert "K contains a line break" in str(info.value) and "evil" not in str(info.value)
    with pytest.raises(ConfigError, match="--header-env: expected 'Name=VAR'"):
        parse(["http", "--url=http://a/", "--header-env=no-equals-sign"], {})
