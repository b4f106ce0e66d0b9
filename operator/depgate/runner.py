"""`depgate run`: the operator process (Kopf) against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from depgate.render import DEFAULT_WAITER_IMAGE


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="depgate run", description=__doc__)
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable; default: all namespaces)")
    p.add_argument("--kubeconfig", default=None, help="path to a kubeconfig (default: $KUBECONFIG, then in-cluster)")
    p.add_argument("--waiter-image", default=os.environ.get("DEPGATE_WAITER_IMAGE", DEFAULT_WAITER_IMAGE),
                   help="the image of the init containers depgate renders (pin it: tag@digest) "
                        "[env DEPGATE_WAITER_IMAGE, default %(default)s]")
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("DEPGATE_METRICS_PORT", "0")),
                   help="serve Prometheus metrics on this port (0: off) [env DEPGATE_METRICS_PORT]")
    p.add_argument("--health-port", type=int, default=int(os.environ.get("DEPGATE_HEALTH_PORT", "0")),
                   help="serve Kopf's liveness endpoint /healthz on this port (0: off)")
    p.add_argument("--resync-seconds", type=float, default=300.0,
                   help="reconcile every policy at least this often, even without events (default 300)")
    p.add_argument("--watch-inactivity-seconds", type=float, default=70.0,
                   help="restart a watch that delivered nothing, not even a bookmark (the API server sends one "
                        "about every 60 s), for this long (default 70)")
    p.add_argument("--max-custom-watches", type=_positive, default=64,
                   help="watch custom resources (`resource` preconditions) of at most this many kinds per namespace "
                        "at once, one shared watch each; a precondition over it says TooManyWatches (default 64)")
    p.add_argument("--max-custom-kinds-per-policy", type=_positive, default=8,
                   help="watch at most this many kinds of custom resource for one policy; its other `resource` "
                        "preconditions say TooManyWatches (default 8)")
    p.add_argument("--echo-seconds", type=float, default=120.0,
                   help="a status write the policies watch has not delivered back within this long fails the "
                        "liveness probe (/healthz) until it does (default 120)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


# The API server stores JSON nested up to 10,000 levels deep in any field a CRD leaves free (its
# decoder's limit; a custom resource a `resource` precondition names can be one). Python's decoder
# stops at the recursion limit (1,000 frames), which took Kopf's watch down for good. 30,000 frames
# cover decoding, copying (two frames a level) and encoding such an object; it stays far inside an
# 8 MiB C stack (measured: json.loads of 40,000 levels needs less).
RECURSION_LIMIT = 30_000


def main(argv: list[str]) -> int:
    args = parse(argv)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Kopf logs every handled event at INFO; depgate logs what it decides.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities").setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # Kopf's login and our adapter read the same file
    import kopf

    from depgate import handlers

    handlers.OPTIONS.waiter_image = args.waiter_image
    handlers.OPTIONS.kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG")
    handlers.OPTIONS.resync_seconds = args.resync_seconds
    handlers.OPTIONS.watch_inactivity_seconds = args.watch_inactivity_seconds
    handlers.OPTIONS.echo_seconds = args.echo_seconds
    handlers.OPTIONS.max_custom_watches = args.max_custom_watches
    handlers.OPTIONS.max_custom_kinds_per_policy = args.max_custom_kinds_per_policy
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    try:
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=True,
            liveness_endpoint=liveness,
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
