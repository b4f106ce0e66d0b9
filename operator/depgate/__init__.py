"""depgate: gate Deployments on declared startup preconditions, one init container each.

Follow one policy by file name:
  constants.py  the vocabulary: the API's names, the names depgate owns, state and group words
  registry.py   the tables: Kubernetes kinds, workload kinds, precondition types (who judges, what
                they watch, which waiter runs them)
  spec.py       YAML/dict -> validated Policy model (pure)
  render.py     Policy + Deployment -> the server-side-apply body and the rendered Deployment (pure)
  verdicts.py   API objects -> the operator's verdict on each api precondition (pure)
  status.py     verdicts + pods -> the policy's status, conditions and events (pure)
  graph.py      what each policy depends on; all policies -> dependency graph, cycles (pure)
  plan.py       what one reconcile writes, from what it read (pure)
  controller.py one reconcile of one policy: read, plan, write (through kube.py), status
  kube.py       the one adapter that talks to the API server
  wiring.py     the event wiring's decisions: which policies an event wakes, when a worker reconciles
  handlers.py   Kopf handlers: feed watch events to wiring.py and reconciles to controller.py
  settings.py   the operator's settings: one frozen object built from `depgate run`'s flags
  runner.py     `depgate run`: parse the settings, then run Kopf
  echo.py, metrics.py  the policies watch's health check; Prometheus metrics
  render_cli.py, graph_cli.py  `depgate render` (files, offline) and `depgate graph` (live)
  kubectl_plugin.py  `kubectl depgate`: why a gated pod is still in Init
  waiter/       `depgate wait ...`, the program inside every init container (stdlib only)
  dev/          `depgate dev up|down`: a real local control plane compiled from Go modules
"""

from depgate.constants import CONTAINER_PREFIX, FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION

__all__ = ["CONTAINER_PREFIX", "FIELD_MANAGER", "GROUP", "KIND", "PLURAL", "VERSION", "__version__"]

__version__ = "0.1.0"
