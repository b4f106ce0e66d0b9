"""What depgate's workload webhook (workloads.depgate.io) costs at admission.

On a private plane, the operator serving its webhooks (enforce mode, the configurations registered
by the plane's admin and pointed at the operator on loopback) and one selector policy gating every
Job labelled app=migrate (one tcp precondition). Jobs are created suspended, so no pod adds load.

1. At the webhook: --reviews AdmissionReviews of such a Job (CREATE), POSTed over one kept-alive
   HTTPS connection to the operator's /workloads, exactly as the API server sends them; the seconds
   from sending to the answer. depgate_workload_admission_seconds (the handler's own time, from the
   operator's metrics) is given next to it, as its mean.
2. Added to a Job's create round trip: --creates creates of a targeted Job (the webhook renders it), of
   an untargeted one in the same namespace and of one in a namespace without policies (the webhook
   answers "no change"), with the webhook and without it (the admin removes
   the webhook's entry from the MutatingWebhookConfiguration, then puts it back), in --rounds
   alternating rounds so that load drift falls on both sides alike. Each sample is one POST of a Job
   by the admin, from sending to the status line of the answer.

    .venv/bin/python bench/webhook_latency.py [--reviews 500] [--creates 200] [--rounds 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common import (
    Row,
    Say,
    fmt_ms,
    operator_log_facts,
    precise_threads,
    private_plane,
    stop_operator,
    summary_ms,
    wait_until,
    write_result,
)

NAME = "webhook_latency"
NS = "bench-webhook"
ELSEWHERE = "bench-no-policy"  # a namespace without any policy: the webhook's shortest answer
HOOK = "workloads.depgate.io"
CONFIG_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/depgate.io"


def job(name: str, app: str) -> dict[str, Any]:
    pod = {"restartPolicy": "Never", "containers": [{"name": "migrate", "image": "app:1", "command": ["migrate"]}]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"suspend": True, "template": {"metadata": {"labels": {"app": app}}, "spec": pod}}}


POLICY = {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": "migrations"},
          "spec": {"selector": {"matchLabels": {"app": "migrate"}, "kinds": ["Job"]},
                   "preconditions": [{"name": "db", "tcp": {"host": "db", "port": 5432}}]}}


APPS = ("migrate", "other", "free")  # the Job kinds created, in turn: label app=<this>


def review(obj: dict[str, Any]) -> bytes:
    """An AdmissionReview as the API server sends it for a Job's CREATE."""
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "batch", "version": "v1", "kind": "Job"},
        "resource": {"group": "batch", "version": "v1", "resource": "jobs"},
        "requestKind": {"group": "batch", "version": "v1", "kind": "Job"},
        "requestResource": {"group": "batch", "version": "v1", "resource": "jobs"},
        "name": obj["metadata"]["name"], "namespace": NS, "operation": "CREATE",
        "userInfo": {"username": "bench-admin", "groups": ["system:masters"]},
        "object": {**obj, "metadata": {**obj["metadata"], "namespace": NS}}, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}}).encode()


def at_the_webhook(url: str, ca_bundle: str, n: int) -> tuple[list[float], int]:
    """n reviews of a targeted Job over one kept-alive connection: seconds each, and how many were patched."""
    with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as fh:
        fh.write(base64.b64decode(ca_bundle))
    ctx = ssl.create_default_context(cafile=fh.name)
    ctx.check_hostname = False  # the certificate names the Service; the API server is given the URL
    u = urlparse(url)
    conn = http.client.HTTPSConnection(u.hostname or "127.0.0.1", u.port or 443, context=ctx, timeout=10)
    out, patched = [], 0
    try:
        for i in range(n):
            body = review(job(f"review-{i}", "migrate"))
            t0 = time.monotonic()
            conn.request("POST", u.path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            out.append(time.monotonic() - t0)
            answer = json.loads(raw)["response"]
            if not answer.get("allowed"):
                raise RuntimeError(f"the webhook refused a Job: {answer}")
            patched += 1 if answer.get("patch") else 0
    finally:
        conn.close()
        os.unlink(fh.name)
    return out, patched


def payload_mean(server: dict[str, float]) -> str:
    return f"{1000 * server['sum'] / server['count']:.1f} ms" if server.get("count") else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reviews", type=int, default=500, help="AdmissionReviews POSTed to the webhook (default 500)")
    ap.add_argument("--creates", type=int, default=200, help="Job creates per kind and side (default 200)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating with/without rounds (default 4)")
    ap.add_argument("--out", type=Path, default=None, help=f"result file (default bench/results/{NAME}.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary dir (operator log) afterwards")
    args = ap.parse_args(argv)
    precise_threads()
    say = Say(NAME)
    load0 = os.getloadavg()
    from tests.conftest import Plane, start_operator

    with private_plane(say, keep=args.keep) as cl:
        cl.namespace(NS)
        cl.namespace(ELSEWHERE)
        cl.namespace("depgate-system")  # the webhook Secret's namespace
        who = cl.operator_identity()
        admin = Plane(cl.kubeconfig, cl.kubectl_bin, cl.state.server, pods=False)
        op = start_operator(who.kubeconfig, cl.tmp, admin=admin)  # registers the webhooks, waits until served
        try:
            cl.admin.call("POST", f"/apis/depgate.io/v1alpha1/namespaces/{NS}/dependencypolicies", body=POLICY)
            seq = iter(range(10**9))

            def create(app: str) -> tuple[float, dict[str, Any]]:
                ns = ELSEWHERE if app == "free" else NS
                t0 = time.monotonic()
                returned, obj = cl.admin.timed_call("POST", f"/apis/batch/v1/namespaces/{ns}/jobs",
                                                    body=job(f"{app}-{next(seq)}", app))
                return returned - t0, obj

            def rendered(obj: dict[str, Any]) -> bool:
                return any(c["name"].startswith("depgate-")
                           for c in obj["spec"]["template"]["spec"].get("initContainers") or [])

            # the webhook's index has the policy once a targeted Job comes back rendered
            wait_until(lambda: rendered(create("migrate")[1]), 60, "a Job rendered at admission")
            config = cl.admin.call("GET", CONFIG_PATH)
            hook = next(w for w in config["webhooks"] if w["name"] == HOOK)
            say(f"the webhook answers at {hook['clientConfig']['url']}")

            reviews, patched = at_the_webhook(hook["clientConfig"]["url"], hook["clientConfig"]["caBundle"],
                                              args.reviews)
            if patched != args.reviews:
                raise RuntimeError(f"only {patched} of {args.reviews} reviews came back patched")
            say(f"{args.reviews} reviews at the webhook: p50 {fmt_ms(summary_ms(reviews)['p50_ms'])}")

            def set_hook(on: bool) -> None:
                live = cl.admin.call("GET", CONFIG_PATH)
                names = [w["name"] for w in live["webhooks"]]
                if on and HOOK not in names:
                    patch = [{"op": "add", "path": "/webhooks/-", "value": hook}]
                elif not on and HOOK in names:
                    i = names.index(HOOK)
                    patch = [{"op": "test", "path": f"/webhooks/{i}/name", "value": HOOK},
                             {"op": "remove", "path": f"/webhooks/{i}"}]
                else:
                    return
                cl.admin.call("PATCH", CONFIG_PATH, body=patch, content_type="application/json-patch+json")
                # the API server reads its webhook configurations from a watch: probe until it follows
                wait_until(lambda: rendered(create("migrate")[1]) == on, 30, f"the webhook {'on' if on else 'off'}")

            samples: dict[tuple[str, bool], list[float]] = {
                (a, on): [] for a in APPS for on in (True, False)}
            per_round = max(1, args.creates // args.rounds)
            for r in range(args.rounds):
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    set_hook(on)
                    for _ in range(5):  # warm the connection and the caches after the switch
                        create("other")
                    for i in range(per_round):
                        for app in (APPS if i % 2 == 0 else APPS[::-1]):
                            seconds, obj = create(app)
                            if rendered(obj) != (on and app == "migrate"):
                                raise RuntimeError(f"a {app} Job came back {'' if rendered(obj) else 'un'}rendered "
                                                   f"with the webhook {'on' if on else 'off'}")
                            samples[(app, on)].append(seconds)
                say(f"round {r + 1}/{args.rounds} done")
            set_hook(True)
            m = op.metrics()
            own_sum = sum(v for k, v in m.items() if k.startswith("depgate_workload_admission_seconds_sum"))
            own_count = sum(v for k, v in m.items() if k.startswith("depgate_workload_admission_seconds_count"))
            by_outcome = {k.split('outcome="', 1)[1].split('"', 1)[0]: v for k, v in m.items()
                          if k.startswith("depgate_workload_admission_seconds_count{")}
            log_facts = operator_log_facts(op)
            # the API server's own account of its calls to the webhook (all of them, probes included)
            server: dict[str, float] = {}
            for line in cl.admin.text("/metrics").splitlines():
                if line.startswith("apiserver_admission_webhook_admission_duration_seconds_") and \
                        f'name="{HOOK}"' in line and 'operation="CREATE"' in line and "_bucket" not in line:
                    key, _, value = line.rpartition(" ")
                    stat = key.split("{", 1)[0].rsplit("_", 1)[1]  # sum or count
                    server[stat] = server.get(stat, 0.0) + float(value)
        finally:
            stop_operator(op)

    at = summary_ms(reviews)
    s = {f"{app}-{'with' if on else 'without'}": summary_ms(v) for (app, on), v in samples.items()}
    own_mean_ms = 1000 * own_sum / own_count if own_count else float("nan")
    rows = [
        Row(NAME, f"AdmissionReview of a Job a policy targets, POSTed to the operator's /workloads as the API server "
                  f"does ({args.reviews}, one kept-alive HTTPS connection; the handler's own mean, "
                  f"depgate_workload_admission_seconds, in brackets)",
            f"p50 {fmt_ms(at['p50_ms'])}, p99 {fmt_ms(at['p99_ms'])} ({own_mean_ms:.2f} ms)", "-", "-",
            "p99 < 50 ms", at["p99_ms"] < 50),
        Row(NAME, "the API server's own mean time calling the webhook on a Job's CREATE "
                  "(apiserver_admission_webhook_admission_duration_seconds, targeted and untargeted alike)",
            f"mean {payload_mean(server)}", "-", "-", "-", None),
    ]
    for app, what in (("migrate", "a Job a policy targets (rendered at admission)"),
                      ("other", "a Job no policy names, in a namespace with a policy (admitted unchanged)"),
                      ("free", "a Job in a namespace without policies (admitted unchanged)")):
        w, wo = s[f"{app}-with"], s[f"{app}-without"]
        for q in ("p50", "p99"):
            added = w[f"{q}_ms"] - wo[f"{q}_ms"]
            rows.append(Row(NAME, f"create round trip of {what}, with the webhook vs without it (its entry removed), "
                                  f"{w['n']} creates each, {q}; added: {added:+.1f} ms",
                            f"{q} {fmt_ms(w[f'{q}_ms'])}", f"{q} {fmt_ms(wo[f'{q}_ms'])} (no webhook)",
                            f"{w[f'{q}_ms'] / wo[f'{q}_ms']:.2f}x", "-", None))
    payload = {
        "what": "seconds at depgate's workload webhook, and added to a Job's create round trip",
        "params": {"reviews": args.reviews, "creates": args.creates, "rounds": args.rounds},
        "at_the_webhook": at,
        "handler_mean_ms": round(own_mean_ms, 3),
        "handler_count_by_outcome": by_outcome,
        "api_server_call_mean_ms": round(1000 * server.get("sum", 0) / server["count"], 2) if server.get("count")
        else None,
        "create_round_trip": s,
        "operator_log": log_facts,
        "samples_ms": {"at_the_webhook": [round(v * 1000, 2) for v in reviews],
                       **{f"{app}-{'with' if on else 'without'}": [round(x * 1000, 2) for x in v]
                          for (app, on), v in samples.items()}},
    }
    write_result(NAME, args.out, payload, rows, load0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
