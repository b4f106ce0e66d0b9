"""`make run`: the local plane (or $KUBECONFIG with USE_EXISTING_CLUSTER=true), the CRD, the
operator in the foreground, examples/microservices applied, and a live table of the policies."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from depgate.dev import build, images, plane

REPO = Path(__file__).resolve().parents[3]
COLUMNS = ("custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,BLOCKING:.status.blockingSummary,"
           "READY:.status.conditions[?(@.type=='Ready')].status,REASON:.status.conditions[?(@.type=='Ready')].reason,"
           "PODS:.status.pods.ready,OF:.status.pods.total")


def _kubectl() -> str:
    local = build.bin_dir() / "kubectl"
    return str(local) if local.exists() else "kubectl"


def _table(kubectl: str, stop: threading.Event) -> None:
    last = ""
    while not stop.wait(1.0):
        out = subprocess.run([kubectl, "get", "dp", "-A", "-o", COLUMNS], capture_output=True, text=True,
                             check=False).stdout
        out += _pods(kubectl)
        if out and out != last:  # print only changes (no AGE column, so time alone changes nothing)
            print("\n" + time.strftime("%H:%M:%S") + "\n" + out, file=sys.stderr, flush=True)
            last = out


def _pods(kubectl: str) -> str:
    """The example's pods as kubectl prints them (STATUS Init:N/M while an init container blocks), without
    the columns that change by themselves (RESTARTS' "ago", AGE)."""
    out = subprocess.run([kubectl, "get", "pods", "-n", "microservices"], capture_output=True, text=True,
                         check=False).stdout
    rows = [line.split()[:3] for line in out.splitlines() if line.strip()]
    if len(rows) < 2:
        return ""
    width = max(len(r[0]) for r in rows) + 3
    return "\n" + "".join(f"{r[0]:<{width}}{r[1]:<8}{r[2] if len(r) > 2 else ''}\n" for r in rows)


PROBE = ('{"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": "webhook-probe", '
         '"namespace": "default"}, "spec": {"workloadRef": {"name": "webhook-probe"}, "preconditions": '
         '[{"name": "probe", "tcp": {"host": "localhost", "port": 1}}]}}')


def _wait_webhook(kubectl: str, stop: threading.Event, timeout: float) -> bool:
    """Until a server-side dry run of a policy comes back with the author depgate's webhook recorded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        out = subprocess.run([kubectl, "create", "--dry-run=server", "-o", "jsonpath={.metadata.annotations}",
                              "-f", "-"], input=PROBE, capture_output=True, text=True, check=False)
        if out.returncode == 0 and "depgate.io/author" in out.stdout:
            return True
        stop.wait(0.5)
    return False


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _real_node(kubeconfig: str) -> object | None:
    """A real node (issue 19) for the example's pods, so that they really sit in Init:N/M while blocked and
    run after; the kwok node is cordoned while it runs. None (kwok, as before) where it cannot run here:
    the reason is said once."""
    from depgate.dev import node as devnode

    reason = devnode.cannot_run()
    if reason is not None:
        _say(f"pods run on kwok (init containers are not really run): {reason}")
        return None
    state = devnode.default_node_state_dir()
    if devnode.load_node_state(state) is not None:  # a `make run` killed without its teardown
        devnode.down(state)
    _say("starting a real node (kubelet, containerd, kube-proxy, CoreDNS); the first run builds them "
         "into ~/.cache/depgate, a few minutes ...")
    t0 = time.monotonic()
    node = devnode.RealNode(kubeconfig, state, images=images.DEMO_IMAGES, cordon=(plane.NODE_NAME,),
                            die_with_parent=True, say=_say)
    try:
        node.start()
    except (build.BuildError, devnode.NodeError) as e:  # start() has undone what it did
        _say(f"the real node did not start ({e}); pods run on kwok")
        return None
    _say(f"real node {node.name} ready in {time.monotonic() - t0:.0f} s; the kwok node is cordoned")
    return node


def main() -> int:
    real: object | None = None
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() != "true":
        state = plane.up()
        os.environ["KUBECONFIG"] = state.kubeconfig
        print(f"export KUBECONFIG={state.kubeconfig}   # in another shell, to look around", file=sys.stderr)
        real = _real_node(state.kubeconfig)
    try:
        # the waiter image the real node holds (built from this checkout); kwok runs any image name
        return _demo(() if real is None else (f"--waiter-image={images.WAITER_IMAGE}",))
    finally:
        if real is not None:
            _say("stopping the real node (undoing its processes, mounts, bridge and rules) ...")
            problems = real.stop()  # type: ignore[attr-defined]
            _say("real node stopped" if not problems else f"the real node's teardown left: {problems}")


def _apply_rbac(kubectl: str) -> None:
    """The install's RBAC (plane.RBAC_KINDS): the operator runs here as the plane's admin, but the pods it
    gates read their policy's verdicts through the ClusterRole depgate-verdict-reader it binds for them."""
    rendered = subprocess.run([kubectl, "kustomize", str(REPO / "manifests")], check=True, capture_output=True,
                              text=True).stdout
    subprocess.run([kubectl, "apply", "--server-side", "-f", "-"], input=plane.rbac_documents(rendered), text=True,
                   check=True, stdout=subprocess.DEVNULL)


def _demo(extra: tuple[str, ...] = ()) -> int:
    kubectl = _kubectl()
    subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], check=True)
    _apply_rbac(kubectl)
    # the operator keeps its webhook's signing key and certificate in a Secret of its own namespace
    subprocess.run([kubectl, "create", "namespace", "depgate-system"], capture_output=True, check=False)
    plane.wait_crd_served(kubectl, os.environ.get("KUBECONFIG"), "crd/dependencypolicies.depgate.io")
    stop = threading.Event()

    def apply_examples() -> None:
        # Policies go through depgate's admission webhook: wait until the API server calls it (the
        # operator registers it once it listens), so that each policy's author is recorded.
        if not _wait_webhook(kubectl, stop, 90):
            print("depgate's admission webhook is not answering; applying the examples anyway (their policies will "
                  "say Unauthorized until re-applied)", file=sys.stderr, flush=True)
        ex = REPO / "examples" / "microservices"

        def kubectl_apply(name: str) -> None:
            subprocess.run([kubectl, "apply", "-f", str(ex / name)], check=False)

        table = threading.Thread(target=_table, args=(kubectl, stop), daemon=True)
        table.start()
        # The app and support tiers first, as in the lesson: they wait (BLOCKING shows on what) ...
        for name in ("00-namespace.yaml", "02-app-tier.yaml", "03-support-tier.yaml"):
            kubectl_apply(name)
        # ... until the data tier comes up a few seconds later.
        if not stop.wait(6):
            print("\n--- applying the data tier (Redis) ---", file=sys.stderr, flush=True)
            kubectl_apply("01-data-tier.yaml")

    threading.Thread(target=apply_examples, daemon=True).start()
    from depgate.runner import main as run_main

    try:
        return run_main([*extra, *sys.argv[1:]])
    finally:
        stop.set()
        print("operator stopped; the plane keeps running: `make down` (or `depgate dev down`) stops it",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
