"""Issue 11's root cause, reproduced: kube-controller-manager goes deaf after kube-apiserver restarts.

A fresh plane; kube-apiserver restarted N times (down D seconds each, a probe between restarts);
then how long a new namespace waits for its default ServiceAccount (kube-controller-manager's
work), and, with --settle, how long `dev.plane.wait_settled` waited first. kube-controller-manager
runs at --v=4 here, so its log shows each reflector's "Watch failed - backing off", the 410 of the
fresh watch cache ("too old resource version"), and when it lists again; the log is kept.

    python bench/apiserver_restarts.py --restarts 3 --down 5 [--settle]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from depgate.dev import plane as devplane  # noqa: E402


def sa_wait(kubectl: list[str], ns: str, timeout: float = 150) -> float:
    subprocess.run([*kubectl, "create", "namespace", ns], check=True, capture_output=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if subprocess.run([*kubectl, "get", "sa", "default", "-n", ns], capture_output=True).returncode == 0:
            return time.monotonic() - t0
        time.sleep(0.2)
    return float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--down", type=float, default=5.0)
    ap.add_argument("--settle", action="store_true", help="wait_settled() after the last restart")
    args = ap.parse_args()
    os.environ.setdefault("DEPGATE_DEV_VERBOSITY", "4")
    tmp = Path(tempfile.mkdtemp(prefix="depgate-restarts-"))
    st = devplane.up(tmp / "plane", die_with_parent=True)
    kubectl = [str(devplane.find_binaries()[0] / "kubectl"), f"--kubeconfig={st.kubeconfig}"]
    try:
        print(f"settled plane: a new namespace's ServiceAccount after {sa_wait(kubectl, 'probe-0'):.2f}s", flush=True)
        for r in range(args.restarts):
            devplane.restart(tmp / "plane", "kube-apiserver", args.down)
            if r < args.restarts - 1:
                print(f"after restart {r + 1}: {sa_wait(kubectl, f'probe-{r + 1}'):.2f}s", flush=True)
        if args.settle:
            print(f"wait_settled: {devplane.wait_settled(tmp / 'plane'):.2f}s", flush=True)
        print(f"after restart {args.restarts}: {sa_wait(kubectl, 'probe-last'):.2f}s", flush=True)
    finally:
        shutil.copy(tmp / "plane" / "logs" / "kube-controller-manager.log", tmp / "kube-controller-manager.log")
        devplane.down(tmp / "plane", quiet=True)
        print(f"kube-controller-manager's log: {tmp / 'kube-controller-manager.log'} "
              "(grep 'Watch failed - backing off\\|too old resource version\\|Listing and watching')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
