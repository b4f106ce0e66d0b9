"""depgate: gate Deployments on declared startup preconditions, one init container each.

Follow one policy by file name:
  spec.py      YAML/dict -> validated Policy model (pure)
  render.py    Policy + Deployment -> the server-side-apply body and the rendered Deployment (pure)
  verdicts.py  API objects -> per-precondition verdicts (pure)
  status.py    verdicts + pods -> the policy's status and conditions (pure)
  graph.py     all policies -> dependency graph, cycles (pure)
  kube.py      the one adapter that talks to the API server
  handlers.py  Kopf handlers: wire events to the core through kube.py
  waiter/      `depgate wait ...`, the program inside every init container (stdlib only)
  dev/         `depgate dev up|down`: a real local control plane compiled from Go modules
"""

GROUP = "depgate.io"
VERSION = "v1alpha1"
PLURAL = "dependencypolicies"
KIND = "DependencyPolicy"
FIELD_MANAGER = "depgate"
CONTAINER_PREFIX = "depgate-"

__version__ = "0.1.0"
