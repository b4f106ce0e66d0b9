"""Reproduction for issue 11: a fresh plane, the operator started right after the CRD is established,
one reconcile, N times in a row.

Each round: `depgate dev up` in a new state dir (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok), the CRD applied and Established, the operator started at once (as the suite
starts it), then what a first test does: a namespace (its default ServiceAccount is
kube-controller-manager's work), a Deployment, a policy on a ConfigMap that does not exist yet
(Blocking, init containers rendered), the ConfigMap created (Satisfied). Every step has a bound; a
round that misses one is a failure, and its diagnostics (the API server's watch-cache metrics, the
components' log tails, which watches the operator says it holds) are written next to the result.

    python bench/fresh_plane.py --rounds 20 [--out bench/results/fresh_plane.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import (  # noqa: E402
    Plane,
    operator_token_kubeconfig,
    start_operator,
    stop_operator,
    wait_aggregated,
)
from tests.integration.kubehelp import apply, deployment, entry, get, init_names, policy  # noqa: E402

from depgate.dev import plane as devplane  # noqa: E402

STEP_TIMEOUT = 30.0


def wait(what: str, pred: Any, timeout: float = STEP_TIMEOUT) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def metrics(p: Plane, prefixes: tuple[str, ...]) -> list[str]:
    out = p.run_kubectl("get", "--raw", "/metrics", check=False).stdout
    return [line for line in out.splitlines() if line.startswith(prefixes)]


def one_round(i: int, tmp: Path, as_sa: bool) -> dict[str, Any]:
    state_dir = tmp / f"plane-{i}"
    t0 = time.monotonic()
    st = devplane.up(state_dir, die_with_parent=True)
    bins, _ = devplane.find_binaries()
    p = Plane(st.kubeconfig, str(bins / "kubectl"), st.server, pods=st.pods)
    steps: dict[str, float] = {"plane_up": time.monotonic() - t0}
    op = None
    try:
        crd = REPO / "crds" / "dependencypolicies.depgate.io.yaml"
        p.run_kubectl("apply", "--server-side", "-f", str(crd))
        devplane.wait_crd_served(p.kubectl, p.kubeconfig, "crd/dependencypolicies.depgate.io")
        steps["crd_established"] = time.monotonic() - t0
        kubeconfig = st.kubeconfig
        if as_sa:  # as the suite runs it: the manifests' ServiceAccount, its RBAC aggregated by kcm
            rendered = p.run_kubectl("kustomize", str(REPO / "manifests")).stdout
            p.run_kubectl("apply", "--server-side", "-f", "-", input=devplane.rbac_documents(rendered))
            wait_aggregated(p)
            kubeconfig = str(operator_token_kubeconfig(p, tmp))
            steps["rbac"] = time.monotonic() - t0
        op = start_operator(kubeconfig, tmp)
        steps["operator_up"] = time.monotonic() - t0
        ns = f"round-{i}"
        p.run_kubectl("create", "namespace", ns)
        steps["default_sa"] = wait("the namespace's default ServiceAccount (kube-controller-manager)",
                                   lambda: p.run_kubectl("get", "sa", "default", "-n", ns, check=False)
                                   .returncode == 0)
        apply(p, ns, deployment("app"))
        apply(p, ns, policy("app", "app", "- name: settings\n  configMap: {name: app-config, keys: [k]}"))
        steps["rendered"] = wait("the Deployment rendered (operator's policy and Deployment watches)",
                                 lambda: init_names(get(p, ns, "deployment", "app")) == ["depgate-settings"])
        steps["blocking"] = wait("the policy's status says Blocking",
                                 lambda: entry(get(p, ns, "dependencypolicy", "app"), "settings")
                                 .get("state") == "Blocking")
        p.run_kubectl("create", "configmap", "app-config", "-n", ns, "--from-literal=k=v")
        steps["satisfied"] = wait("the policy's status says Satisfied after the ConfigMap (ConfigMap watch)",
                                  lambda: entry(get(p, ns, "dependencypolicy", "app"), "settings")
                                  .get("state") == "Satisfied")
        return {"round": i, "ok": True, "steps_s": {k: round(v, 2) for k, v in steps.items()}}
    except Exception as e:
        diag: dict[str, Any] = {"round": i, "ok": False, "error": f"{type(e).__name__}: {e}",
                                "steps_s": {k: round(v, 2) for k, v in steps.items()},
                                "traceback": traceback.format_exc()}
        diag["apiserver_metrics"] = metrics(p, ("apiserver_watch_cache_", "apiserver_storage_events_received",
                                                "apiserver_registered_watchers", "apiserver_watch_events_total",
                                                "apiserver_init_events_total", "etcd_bookmark",
                                                "apiserver_watch_cache_initializations"))
        for name in ("kube-apiserver", "kube-controller-manager", "etcd"):
            log = state_dir / "logs" / f"{name}.log"
            diag[f"{name}_log_tail"] = log.read_text(errors="replace").splitlines()[-80:] if log.exists() else []
        if op is not None:
            diag["operator_log_tail"] = op.log_text().splitlines()[-80:]
        keep = tmp / f"failed-{i}"
        shutil.copytree(state_dir / "logs", keep / "logs", dirs_exist_ok=True)
        if op is not None:
            shutil.copy(op.log, keep / "operator.log")
        diag["kept"] = str(keep)
        return diag
    finally:
        if op is not None:
            stop_operator(op)
        devplane.down(state_dir, quiet=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--stop-on-failure", action="store_true")
    ap.add_argument("--as-admin", action="store_true", help="run the operator as admin (default: as the suite does, "
                    "the manifests' ServiceAccount)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="depgate-fresh-plane-"))
    results = []
    for i in range(args.rounds):
        r = one_round(i, tmp, not args.as_admin)
        results.append(r)
        verdict = "ok" if r["ok"] else f"FAILED: {r['error']} (logs kept in {r['kept']})"
        print(f"round {i + 1}/{args.rounds}: {verdict} {r['steps_s']}", flush=True)
        if not r["ok"] and args.stop_on_failure:
            break
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", flush=True)
    payload = {"rounds": len(results), "failures": len(failed), "results": results}
    if args.out:
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    else:
        (tmp / "fresh_plane.json").write_text(json.dumps(payload, indent=1) + "\n")
        print(f"details: {tmp / 'fresh_plane.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
