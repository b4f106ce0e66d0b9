"""The one adapter that talks to the Kubernetes API: urllib3 for requests, aiohttp for watches, credentials
from depgate.kubeconfig (what kubectl reads).

Everything here is I/O and nothing else: the decisions live in the pure modules, of which it imports
none (only the vocabulary, depgate.constants, and the table of kinds, depgate.registry). Objects go
in and come out as plain dicts, exactly as the API server speaks them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import urllib3

from depgate import kubeconfig
from depgate.constants import FIELD_MANAGER, REQUEST_TIMEOUT_SECONDS
from depgate.registry import API_KINDS, DEPENDENCY_POLICY

log = logging.getLogger("depgate.kube")

EVENT_COMPONENT = "depgate"  # the source of the Events depgate posts
USER_AGENT = "depgate"
# Pooled connections per host: as many as the reconcile threads and the webhook use at once (more are
# opened when needed, and closed after use).
POOL_MAXSIZE = 16



class ApiError(Exception):
    """Any other error answer of the API server (describe() says it for a status): its HTTP status,
    reason phrase and body as the server sent them."""

    def __init__(self, status: int | None = None, reason: str | None = None, body: str | None = None) -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"({status}) Reason: {reason}")


class Gone(Exception):
    """The object is not there (404)."""


class Changed(Exception):
    """The object changed since it was read: the write's resourceVersion precondition failed (409
    Conflict), or a JSON patch's `test` did not hold. Read it again, then decide again."""


class Forbidden(Exception):
    """RBAC refused a request (403): carries the API server's message, which names verb and resource."""


class Rejected(Exception):
    """The API server refused the object itself (400/422 Invalid): carries its message, which names the field."""


class NotLeader(Exception):
    """A write refused before it was sent: this replica is not the leader, or its renew deadline passed
    (depgate.lease's fence)."""


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


# The reviews a standby sends too (its webhook asks them): POSTs that change nothing, never fenced.
_REVIEWS = ("subjectaccessreviews", "selfsubjectreviews", "selfsubjectaccessreviews")


class Kube:
    def __init__(self, connection: kubeconfig.Connection,
                 request_timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.connection = connection
        self.request_timeout = request_timeout  # every request and list; a watch has its own bounds
        self._dyn_lock = threading.Lock()
        self._plurals: dict[tuple[str, str], str] = {}
        self._aio: aiohttp.ClientSession | None = None  # the custom watches' (see watch_kind)
        # The leader's fence (depgate.lease.Elector.write_budget): how long a write sent now may take; 0 or less
        # refuses it (NotLeader). None: no fence (the lease's own writes, the webhook's setup, a test's client).
        self.fence: Callable[[], float] | None = None
        c = connection
        pool_args: dict[str, Any] = {
            "maxsize": POOL_MAXSIZE, "ssl_context": self._ssl_context(),
            "cert_reqs": "CERT_NONE" if c.insecure else "CERT_REQUIRED",
            **({"assert_hostname": False} if c.insecure else {}),
            **({"server_hostname": c.tls_server_name} if c.tls_server_name else {}),
        }
        self.pool: urllib3.PoolManager = (urllib3.ProxyManager(c.proxy, **pool_args) if c.proxy
                                          else urllib3.PoolManager(**pool_args))

    @classmethod
    def from_environment(cls, kubeconfig_path: str | None = None,
                         request_timeout: float = REQUEST_TIMEOUT_SECONDS) -> Kube:
        """The in-cluster ServiceAccount, or the kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config)."""
        return cls(kubeconfig.load(kubeconfig_path), request_timeout)

    # ------------------------------------------------------------------ raw calls

    def url(self, path: str, query: Iterable[tuple[str, str]] = ()) -> str:
        q = urlencode(list(query))
        return f"{self.connection.server}{path}{'?' + q if q else ''}"

    def request(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
                content_type: str = "application/json",
                timeout: float | tuple[float, float] | None = None) -> urllib3.BaseHTTPResponse:
        """One HTTP request with the connection's credentials and TLS settings; the response, read."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **self.connection.auth_headers()}
        data: bytes | None = None
        if body is not None:
            headers["Content-Type"] = content_type
            # dicts and lists as JSON (JSON is YAML, for apply patches too)
            data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        if isinstance(timeout, tuple):
            bound = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        else:
            bound = urllib3.Timeout(total=timeout)
        try:
            return self.pool.request(method, self.url(path, query), body=data, headers=headers, timeout=bound)
        except (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError):
            # A connection that went silent (a black-holed route, a stuck proxy) is seldom alone: the
            # pool's other idle connections took the same path. Drop them all, so that the retry
            # opens a new one instead of waiting out a timeout on each.
            self.pool.clear()
            raise

    def _call(self, method: str, path: str, *, query: Iterable[tuple[str, str]] = (), body: Any = None,
              content_type: str = "application/json", timeout: float | None = None) -> Any:
        """A request whose JSON answer is returned; None on 404; ApiError on any other error."""
        timeout = self.request_timeout if timeout is None else min(timeout, self.request_timeout)
        if self.fence is not None and method != "GET" and not path.endswith(_REVIEWS):
            budget = self.fence()
            if budget <= 0:
                raise NotLeader(f"{method} {path}: this replica is not the leader (or its renew deadline passed)")
            timeout = min(timeout, budget)
        resp = self.request(method, path, query=query, body=body, content_type=content_type, timeout=timeout)
        raw = resp.data
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
            raise ApiError(status=resp.status, reason=resp.reason, body=raw.decode(errors="replace"))
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
        known = API_KINDS.get(kind)  # the kinds depgate knows need no discovery
        if known and known.api_version == api_version:
            return known.plural
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

    def get(self, api_version: str, kind: str, namespace: str | None, name: str, *,
            timeout: float | None = None) -> dict[str, Any] | None:
        obj = self._call("GET", self.path(api_version, kind, namespace, name), timeout=timeout)
        return dict(obj) if obj is not None else None

    def items(self, api_version: str, kind: str, namespace: str | None, *,
              label_selector: str | None = None) -> list[dict[str, Any]]:
        q = [("labelSelector", label_selector)] if label_selector else []
        res = self._call("GET", self.path(api_version, kind, namespace), query=q)
        if res is None:
            return []
        items = []
        for item in res.get("items", []):  # a list's items carry neither apiVersion nor kind
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            items.append(item)
        return items

    # ------------------------------------------------------------------ writes

    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as field manager `depgate`, taking over conflicting fields (force). With
        metadata.resourceVersion in the body the write is conditional and cannot create a missing
        object: the API server's 409 raises Changed, its 404 Gone."""
        md = body["metadata"]
        q = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        try:
            out = self._call("PATCH", self.path(body["apiVersion"], body["kind"], md.get("namespace"), md["name"]),
                             query=q, body=body, content_type="application/apply-patch+yaml")
        except ApiError as e:
            if e.status == 409:
                raise Changed(f"{body['kind']} {md['name']} changed meanwhile") from e
            raise
        if out is None:
            raise Gone(f"{body['kind']} {md['name']} is gone")
        return dict(out)

    def replace_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any] | None:
        """Write the policy's whole status in one request (a JSON patch that replaces it)."""
        patch = [{"op": "add", "path": "/status", "value": status}]
        path = self.path(DEPENDENCY_POLICY.api_version, DEPENDENCY_POLICY.kind, namespace, name, "status")
        try:
            out = self._call("PATCH", path, body=patch, content_type="application/json-patch+json")
            return dict(out) if out is not None else None
        except ApiError as e:
            if e.status in (404, 409, 422) and "not found" in str(e.body).lower():
                return None
            raise

    def event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
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
            "source": {"component": EVENT_COMPONENT},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": EVENT_COMPONENT,
        }
        try:
            self._call("POST", f"/api/v1/namespaces/{md.get('namespace')}/events", body=ev)
        except NamespaceTerminating:
            return
        except ApiError as e:  # events are best effort
            log.warning("could not post event %s on %s: %s", reason, md.get("name"), e.reason)

    def json_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                   ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        """A JSON patch; None when the object is gone. A failed `test` op raises Changed."""
        try:
            out = self._call("PATCH", self.path(api_version, kind, namespace, name), body=ops,
                             content_type="application/json-patch+json")
        except Rejected as e:  # a failed `test` op (the object changed meanwhile)
            raise Changed(f"{kind} {name}: {e}") from e
        except ApiError as e:
            if e.status == 409:
                raise Changed(f"{kind} {name}: {e.reason}") from e
            raise
        return dict(out) if out is not None else None

    # ------------------------------------------------------------------ authority (depgate.authority)

    def review_access(self, review: Mapping[str, Any]) -> tuple[bool, str]:
        """Send one SubjectAccessReview: (allowed, the authorizer's reason)."""
        out = self._call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=dict(review))
        st = (out or {}).get("status") or {}
        return bool(st.get("allowed")) and not st.get("denied"), str(st.get("reason") or "")

    def whoami(self) -> str:
        """The user name this client authenticates as (a SelfSubjectReview)."""
        out = self._call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                         body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        return str((((out or {}).get("status") or {}).get("userInfo") or {}).get("username") or "")

    def create(self, body: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any] | None:
        """Create an object; None when it exists already (409 AlreadyExists)."""
        md = body["metadata"]
        try:
            out = self._call("POST", self.path(body["apiVersion"], body["kind"], md.get("namespace")),
                             body=dict(body), timeout=timeout)
        except ApiError as e:
            if e.status == 409:
                return None
            raise
        return dict(out) if out is not None else None

    def replace(self, body: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any] | None:
        """PUT the whole object, conditional on the metadata.resourceVersion it carries: 409 raises Changed;
        None when it is gone."""
        md = body["metadata"]
        try:
            out = self._call("PUT", self.path(body["apiVersion"], body["kind"], md.get("namespace"), md["name"]),
                             body=dict(body), timeout=timeout)
        except ApiError as e:
            if e.status == 409:
                raise Changed(f"{body['kind']} {md['name']} changed meanwhile") from e
            raise
        return dict(out) if out is not None else None

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *, uid: str) -> bool:
        """Delete the object if it is still the one with that uid; False when it is gone already. Another
        object of that name now (the uid precondition failed: 409) raises Changed."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        try:
            out = self._call("DELETE", self.path(api_version, kind, namespace, name), body=body)
        except ApiError as e:
            if e.status == 409:
                raise Changed(f"{kind} {name}: {e.reason}") from e
            raise
        return out is not None

    # ------------------------------------------------------------------ watches of arbitrary kinds
    #
    # Custom resources (`resource` preconditions) are watched one (apiVersion, kind, namespace) at a
    # time, whatever number of objects and policies name them, as coroutines on the caller's event
    # loop (Kopf's) over one aiohttp session: a watch costs a task and a connection, never a thread.

    def forget_plural(self, api_version: str, kind: str) -> None:
        with self._dyn_lock:
            self._plurals.pop((api_version, kind), None)

    def _ssl_context(self) -> ssl.SSLContext:
        """The connection's TLS settings (CA, client certificate, verification), for requests and watches."""
        c = self.connection
        ctx = ssl.create_default_context(cafile=c.ca_file or None,
                                         cadata=c.ca_data.decode() if c.ca_data else None)
        if c.cert_file:
            ctx.load_cert_chain(c.cert_file, c.key_file or None)
        if c.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _session(self) -> aiohttp.ClientSession:
        """One session for every custom watch (created on the loop that runs them; connections
        unlimited here: the number of watches is capped by the caller)."""
        if self._aio is None or self._aio.closed:
            self._aio = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=self._ssl_context()))
        return self._aio

    async def close_watches(self) -> None:
        if self._aio is not None and not self._aio.closed:
            await self._aio.close()
        self._aio = None

    def _signed(self, path: str, query: Iterable[tuple[str, str]],
                accept: str = "application/json") -> tuple[str, dict[str, str]]:
        """URL and headers (the connection's authentication, refreshed tokens included) of a GET."""
        return self.url(path, query), {"Accept": accept, "User-Agent": USER_AGENT,
                                       **self.connection.auth_headers()}

    def _request_kwargs(self) -> dict[str, Any]:
        c = self.connection
        kw: dict[str, Any] = {}
        if c.tls_server_name:
            kw["server_hostname"] = c.tls_server_name
        if c.proxy:
            kw["proxy"] = c.proxy
        return kw

    @staticmethod
    def _refusal(status: int, raw: bytes, path: str) -> Exception:
        try:
            message = str(json.loads(raw).get("message") or path)
        except (ValueError, AttributeError):
            message = path
        if status == 403:
            return Forbidden(message)
        if status == 404:
            return LookupError(f"{path}: not found ({message})")
        if status == 410:
            return _Expired(message)
        return ApiError(status=status, reason=message, body=raw.decode(errors="replace"))

    async def _list(self, path: str, query: list[tuple[str, str]], accept: str,
                    on_item: Callable[[dict[str, Any]], None]) -> str:
        """List in pages, on_item(obj) for each; the list's resourceVersion."""
        cont = ""
        while True:
            q = [*query, ("limit", str(LIST_PAGE)), *([("continue", cont)] if cont else [])]
            url, headers = self._signed(path, q, accept)
            timeout = aiohttp.ClientTimeout(total=self.request_timeout)
            async with self._session().get(url, headers=headers, timeout=timeout, **self._request_kwargs()) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._refusal(resp.status, raw, path)
            body = json.loads(raw)
            for item in body.get("items") or []:
                if isinstance(item, dict):
                    on_item(item)
            meta = body.get("metadata") or {}
            cont = str(meta.get("continue") or "")
            if not cont:
                return str(meta.get("resourceVersion") or "")

    async def _watch_from(self, path: str, query: list[tuple[str, str]], accept: str, rv: str, inactivity: float,
                          on_event: Callable[[str, dict[str, Any]], None], on_garbled: Callable[[], None]) -> str:
        """One watch request from `rv`, until the server ends it; returns the last resourceVersion
        seen (bookmarks included). Raises _Silent when nothing arrived for `inactivity` seconds,
        _Expired on 410."""
        q = [*query, ("watch", "true"), ("resourceVersion", rv), ("allowWatchBookmarks", "true"),
             ("timeoutSeconds", str(WATCH_SERVER_TIMEOUT))]
        url, headers = self._signed(path, q, accept)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=inactivity)
        resp = await self._session().get(url, headers=headers, timeout=timeout, **self._request_kwargs())
        try:
            if resp.status >= 400:
                raise self._refusal(resp.status, await resp.read(), path)
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                buf += chunk
                while (at := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:at])
                    del buf[:at + 1]
                    if line.strip():
                        rv = _event(line, rv, path, on_event, on_garbled)
            return rv
        except aiohttp.SocketTimeoutError as e:
            raise _Silent(path) from e
        finally:
            resp.close()  # never back into the pool: a watch that went silent may be a dead route

    async def watch_objects(self, api_version: str, kind: str, namespace: str, *,
                            on_event: Callable[[str, dict[str, Any]], None], on_listed: Callable[[bool], None],
                            on_restart: Callable[[str], None], inactivity: float, labels: str = "",
                            metadata_only: bool = False) -> None:
        """Watch one kind in one namespace ("": every namespace) until cancelled, the API server
        filtering by the label selector `labels`; with `metadata_only` it sends each object's metadata
        alone (PartialObjectMetadata: a Secret's data never leaves the API server).

        on_event(type, obj) for every ADDED, MODIFIED or DELETED object, in order. Lists first (each
        object listed is ADDED), then watches from the list's resourceVersion with bookmarks; resumes
        from the last resourceVersion seen. A list again (after 410 Expired, an error answer, an
        undecodable event, a refusal) says DELETED (with the name and namespace only) for every object
        that was there before and is not now, then on_listed(after_gap): after_gap is True when events
        may have been missed (every list but the first of a clean start), so that the caller can wake
        whom the stream concerns. A watch silent for `inactivity` seconds is restarted
        (on_restart("silent"/"expired")). A kind not served (CRD not installed yet) or a watch RBAC
        refuses is retried, backing off to 10 s."""
        what = f"{kind} ({api_version}) in {namespace or 'every namespace'}" + (f" ({labels})" if labels else "")
        query = [("labelSelector", labels)] if labels else []
        accept = METADATA_ACCEPT if metadata_only else "application/json"
        rv: str | None = None
        known: dict[str, str] = {}  # namespace/name -> namespace, of the objects the stream has said exist
        gap = False  # the next list follows a gap in the events
        delay = 0.0

        def seen(type_: str, obj: dict[str, Any]) -> None:
            md = obj.get("metadata") or {}
            ref = f"{md.get('namespace') or ''}/{md.get('name')}"
            if type_ == "DELETED":
                known.pop(ref, None)
            else:
                known[ref] = str(md.get("namespace") or "")
            on_event(type_, obj)

        def garbled() -> None:
            raise _Garbled(what)

        while True:
            try:
                path = await asyncio.to_thread(self.path, api_version, kind, namespace or None)
                if rv is None:
                    before = dict(known)
                    listed: set[str] = set()

                    def item(obj: dict[str, Any], listed: set[str] = listed) -> None:
                        md = obj.get("metadata") or {}
                        listed.add(f"{md.get('namespace') or ''}/{md.get('name')}")
                        seen("ADDED", obj)

                    rv = await self._list(path, query, METADATA_LIST_ACCEPT if metadata_only else accept, item)
                    for ref in set(before) - listed:
                        ns, _, name = ref.partition("/")
                        seen("DELETED", {"metadata": {"name": name, **({"namespace": ns} if ns else {})}})
                    on_listed(gap)
                    gap = False
                rv = await self._watch_from(path, query, accept, rv, inactivity, seen, garbled)
                delay = 0.0
            except asyncio.CancelledError:
                raise
            except _Silent:
                on_restart("silent")
                log.warning("the watch of %s delivered nothing, not even a bookmark, for %.0fs: restarted it "
                            "from its last resourceVersion", what, inactivity)
            except _Expired:
                on_restart("expired")
                log.debug("the watch of %s expired (410): listing again", what)
                rv, gap = None, True
            except _Garbled:
                rv, gap = None, True  # said in _event; listed again
            except (Forbidden, LookupError) as e:  # RBAC may be granted, the CRD installed, later
                log.debug("watch of %s: %s", what, e)
                if isinstance(e, LookupError):
                    self.forget_plural(api_version, kind)
                rv, gap = None, True
                delay = min(10.0, max(1.0, delay * 2))
                await asyncio.sleep(delay)
            except Exception as e:  # API server restarts, refused connections, 5xx: try again from rv
                log.debug("watch of %s: %s: %s", what, type(e).__name__, e)
                if isinstance(e, ApiError | ValueError):  # an error answer, or a list we could not read
                    rv, gap = None, True
                delay = min(10.0, max(0.5, delay * 2))
                await asyncio.sleep(delay)

    async def watch_kind(self, api_version: str, kind: str, namespace: str, *, wants: Callable[[str], bool],
                         on_change: Callable[[set[str] | None], None], on_restart: Callable[[str], None],
                         inactivity: float) -> None:
        """watch_objects for the names `wants` admits, by name: on_change(names) for the wanted objects
        that changed, on_change(None) (any may have) after the first list and after each gap; metadata
        only (what changed is read again by the reconcile)."""
        versions: dict[str, str] = {}

        def on_event(type_: str, obj: dict[str, Any]) -> None:
            md = obj.get("metadata") or {}
            name = str(md.get("name"))
            if not wants(name):
                return
            rv = str(md.get("resourceVersion") or "")
            if type_ == "DELETED":
                if versions.pop(name, None) is None:
                    return
            elif versions.get(name) == rv:
                return  # listed again, unchanged
            else:
                versions[name] = rv
            on_change({name})

        first = True

        def on_listed(gap: bool) -> None:
            nonlocal first
            if first or gap:
                on_change(None)
            first = False

        await self.watch_objects(api_version, kind, namespace, on_event=on_event, on_listed=on_listed,
                                 on_restart=on_restart, inactivity=inactivity, metadata_only=True)


LIST_PAGE = 500
CONNECT_TIMEOUT = 10.0
WATCH_SERVER_TIMEOUT = 300  # the API server ends each watch request after this (Kopf's is the same)


class _Silent(Exception):
    """A watch delivered nothing, not even a bookmark, within its inactivity bound."""


class _Expired(Exception):
    """410 Gone: the resourceVersion left the API server's window; list again."""


class _Garbled(Exception):
    """An event that could not be decoded: list again."""


# What watch_objects(metadata_only=True) asks for: the objects' metadata alone (as client-go's metadata
# informers do), the full object from an API server that cannot (a 1.14-era aggregated API, say).
METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


def _event(line: bytes, rv: str, path: str, on_event: Callable[[str, dict[str, Any]], None],
           on_garbled: Callable[[], None]) -> str:
    """Apply one watch event; return the resourceVersion to resume from."""
    try:
        ev = json.loads(line)
        kind, obj = ev.get("type"), ev.get("object") or {}
        if not isinstance(obj, dict):
            raise ValueError("the event's object is not an object")
    except (ValueError, RecursionError, AttributeError) as e:
        # Never a dead watch: the stream lists again (on_garbled), and whom it concerns is woken.
        log.warning("skipping an undecodable event of the watch %s (%s: %.200s)", path, type(e).__name__, e)
        on_garbled()
        return rv
    if kind == "ERROR":
        raise Kube._refusal(int(obj.get("code") or 500), json.dumps(obj).encode(), path)
    md = obj.get("metadata") or {}
    rv = str(md.get("resourceVersion") or rv)
    if kind in ("ADDED", "MODIFIED", "DELETED"):
        on_event(str(kind), obj)
    return rv
