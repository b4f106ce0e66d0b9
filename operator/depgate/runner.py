"""`depgate run`: the operator process (Kopf) against the current kubeconfig or in-cluster config."""

from __future__ import annotations

import logging
import sys

from depgate import settings as settings_module
from depgate.settings import Settings


def parse(argv: list[str]) -> Settings:
    """The settings of `depgate run ARGV` (depgate.settings holds every flag and its default)."""
    return settings_module.parse(argv)


# The API server stores JSON nested up to 10,000 levels deep in any field a CRD leaves free (its
# decoder's limit; a custom resource a `resource` precondition names can be one). Python's decoder
# stops at the recursion limit (1,000 frames), which took Kopf's watch down for good. 30,000 frames
# cover decoding, copying (two frames a level) and encoding such an object; it stays far inside an
# 8 MiB C stack (measured: json.loads of 40,000 levels needs less).
RECURSION_LIMIT = 30_000


def main(argv: list[str]) -> int:
    settings = parse(argv)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    logging.basicConfig(level=logging.DEBUG if settings.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.verbose:
        # Kopf logs every handled event at INFO; depgate logs what it decides.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("kopf.activities").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per admission review
    import kopf

    from depgate import handlers

    handlers.install(settings)  # the handlers' one holder of the settings, set before Kopf runs them
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    try:
        kopf.run(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,
            liveness_endpoint=liveness,
        )
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
