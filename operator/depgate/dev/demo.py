"""`make run`: the local plane (or $KUBECONFIG with USE_EXISTING_CLUSTER=true), the CRD, the
operator in the foreground, examples/microservices applied, and a live table of the policies."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from depgate.dev import build, plane

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
        if out and out != last:  # print only changes (no AGE column, so time alone changes nothing)
            print("\n" + time.strftime("%H:%M:%S") + "\n" + out, file=sys.stderr, flush=True)
            last = out


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


def main() -> int:
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() != "true":
        state = plane.up()
        os.environ["KUBECONFIG"] = state.kubeconfig
        print(f"export KUBECONFIG={state.kubeconfig}   # in another shell, to look around", file=sys.stderr)
    kubectl = _kubectl()
    subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], check=True)
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
        return run_main(sys.argv[1:])
    finally:
        stop.set()
        print("operator stopped; the plane keeps running: `make down` (or `depgate dev down`) stops it",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
