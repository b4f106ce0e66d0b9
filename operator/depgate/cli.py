"""The `depgate` console script.

Sub-commands import their modules lazily: `depgate wait` runs in every init container and must
start fast with the standard library alone, so nothing heavy is imported before dispatch.
"""

from __future__ import annotations

import sys

USAGE = """usage: depgate <command> [options]

commands:
  run      run the operator against the current kubeconfig
  wait     wait for one precondition (the program inside every init container)
  render   print Deployments as the operator would apply them (offline)
  graph    print the live dependency graph across all policies
  dev      up | down | status: a real local control plane for development and tests

'depgate <command> --help' for each command's options.
"""


def without_kubernetes_client() -> None:
    """Keep the `kubernetes` client out of this process. Kopf imports it whenever it is installed (to
    recognise that client's objects, which depgate never hands it); the operator talks to the API
    through depgate.kube alone, and the client's generated models would cost 35 MiB of its RSS. The
    kubectl plugin and `depgate graph` still use the client, in their own processes."""
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "wait":
        from depgate.waiter.cli import main as wait_main

        return wait_main(rest)
    if command == "run":
        without_kubernetes_client()
        from depgate.runner import main as run_main

        return run_main(rest)
    if command == "render":
        from depgate.render_cli import main as render_main

        return render_main(rest)
    if command == "graph":
        from depgate.graph_cli import main as graph_main

        return graph_main(rest)
    if command == "dev":
        from depgate.dev.cli import main as dev_main

        return dev_main(rest)
    if command in ("--version", "version"):
        from depgate import __version__

        print(__version__)
        return 0
    print(f"depgate: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
