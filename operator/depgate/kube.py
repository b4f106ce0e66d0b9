"""The one adapter that talks to the Kubernetes API (through the official `kubernetes` client).

Everything here is I/O and nothing else: the decisions live in the pure modules. Objects go in
and come out as plain dicts, exactly as the API server speaks them.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from depgate import FIELD_MANAGER, GROUP, PLURAL, VERSION

log = logging.getLogger("depgate.kube")

_PLURALS = {
    "Deployment": ("apps/v1", "deployments"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "DaemonSet": ("apps/v1", "daemonsets"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "Service": ("v1", "services"),
    "Secret": ("v1", "secrets"),
    "ConfigMap": ("v1", "configmaps"),
    "Pod": ("v1", "pods"),
    "Job": ("batch/v1", "jobs"),
    "EndpointSlice": ("discovery.k8s.io/v1", "endpointslices"),
    "DependencyPolicy": (f"{GROUP}/{VERSION}", PLURAL),
}


ApiError = ApiException  # any other error answer of the API server; describe() says it for a status


class Gone(Exception):
    """The object is not there (404), or a precondition of the write failed (409)."""


class Forbidden(Exception):
    """RBAC refused a request (403): carries the API server's message, which names verb and resource."""


class Rejected(Exception):
    """The API server refused the object itself (400/422 Invalid): carries its message, which names the field."""


class NamespaceTerminating(Exception):
    """The namespace is being deleted: writes into it are refused, and nothing there needs them."""


def describe(e: ApiError) -> tuple[str, str]:
    """(reason, message) of an API error as the server said it: its Status reason in CamelCase
    (InternalError, Invalid, Timeout, TooManyRequests, ...) and its message, for a policy's status."""
    reason, message = "", ""
    try:
        body = json.loads(e.body or "{}")
        if isinstance(body, dict):
            reason, message = str(body.get("reason") or ""), str(body.get("message") or "")
    except ValueError:
        message = str(e.body or "")[:500]
    if not reason:
        reason = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout", 429: "TooManyRequests",
                  413: "RequestEntityTooLarge"}.get(int(e.status or 0), "ApiError")
    return reason, f"HTTP {e.status}: {message or e.reason or 'no message'}"


def _base(api_version: str) -> str:
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client
        self._dyn_lock = threading.Lock()
        self._plurals: dict[tuple[str, str], str] = {}

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        if kubeconfig is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                return cls(client.ApiClient())
            except config.ConfigException:
                pass
        return cls(config.new_client_from_config(config_file=kubeconfig, context=context))  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ raw calls

    def request(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                content_type: str = "application/json", timeout: float | tuple[float, float] | None = None) -> Any:
        """One HTTP request through the client's auth and TLS settings; the raw, unread response."""
        m, url, headers, _, _ = self.api.param_serialize(
            method, path, query_params=list(query),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        # The client serialises dicts and lists as JSON itself (JSON is YAML, for apply patches too).
        return self.api.call_api(m, url, headers, body, _request_timeout=timeout)

    def _call(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
              content_type: str = "application/json") -> Any:
        """A request whose JSON answer is returned; None on 404; ApiException on any other error."""
        resp = self.request(method, path, query=query, body=body, content_type=content_type, timeout=30)
        raw = resp.read()
        if resp.status == 404:
            return None
        if resp.status == 403 and b"NamespaceTerminating" in raw:
            raise NamespaceTerminating(path)
        if resp.status == 403:
            try:
                message = json.loads(raw).get("message") or path
            except ValueError:
                message = path
            raise Forbidden(message)
        if resp.status in (400, 422):
            try:
                message = json.loads(raw).get("message") or path
            except ValueError:
                message = path
            raise Rejected(message)
        if resp.status >= 400:
            raise ApiException(status=resp.status, reason=resp.reason, body=raw.decode(errors="replace"))
        return json.loads(raw) if raw else None

    def path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        plural = self.plural(api_version, kind)
        p = _base(api_version)
        if namespace:
            p += f"/namespaces/{namespace}"
        p += f"/{plural}"
        if name:
            p += f"/{name}"
        if subresource:
            p += f"/{subresource}"
        return p

    def plural(self, api_version: str, kind: str) -> str:
        known = _PLURALS.get(kind)
        if known and known[0] == api_version:
            return known[1]
        with self._dyn_lock:
            cached = self._plurals.get((api_version, kind))
        if cached:
            return cached
        listing = self._call("GET", _base(api_version))
        if listing is None:
            raise LookupError(f"the API server does not serve {api_version}")
        for res in listing.get("resources", []):
            if res.get("kind") == kind and "/" not in res.get("name", ""):
                with self._dyn_lock:
                    self._plurals[(api_version, kind)] = res["name"]
                return str(res["name"])
        raise LookupError(f"the API server serves no kind {kind} in {api_version}")

    # ------------------------------------------------------------------ reads

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self._call("GET", self.path(api_version, kind, namespace, name))
        return dict(obj) if obj is not None else None

    def items(self, api_version: str, kind: str, namespace: str | None, *, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        q = []
        if label_selector:
            q.append(("labelSelector", label_selector))
        if field_selector:
            q.append(("fieldSelector", field_selector))
        res = self._call("GET", self.path(api_version, kind, namespace), query=q)
        if res is None:
            return []
        kind_of_item = kind
        items = []
        for item in res.get("items", []):
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind_of_item)
            items.append(item)
        return items

    # ------------------------------------------------------------------ writes

    def apply(self, body: Mapping[str, Any], *, force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply as field manager `depgate`. With metadata.resourceVersion in the body
        the write is conditional (and cannot create a missing object): a mismatch raises Gone."""
        md = body["metadata"]
        q = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        if dry_run:
            q.append(("dryRun", "All"))
        try:
            out = self._call("PATCH", self.path(body["apiVersion"], body["kind"], md.get("namespace"), md["name"]),
                             query=q, body=body, content_type="application/apply-patch+yaml")
        except ApiException as e:
            if e.status == 409:
                raise Gone(f"{body['kind']} {md['name']} changed meanwhile") from e
            if e.status == 404:
                raise Gone(f"{body['kind']} {md['name']} is gone") from e
            raise
        if out is None:
            raise Gone(f"{body['kind']} {md['name']} is gone")
        return dict(out)

    def replace_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
        """Write the policy's whole status in one request (a JSON patch that replaces it)."""
        patch = [{"op": "add", "path": "/status", "value": status}]
        try:
            out = self._call("PATCH", self.path(f"{GROUP}/{VERSION}", "DependencyPolicy", namespace, name, "status"),
                             body=patch, content_type="application/json-patch+json")
            return dict(out) if out is not None else None
        except ApiException as e:
            if e.status in (404, 409, 422) and "not found" in str(e.body).lower():
                return None
            raise

    def event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str,
              component: str = "depgate") -> None:
        md = involved.get("metadata", {})
        now = datetime.now(UTC)
        ev = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{md.get('name')}.{uuid.uuid4().hex[:12]}", "namespace": md.get("namespace")},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "name": md.get("name"), "namespace": md.get("namespace"), "uid": md.get("uid"),
                "resourceVersion": md.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": component},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": component,
        }
        try:
            self._call("POST", f"/api/v1/namespaces/{md.get('namespace')}/events", body=ev)
        except NamespaceTerminating:
            return
        except ApiException as e:  # events are best effort
            log.warning("could not post event %s on %s: %s", reason, md.get("name"), e.reason)

    def json_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                   ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        try:
            out = self._call("PATCH", self.path(api_version, kind, namespace, name), body=ops,
                             content_type="application/json-patch+json")
        except Rejected as e:  # a failed `test` op (the object changed meanwhile)
            raise Gone(f"{kind} {name}: {e}") from e
        except ApiException as e:
            if e.status == 409:
                raise Gone(f"{kind} {name}: {e.reason}") from e
            raise
        return dict(out) if out is not None else None

    # ------------------------------------------------------------------ watches of arbitrary kinds

    def watch_object(self, api_version: str, kind: str, namespace: str, name: str,
                     on_change: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Watch one object of any kind (custom resources) in a thread; call on_change on each event."""

        def run() -> None:
            rv: str | None = None
            failing = False  # after a refused or failed watch, the first good one re-judges (RBAC granted)
            while not stop.is_set():
                try:
                    q = [("fieldSelector", f"metadata.name={name}"), ("watch", "true"),
                         ("timeoutSeconds", "60"), ("allowWatchBookmarks", "true")]
                    if rv:
                        q.append(("resourceVersion", rv))
                    resp = self.request("GET", self.path(api_version, kind, namespace), query=q, timeout=(10, 90))
                    if resp.status >= 400:
                        resp.read()
                        rv, failing = None, True
                        stop.wait(2)
                        continue
                    if failing:
                        failing = False
                        on_change()
                    for line in _lines(resp.response):
                        if stop.is_set():
                            break
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            rv = None
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if ev.get("type") != "BOOKMARK":
                            on_change()
                except LookupError:
                    stop.wait(10)  # the CRD may be installed later
                except Exception as e:  # keep watching through API hiccups
                    log.debug("watch of %s/%s %s: %s", kind, namespace, name, e)
                    rv = None
                    stop.wait(1)

        t = threading.Thread(target=run, name=f"watch-{kind}-{namespace}-{name}", daemon=True)
        t.start()
        return t


def _lines(resp: Any) -> Iterable[bytes]:
    """The lines of a streaming HTTP response (a watch sends one JSON event per line)."""
    buf = b""
    for chunk in resp.stream(4096, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
