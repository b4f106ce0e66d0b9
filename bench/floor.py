"""The floor for bench/reconcile_latency.py: the least a controller can do to gate a Deployment.

One loop, one namespace, the same `kubernetes` client depgate's adapter uses (raw JSON through
ApiClient.call_api, as depgate.kube does): list then watch DependencyPolicies; for each policy
(or new generation) parse it with depgate.spec.parse_policy, GET its workloadRef Deployment,
and send ONE server-side apply of depgate.render.apply_body (field manager depgate). No Kopf,
no status, no finalizer, no events, no RBAC, no cache, no coalescing, no concurrency.

    .venv/bin/python bench/floor.py --kubeconfig K --namespace NS   # prints "ready" once listed
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kubernetes import config

from depgate import render, spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--waiter-image", default="depgate/depgate:test")
    args = ap.parse_args(argv)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    cfg = render.RenderConfig(waiter_image=args.waiter_image)
    ns = args.namespace
    policies = f"/apis/depgate.io/v1alpha1/namespaces/{ns}/dependencypolicies"
    done: dict[str, int] = {}  # uid -> generation applied
    writes = 0

    def request(method: str, path: str, query: list[tuple[str, str]] | None = None, body: Any = None,
                content_type: str = "application/json", timeout: Any = 30) -> Any:
        m, url, headers, _, _ = api.param_serialize(
            method, path, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"])
        return api.call_api(m, url, headers, body, _request_timeout=timeout)

    def call(method: str, path: str, **kw: Any) -> Any:
        resp = request(method, path, **kw)
        raw = resp.read()
        if resp.status == 404:
            return None
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw[:300]!r}")
        return json.loads(raw)

    def handle(obj: dict[str, Any]) -> None:
        nonlocal writes
        md = obj["metadata"]
        if done.get(md["uid"]) == md.get("generation"):
            return
        try:
            policy = spec.parse_policy(obj)
        except spec.SpecError as e:
            print(f"{md['name']}: invalid: {e}", file=sys.stderr, flush=True)
            return
        if not isinstance(policy.target, spec.WorkloadRef):
            return
        dep = call("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{policy.target.name}")
        if dep is None:
            return
        body = render.apply_body(policy, dep, cfg)
        call("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/{policy.target.name}",
             query=[("fieldManager", "depgate"), ("force", "true")], body=body,
             content_type="application/apply-patch+yaml")
        writes += 1
        done[md["uid"]] = md.get("generation")

    listing = call("GET", policies)
    for item in listing["items"]:
        handle(item)
    rv = listing["metadata"]["resourceVersion"]
    print("ready", flush=True)
    try:
        while True:
            resp = request("GET", policies, query=[("watch", "true"), ("resourceVersion", rv),
                                                   ("allowWatchBookmarks", "true"), ("timeoutSeconds", "600")],
                           timeout=(10, 700))
            if resp.status >= 400:
                resp.read()
                time.sleep(0.5)
                listing = call("GET", policies)
                for item in listing["items"]:
                    handle(item)
                rv = listing["metadata"]["resourceVersion"]
                continue
            buf = b""
            for chunk in resp.response.stream(4096, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        handle(obj)
    except KeyboardInterrupt:
        print(f"floor: {writes} applies", file=sys.stderr, flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
