"""The fault suite (issue 7): the operator killed, the API server stopped, etcd compacted, a second
writer, generated policies. Each test has a fast variant (marker `chaos`, in `make test`) and a
long one at the issue's sizes (markers `chaos` and `chaos_long`, only when `-m` names chaos_long:
`make chaos`). DEPGATE_CHAOS_SCALE scales the long sizes (see support.full_sizes);
DEPGATE_CHAOS_SEED fixes the random kill moments.

Every test runs its own operator processes, cluster-wide (the default install; `depgate run -n`
would need the namespaced overlay's right to list Namespaces, which the session's ServiceAccount
must not get: test_manifests compares its rights to a snapshot), as the manifests' ServiceAccount,
and ends them itself. So no other operator may run meanwhile (the `operators` fixture checks).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import support
from tests.conftest import Operator, Plane, start_operator, stop_operator

MARKERS = {
    "chaos": "fault-injection tests (the fast part runs in make test)",
    "chaos_long": "the fault suite at the issue's sizes (only with -m chaos_long: make chaos)",
}


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long part runs only when asked for by marker (`-m chaos_long`), whatever else is selected."""
    if "chaos_long" in (config.option.markexpr or ""):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("chaos_long") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def sized() -> Any:
    """Parametrize a test with the fast sizes (`chaos`) and the issue's (`chaos_long`)."""
    return pytest.mark.parametrize("sizes", [
        pytest.param(support.FAST, id="fast", marks=pytest.mark.chaos),
        pytest.param(support.full_sizes(), id="full",
                     marks=[pytest.mark.chaos, pytest.mark.chaos_long, pytest.mark.timeout(3600)]),
    ])


# ---------------------------------------------------------------------------------------------------
# the report: numbers each test measured, printed at the end of the run

_REPORT: list[str] = []


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Any:
    def say(line: str) -> None:
        _REPORT.append(f"{request.node.name}: {line}")

    return say


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    if _REPORT:
        terminalreporter.section("depgate chaos report")
        for line in _REPORT:
            terminalreporter.write_line(line)
    out = os.environ.get("DEPGATE_CHAOS_RESULTS")  # `make chaos` keeps the report in bench/results/
    if out and _REPORT:
        import json
        import platform

        from depgate.dev.versions import KUBERNETES_VERSION

        stats = terminalreporter.stats
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout
        # A run of some of the tests replaces their lines and keeps the other tests' (with the run they
        # came from), so running one test file does not drop the rest of `make chaos`'s report.
        ran = {line.split(": ", 1)[0] for line in _REPORT}
        kept: list[str] = []
        earlier: list[Any] = []
        if Path(out).exists():
            old = json.loads(Path(out).read_text())
            kept = [line for line in old.get("report", []) if line.split(": ", 1)[0] not in ran]
            if kept:
                earlier = [{k: old.get(k) for k in ("outcome", "exit_status")} | {
                    "git_commit": old.get("machine", {}).get("git_commit"), "date": old.get("machine", {}).get("date"),
                    "tests": sorted({line.split(": ", 1)[0] for line in kept})}, *old.get("earlier_runs", [])][:5]
        Path(out).write_text(json.dumps({
            "benchmark": "chaos",
            "outcome": {k: len(stats.get(k, [])) for k in ("passed", "failed", "error", "skipped")},
            "exit_status": int(exitstatus),
            "report": kept + _REPORT,
            **({"earlier_runs": earlier} if earlier else {}),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "kubernetes": KUBERNETES_VERSION,
                        "python": platform.python_version(), "git_commit": commit.strip(),
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        }, indent=2) + "\n")


@pytest.fixture(scope="session")
def seed() -> int:
    return int(os.environ.get("DEPGATE_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))


@pytest.fixture
def rng(seed: int, request: pytest.FixtureRequest, report: Any) -> random.Random:
    report(f"seed {seed} (DEPGATE_CHAOS_SEED={seed} repeats the random moments)")
    return random.Random(f"{seed}:{request.node.name}")


# ---------------------------------------------------------------------------------------------------
# the plane and the API


@pytest.fixture(scope="session")
def api(api_client: Any) -> support.Api:
    return support.Api(api_client)


@pytest.fixture
def plane_dir(plane: Plane, report: Any) -> Iterator[Path]:
    """The state dir of the plane this session started (components can be restarted there). After the
    test, wait until kube-controller-manager hears the API server again (its reflectors back off for
    up to a minute after restarts: dev.plane.wait_settled), so that the next test finds a whole plane."""
    from depgate.dev import plane as devplane

    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        pytest.skip("stops and restarts components of the local plane; USE_EXISTING_CLUSTER runs none")
    d = Path(plane.kubeconfig).parent
    if not (d / "state.json").exists():
        pytest.skip(f"no local plane state in {d}")
    yield d
    took = devplane.wait_settled(d)
    report(f"kube-controller-manager heard the API server again {took:.1f}s after the test")


@pytest.fixture
def proxy(plane: Plane) -> Iterator[Any]:
    """A TCP proxy to the plane's API server that can black-hole the connections it carries."""
    from urllib.parse import urlparse

    from tests.chaos.blackhole import BlackholeProxy

    u = urlparse(plane.server)
    p = BlackholeProxy((u.hostname or "127.0.0.1", int(u.port or 443))).start()
    yield p
    p.stop()


def _running_operators() -> list[int]:
    """`depgate run` children of this process (the integration suite's session operator, or one a
    fault test left running): they would fight the operators a fault test kills and restarts."""
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = fh.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if ppid == me and "depgate" in argv and "run" in argv:
            found.append(int(entry))
    return found


# ---------------------------------------------------------------------------------------------------
# the operators a test starts, kills and restarts


@dataclass
class Operators:
    kubeconfig: str
    tmp: Path
    plane: Plane | None = None
    started: list[Operator] = field(default_factory=list)

    @property
    def current(self) -> Operator:
        return self.started[-1]

    def start(self, *extra: str) -> Operator:
        # The fault suite is about crashes, outages and hostile objects, not about who wrote a policy
        # (tests/integration/test_authority.py): its operators trust every policy and serve no webhook,
        # so that policies can be written while they are dead.
        op = start_operator(self.kubeconfig, self.tmp, "--authority=off", "--webhook-port=0", *extra)
        self.started.append(op)
        return op

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, as when a node dies."""
        op = self.current
        op.proc.kill()
        op.proc.wait(10)

    def alive(self) -> bool:
        return bool(self.started) and self.current.proc.poll() is None

    def stop(self) -> None:
        for op in self.started:  # every one still running (the tests of leader election run two)
            if op.proc.poll() is None:
                stop_operator(op)

    def tracebacks(self) -> list[str]:
        out = []
        for op in self.started:
            text = op.log_text()
            if "Traceback" in text:
                at = text.index("Traceback")
                out.append(f"{op.log}:\n{text[max(0, at - 2000):at + 4000]}")
        return out


@pytest.fixture
def operators(plane: Plane, crds: list[str], operator_kubeconfig: str, namespace: str, api: support.Api,
              tmp_path: Path) -> Iterator[Operators]:
    others = _running_operators()
    if others:
        pytest.fail(f"a depgate operator (pid {others}) started by this session still runs: the fault tests "
                    "kill and restart their own; run tests/chaos before tests/integration (the default order) "
                    "or alone", pytrace=False)
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        plane.run_kubectl("delete", kind, "depgate.io", "--ignore-not-found")
    ops = Operators(operator_kubeconfig, tmp_path, plane)
    yield ops
    # Leave no policy behind: their finalizer needs a running operator, or the namespace never goes.
    try:
        if not ops.alive():
            ops.start()
        path = support.DP.format(ns=namespace)
        for name in api.by_name(path):
            api.delete(f"{path}/{name}")
        support.poll(lambda: sorted(api.by_name(path)), 120, "the test's policies to be deleted")
    finally:
        ops.stop()
