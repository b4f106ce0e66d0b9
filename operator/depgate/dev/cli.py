"""`depgate dev up|down|status|build`: a real local control plane (and helm) for development and tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from depgate.dev import build, gotools, node, plane


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="depgate dev", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where the running plane keeps its state (default $DEPGATE_DEV_DIR or "
                             "~/.cache/depgate/dev)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the control plane, helm and the test tools (kstatus, argocdhealth) "
                                     "into the cache (no-op when cached); prints the plane's bin dir, helm's path, "
                                     "then the tools' bin dir")
    b.add_argument("--only", choices=("plane", "helm", "tools"), default=None, help="compile only this")
    sub.add_parser("up", help="start (or reuse) the plane; prints `export KUBECONFIG=...` last")
    sub.add_parser("down", help="stop every process `up` started and remove its state")
    sub.add_parser("status", help="say whether a plane is running")
    n = sub.add_parser("node", help="a REAL node (kubelet, containerd, runc, CNI bridge; root) joined to the plane: "
                                    "`up` starts (or reuses) the plane and the node, `down` undoes every change the "
                                    "node made to this machine (run it before `depgate dev down`)")
    n.add_argument("action", choices=("up", "down", "build"))
    n.add_argument("--node-dir", type=Path, default=None,
                   help="where the node keeps its state (default $DEPGATE_NODE_DIR or ~/.cache/depgate/node-<v>/run)")
    n.add_argument("--kube-proxy", action=argparse.BooleanOptionalAction, default=True,
                   help="run kube-proxy (ClusterIP Services, iptables mode; also what cluster DNS and the "
                        "`kubernetes` Service from pods go through); default on")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            if args.only in (None, "plane"):
                print(build.build())
            if args.only in (None, "helm"):
                print(build.build_helm())
            if args.only in (None, "tools"):
                print(gotools.build_tools())
            return 0
        if args.cmd == "up":
            state = plane.up(args.state_dir)
            print(f"export KUBECONFIG={state.kubeconfig}")
            return 0
        if args.cmd == "down":
            plane.down(args.state_dir)
            return 0
        if args.cmd == "node":
            if args.action == "build":
                print(node.build_node())
            elif args.action == "up":
                state = plane.up(args.state_dir)
                rn = node.RealNode(state.kubeconfig, args.node_dir, kube_proxy=args.kube_proxy).start()
                print(f"node {rn.name} Ready (InternalIP {rn.node_ip}); export KUBECONFIG={state.kubeconfig}")
            elif not node.down(args.node_dir):
                print("no node running", file=sys.stderr)
            return 0
        st = plane.load_state(Path(args.state_dir or plane.default_state_dir()))
        if st is None or not plane.running(st):
            print("not running")
            return 1
        print(f"running: {st.server} ({st.version}); export KUBECONFIG={st.kubeconfig}")
        return 0
    except (build.BuildError, plane.PlaneError, node.NodeError) as e:
        print(f"depgate dev: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
