"""Helpers of the fault suite: raw API access (as admin), what a converged namespace looks like
(the pure render/spec modules are the oracle), and the sizes of each fault.

Nothing here restarts or kills anything; the tests and tests/chaos/conftest.py do.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from depgate import render, spec

WAITER_IMAGE = "depgate/depgate:test"  # what tests/conftest.start_operator configures
CONFIG = render.RenderConfig(waiter_image=WAITER_IMAGE)
DP = "/apis/depgate.io/v1alpha1/namespaces/{ns}/dependencypolicies"
DEPLOY = "/apis/apps/v1/namespaces/{ns}/deployments"
CM = "/api/v1/namespaces/{ns}/configmaps"


# ---------------------------------------------------------------------------------------------------
# sizes: the fast part runs in `make test`; the long part (marker chaos_long) in `make chaos`


@dataclass(frozen=True)
class Sizes:
    name: str
    policies: int  # SIGKILL burst
    kills: int
    outage_seconds: float  # kube-apiserver down
    outage_policies: int
    writer_seconds: float  # second writer
    writer_deployments: int
    examples: int  # hypothesis max_examples
    converge_timeout: float


FAST = Sizes("fast", policies=60, kills=3, outage_seconds=5, outage_policies=20, writer_seconds=10,
             writer_deployments=4, examples=60, converge_timeout=120)
FULL = Sizes("full", policies=500, kills=20, outage_seconds=10, outage_policies=100, writer_seconds=60,
             writer_deployments=8, examples=500, converge_timeout=600)


def full_sizes() -> Sizes:
    """The issue's sizes, times DEPGATE_CHAOS_SCALE (a number, default 1; `full` is 1, `fast` the
    fast part's sizes) for a shorter or longer `make chaos`."""
    raw = os.environ.get("DEPGATE_CHAOS_SCALE", "full").strip().lower()
    if raw == "fast":
        return replace(FAST, name="full@fast")
    scale = 1.0 if raw in ("", "full") else float(raw)
    if scale == 1.0:
        return FULL

    def n(v: int, floor: int) -> int:
        return max(floor, round(v * scale))

    return replace(FULL, name=f"full*{scale:g}", policies=n(FULL.policies, 10), kills=n(FULL.kills, 2),
                   outage_policies=n(FULL.outage_policies, 5), writer_seconds=max(5.0, FULL.writer_seconds * scale),
                   writer_deployments=n(FULL.writer_deployments, 2), examples=n(FULL.examples, 20))


# ---------------------------------------------------------------------------------------------------
# the API, as the admin, through the kubernetes client's connection settings


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        return str(self.body.get("message") if isinstance(self.body, Mapping) else self.body)


class Api:
    def __init__(self, api_client: Any) -> None:
        self.client = api_client

    def request(self, method: str, path: str, body: Any = None, *, query: Iterable[tuple[str, str]] = (),
                content_type: str = "application/json", timeout: float = 30) -> Any:
        m, url, headers, _, _ = self.client.param_serialize(
            method, path, query_params=list(query), header_params={"Content-Type": content_type,
                                                                   "Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = self.client.call_api(m, url, headers, body, _request_timeout=timeout)
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        if resp.status >= 400:
            raise ApiError(resp.status, data)
        return data

    def request_raw(self, method: str, path: str, body: bytes, *, query: Iterable[tuple[str, str]] = (),
                    content_type: str = "application/json", timeout: float = 60) -> Any:
        """`request` with the body as given (bytes: deep or malformed JSON the client's serializer
        cannot write)."""
        m, url, headers, _, _ = self.client.param_serialize(
            method, path, query_params=list(query), header_params={"Content-Type": content_type,
                                                                   "Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = self.client.rest_client.pool_manager.request(m, url, body=body, headers=headers,
                                                            preload_content=False, timeout=timeout)
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        if resp.status >= 400:
            raise ApiError(resp.status, data)
        return data

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return dict(self.request("GET", path))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def items(self, path: str) -> list[dict[str, Any]]:
        return list(self.request("GET", path).get("items") or [])

    def by_name(self, path: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.items(path)}

    def create(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", path, obj, query=[("fieldValidation", "Strict")]))

    def apply(self, path: str, obj: Mapping[str, Any], manager: str, *, force: bool = True) -> dict[str, Any]:
        """Server-side apply of `obj` at `path` (the collection path + name)."""
        q = [("fieldManager", manager), ("force", "true" if force else "false"), ("fieldValidation", "Strict")]
        return dict(self.request("PATCH", path, obj, query=q, content_type="application/apply-patch+yaml"))

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.request("PATCH", path, patch, content_type="application/merge-patch+json"))

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except ApiError as e:
            if e.status != 404:
                raise


# ---------------------------------------------------------------------------------------------------
# objects


def deployment(name: str, *, labels: Mapping[str, str] | None = None, init: Iterable[str] = (),
               replicas: int = 0, extra_volume: bool = False) -> dict[str, Any]:
    """A user's Deployment: app container `server` (the lesson's node app), own init containers."""
    pod: dict[str, Any] = {
        "containers": [{"name": "server", "image": "node:20",
                        "env": [{"name": "REDIS_URL", "value": "redis://data-tier:6379"}]}],
    }
    inits = [{"name": n, "image": "busybox:1.36", "command": ["sh", "-c", "true"]} for n in init]
    if inits:
        pod["initContainers"] = inits
    if extra_volume:
        pod["volumes"] = [{"name": "cache", "emptyDir": {}}]
        pod["containers"][0]["volumeMounts"] = [{"name": "cache", "mountPath": "/cache"}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name, **(labels or {})}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": pod}},
    }


def policy(name: str, target: Mapping[str, Any], preconditions: list[dict[str, Any]], *,
           placement: str = "BeforeExisting") -> dict[str, Any]:
    return {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": name},
            "spec": {**target, "placement": placement, "preconditions": preconditions}}


def config_map(name: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


# ---------------------------------------------------------------------------------------------------
# what converged means


def subset(want: Any, have: Any) -> bool:
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(
            subset(w, h) for w, h in zip(want, have, strict=True))
    return bool(want == have)


def pod_spec(dep: Mapping[str, Any]) -> dict[str, Any]:
    return dict(((dep.get("spec") or {}).get("template") or {}).get("spec") or {})


def names(items: Iterable[Mapping[str, Any]] | None) -> list[str]:
    return [str(i.get("name")) for i in items or []]


def init_names(dep: Mapping[str, Any]) -> list[str]:
    return names(pod_spec(dep).get("initContainers"))


def expected(policy_obj: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    """The Deployment as depgate.render says it looks once the policy is applied."""
    return render.rendered(spec.parse_policy(policy_obj), original, CONFIG)


def deployment_problems(live: Mapping[str, Any] | None, want: Mapping[str, Any],
                        original: Mapping[str, Any] | None = None) -> list[str]:
    """Why `live` is not `want` (render.rendered's output): our init containers, in order, none
    duplicated or missing; our volumes and mounts; and (with `original`) the user's spec untouched."""
    if live is None:
        return [f"{want['metadata']['name']}: gone"]
    name = live["metadata"]["name"]
    out: list[str] = []
    have, wanted = init_names(live), init_names(want)
    if have != wanted:
        out.append(f"{name}: init containers {have}, want {wanted}")
    else:
        live_inits = {c["name"]: c for c in pod_spec(live).get("initContainers") or []}
        for c in pod_spec(want).get("initContainers") or []:
            if render.is_ours(c["name"]) and not subset(c, live_inits.get(c["name"])):
                out.append(f"{name}: init container {c['name']} differs from the rendered one")
    lv, wv = names(pod_spec(live).get("volumes")), names(pod_spec(want).get("volumes"))
    if lv != wv:
        out.append(f"{name}: volumes {lv}, want {wv}")
    for lc, wc in zip(pod_spec(live).get("containers") or [], pod_spec(want).get("containers") or [], strict=False):
        if names(lc.get("volumeMounts")) != names(wc.get("volumeMounts")):
            out.append(f"{name}: mounts of {lc['name']} {names(lc.get('volumeMounts'))}, "
                       f"want {names(wc.get('volumeMounts'))}")
    ann = (live["metadata"].get("annotations") or {}).get(render.ANNOTATION)
    if ann != want["metadata"]["annotations"][render.ANNOTATION]:
        out.append(f"{name}: annotation {render.ANNOTATION}={ann!r}")
    if original is not None and render.without_ours(live)["spec"] != original["spec"]:
        out.append(f"{name}: the user's spec changed: {spec_diff(original['spec'], render.without_ours(live)['spec'])}")
    return out


def released_problems(live: Mapping[str, Any] | None, original: Mapping[str, Any]) -> list[str]:
    """Why `live` is not back to the user's `original` once its policy is gone."""
    if live is None:
        return [f"{original['metadata']['name']}: gone"]
    name = live["metadata"]["name"]
    out = []
    if live["spec"] != original["spec"]:
        out.append(f"{name}: spec is not the original: {spec_diff(original['spec'], live['spec'])}")
    ours = [k for k in (live["metadata"].get("annotations") or {}) if k.startswith("depgate.io/")]
    if ours:
        out.append(f"{name}: depgate annotations left: {ours}")
    return out


def spec_diff(a: Any, b: Any, path: str = "spec") -> str:
    """The first path where two JSON values differ (for failure messages)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return spec_diff(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return spec_diff(x, y, f"{path}[{i}]")
    return f"{path}: {json.dumps(a)[:200]} -> {json.dumps(b)[:200]}"


def condition(obj: Mapping[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def caught_up(pol: Mapping[str, Any]) -> bool:
    return (pol.get("status") or {}).get("observedGeneration") == pol["metadata"].get("generation")


def policy_problems(pol: Mapping[str, Any] | None, name: str) -> list[str]:
    if pol is None:
        return [f"policy {name}: gone"]
    if not caught_up(pol):
        return [f"policy {name}: observedGeneration {(pol.get('status') or {}).get('observedGeneration')}, "
                f"generation {pol['metadata'].get('generation')}"]
    applied = condition(pol, "Applied")
    if applied.get("status") != "True":
        return [f"policy {name}: Applied {applied.get('status')} {applied.get('reason')}: {applied.get('message')}"]
    return []


# ---------------------------------------------------------------------------------------------------
# waiting and timing


def poll(check: Callable[[], list[str]], timeout: float, what: str, interval: float = 0.5) -> float:
    """Poll until check() returns no problem; return the seconds it took, or fail with the last problems."""
    t0 = time.monotonic()
    problems: list[str] = []
    while True:
        problems = check()
        if not problems:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            shown = "\n  ".join(problems[:15])
            more = f"\n  ... and {len(problems) - 15} more" if len(problems) > 15 else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                 f"{len(problems)} problems:\n  {shown}{more}")
        time.sleep(interval)


def settled(count: Callable[[], float], quiet: float = 2.0, timeout: float = 60) -> None:
    """Wait until a counter (the operator's reconciles) has not moved for `quiet` seconds; a hot loop
    never goes quiet."""
    last = [count(), time.monotonic()]

    def check() -> list[str]:
        now = count()
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return [] if time.monotonic() - last[1] >= quiet else [f"still moving ({now:.0f})"]

    poll(check, timeout, "the operator to go quiet", interval=0.25)


# ---------------------------------------------------------------------------------------------------
# etcd, through its v3 HTTP/JSON gateway (etcdctl is not built)


def etcd_url(state_dir: Any) -> str:
    st = json.loads((state_dir / "state.json").read_text())
    for p in st["procs"]:
        if p["name"] == "etcd":
            for a in p.get("argv") or []:
                if a.startswith("--listen-client-urls="):
                    return str(a.split("=", 1)[1].split(",")[0])
    raise LookupError("no etcd client URL in state.json")


def _etcd(url: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def etcd_revision(url: str) -> int:
    key = base64.b64encode(b"/registry/").decode()
    return int(_etcd(url, "/v3/kv/range", {"key": key, "count_only": True})["header"]["revision"])


def etcd_compact(url: str) -> int:
    """Compact etcd's history up to its current revision; the revision compacted at."""
    rev = etcd_revision(url)
    _etcd(url, "/v3/kv/compaction", {"revision": str(rev), "physical": True})
    return rev


# ---------------------------------------------------------------------------------------------------
# the operator's process, from /proc (as bench/common.proc_status reads memory)


def threads_and_fds(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of a process."""
    with open(f"/proc/{pid}/status") as fh:
        threads = next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


class ProcSampler:
    """Samples a process's threads and fds every `interval` seconds in a thread, until stop()."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import threading

        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), *threads_and_fds(self.pid)))
            except (OSError, StopIteration):
                return  # the process is gone: the test's liveness check says so
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def max_threads(self) -> int:
        return max((t for _, t, _ in self.samples), default=0)

    @property
    def max_fds(self) -> int:
        return max((f for _, _, f in self.samples), default=0)


# ---------------------------------------------------------------------------------------------------
# a canary policy: does the operator still serve other policies?


class Canary:
    """A policy gating Deployment `<name>-app` on ConfigMap `<name>-cm` having key `a`. flip()
    changes the ConfigMap and returns how long its status took to follow (fails after `bound` s)."""

    def __init__(self, api: Api, ns: str, name: str = "canary-policy", manager: str = "chaos-test") -> None:
        self.api, self.name, self.manager = api, name, manager
        self.policies, self.cms = DP.format(ns=ns), CM.format(ns=ns)
        self.flips = 0
        self.took: list[float] = []
        api.create(DEPLOY.format(ns=ns), deployment(f"{name}-app"))
        api.apply(f"{self.policies}/{name}", policy(name, {"workloadRef": {"name": f"{name}-app"}},
                                                    [{"name": "settings", "configMap": {"name": f"{name}-cm",
                                                                                        "keys": ["a"]}}]), manager)

    def state(self) -> str | None:
        pol = self.api.get(f"{self.policies}/{self.name}") or {}
        for e in (pol.get("status") or {}).get("preconditions") or []:
            if e.get("name") == "settings":
                return str(e.get("state"))
        return None

    def flip(self, bound: float = 30) -> float:
        self.flips += 1
        has_key = self.flips % 2 == 1
        self.api.apply(f"{self.cms}/{self.name}-cm",
                       config_map(f"{self.name}-cm", {"a" if has_key else "b": str(self.flips)}), self.manager)
        want = "Satisfied" if has_key else "Blocking"
        took = poll(lambda: [] if self.state() == want else [f"{self.name} says {self.state()}"], bound,
                    f"the canary's status to say {want} (flip {self.flips})", interval=0.1)
        self.took.append(took)
        return took


def rendered_problems(api: Api, ns: str, pairs: Iterable[tuple[str, str]],
                      original: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """For each (policy, Deployment) pair: the policy caught up, and its Deployment exactly as depgate.render
    says for the policy as it is now (the user's original, plus the policy's init containers)."""
    live_pols, live_deps = api.by_name(DP.format(ns=ns)), api.by_name(DEPLOY.format(ns=ns))
    problems: list[str] = []
    for pname, dname in pairs:
        pol = live_pols.get(pname)
        problems += policy_problems(pol, pname)
        if pol is not None:
            problems += deployment_problems(live_deps.get(dname), expected(pol, original[dname]), original[dname])
    return problems


def all_released_problems(api: Api, ns: str, original: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every policy of `ns` gone (no finalizer left holding one) and every Deployment of `original` back to
    the user's original."""
    left = api.by_name(DP.format(ns=ns))
    problems = [f"policy {k} still there, finalizers {v['metadata'].get('finalizers')}" for k, v in left.items()]
    live = api.by_name(DEPLOY.format(ns=ns))
    for dname, orig in original.items():
        problems += released_problems(live.get(dname), orig)
    return problems
