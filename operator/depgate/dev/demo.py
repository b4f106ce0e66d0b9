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


def _kubectl() -> str:
    local = build.bin_dir() / "kubectl"
    return str(local) if local.exists() else "kubectl"


def _table(kubectl: str, stop: threading.Event) -> None:
    last = ""
    while not stop.wait(1.0):
        out = subprocess.run([kubectl, "get", "dp", "-A"], capture_output=True, text=True, check=False).stdout
        if out and out != last:
            print("\n" + time.strftime("%H:%M:%S") + "  kubectl get dp -A\n" + out, file=sys.stderr, flush=True)
            last = out


def main() -> int:
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() != "true":
        state = plane.up()
        os.environ["KUBECONFIG"] = state.kubeconfig
        print(f"export KUBECONFIG={state.kubeconfig}   # in another shell, to look around", file=sys.stderr)
    kubectl = _kubectl()
    subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], check=True)
    subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    "crd/dependencypolicies.depgate.io"], check=True, capture_output=True)
    stop = threading.Event()

    def apply_examples() -> None:
        time.sleep(2)  # let the operator's watches start first, so every step shows in the table
        subprocess.run([kubectl, "apply", "-f", str(REPO / "examples/microservices/00-namespace.yaml")], check=False)
        subprocess.run([kubectl, "apply", "-R", "-f", str(REPO / "examples/microservices")], check=False)
        _table(kubectl, stop)

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
