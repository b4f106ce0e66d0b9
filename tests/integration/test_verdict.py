"""`depgate wait verdict` against the real API server, as a workload pod's ServiceAccount.

The operator judges API-object preconditions and writes the verdict into the policy's status; the
init container reads it with a watch, holding only what the RoleBinding depgate-verdict-<policy> grants
it: the ClusterRole depgate-verdict-reader (get and watch DependencyPolicies of its namespace)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import wait_for
from tests.integration.kubehelp import SETTINGS, apply, deployment, entry, get, policy, wait_policy


def _token(plane, ns: str, sa: str, tmp: Path) -> Path:
    tok = plane.run_kubectl("create", "token", sa, "-n", ns, "--duration=10m").stdout.strip()
    f = tmp / f"{sa}.token"
    f.write_text(tok)
    return f


def _waiter(api_client, ns: str, token: Path, tmp: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    log = tmp / f"termination-{token.stem}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "depgate", "wait", "verdict", "--policy=app", "--precondition=settings",
         f"--namespace={ns}", f"--server={api_client.configuration.host}", f"--token-file={token}",
         f"--ca-file={api_client.configuration.ssl_ca_cert}", f"--termination-log={log}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, log


def test_verdict_waiter_returns_when_the_operator_says_satisfied(plane, api_client, operator, namespace, tmp_path):
    plane.run_kubectl("create", "serviceaccount", "app-sa", "-n", namespace)
    apply(plane, namespace, deployment("app", sa="app-sa"))
    apply(plane, namespace, policy("app", "app", SETTINGS))
    wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("state") == "Blocking",
                what="settings Blocking")
    binding = wait_for(lambda: get(plane, namespace, "rolebinding", "depgate-verdict-app"), 20,
                       what="the waiter's RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "app-sa", "namespace": namespace}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "depgate-verdict-reader"}
    assert get(plane, namespace, "role", "depgate-wait-app") is None  # depgate writes no Role any more

    def may(verb: str, resource: str, ns: str = namespace) -> bool:
        out = plane.run_kubectl("auth", "can-i", verb, resource, "-n", ns,
                                f"--as=system:serviceaccount:{namespace}:app-sa", check=False)
        return out.stdout.strip() == "yes"

    # the workload's ServiceAccount may get and watch policies of its namespace, and nothing else
    assert may("get", "dependencypolicies/app") and may("watch", "dependencypolicies")
    assert not may("list", "dependencypolicies") and not may("get", "secrets")
    assert not may("get", "dependencypolicies", "default")

    token = _token(plane, namespace, "app-sa", tmp_path)
    proc, log = _waiter(api_client, namespace, token, tmp_path, "--timeout=120")
    try:
        # a ConfigMap without the key: still blocking, the waiter keeps waiting on its watch
        apply(plane, namespace, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config}\ndata: {other: x}\n")
        wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("reason") == "MissingKeys",
                    what="MissingKeys")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        apply(plane, namespace,
              "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config}\ndata: {redis.conf: 'maxmemory 1mb'}\n")
        satisfied_at = time.monotonic()
        wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("state") == "Satisfied",
                    what="settings Satisfied")
        code = proc.wait(timeout=30)
        exited_after = time.monotonic() - satisfied_at
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert log.read_text().startswith("Ready"), log.read_text()
    # one line per change of state, not one per attempt
    assert len(err.strip().splitlines()) <= 4, err
    print(f"verdict waiter exited {exited_after:.2f}s after the ConfigMap got its key")


def test_verdict_waiter_without_the_role_is_forbidden(plane, api_client, operator, namespace, tmp_path):
    plane.run_kubectl("create", "serviceaccount", "stranger", "-n", namespace)
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("app", "app", SETTINGS))
    wait_policy(plane, namespace, "app", lambda p: entry(p, "settings").get("state") == "Blocking")
    token = _token(plane, namespace, "stranger", tmp_path)
    proc, log = _waiter(api_client, namespace, token, tmp_path, "--timeout=3")
    code = proc.wait(timeout=60)
    err = proc.stderr.read() if proc.stderr else ""
    assert code == 124, err
    reason = log.read_text()
    assert reason.startswith("Timeout: Forbidden"), reason
    assert "stranger" in err or "stranger" in reason, err
