"""depgate.dev.plane.wait_crd_served, what `make run` (depgate.dev.demo), the suite's `crds` fixture and the
benchmarks wait for a new CRD with, against a stand-in kubectl that answers as kubectl does on a brand-new CRD.

Issue 16, item 7: `kubectl wait --for=condition=Established` exits at once with `.status.conditions accessor
error: <nil> is of the type <nil>` when it reads the CRD before the API server wrote its conditions. The
wait must read that state as "not yet", like the state with no status at all, and then the 429 of a list the
watch cache cannot serve yet, and go on polling.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from depgate.dev import demo, plane

CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "dependencypolicies.depgate.io"},
       "spec": {"group": "depgate.io", "names": {"plural": "dependencypolicies"},
                "versions": [{"name": "v1alpha1", "served": True, "storage": True}]}}


def _fake_kubectl(tmp: Path, answers: list[tuple[int, str]]) -> tuple[str, Path]:
    """An executable that gives `answers` (exit code, stdout; a non-zero one's text goes to stderr) in turn
    and records each call's arguments."""
    (tmp / "answers.json").write_text(json.dumps(answers))
    calls = tmp / "calls.jsonl"
    exe = tmp / "kubectl"
    exe.write_text(f"""#!{sys.executable}
import json, sys
answers = json.load(open({str(tmp / "answers.json")!r}))
with open({str(calls)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
n = sum(1 for _ in open({str(calls)!r})) - 1
code, out = answers[min(n, len(answers) - 1)]
(sys.stdout if code == 0 else sys.stderr).write(out)
sys.exit(code)
""")
    exe.chmod(0o755)
    return str(exe), calls


def test_a_crd_read_before_its_conditions_exist_is_waited_for(tmp_path):
    established = {**CRD, "status": {"conditions": [{"type": "Established", "status": "True"}]}}
    kubectl, calls = _fake_kubectl(tmp_path, [
        (0, json.dumps(CRD)),  # no status yet
        (0, json.dumps({**CRD, "status": {"conditions": None}})),  # what kubectl wait's accessor refuses
        (0, json.dumps(established)),
        (1, 'Error from server (TooManyRequests): storage is (re)initializing'),  # the list: cache not filled
        (0, json.dumps(established)),
        (0, '{"kind": "DependencyPolicyList", "items": []}'),
    ])
    plane.wait_crd_served(kubectl, None, "crd/dependencypolicies.depgate.io", timeout=30)
    argv = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [a[:2] for a in argv] == [["get", "crd/dependencypolicies.depgate.io"]] * 3 + [["get", "--raw"]] + [
        ["get", "crd/dependencypolicies.depgate.io"], ["get", "--raw"]]
    assert argv[-1][2] == "/apis/depgate.io/v1alpha1/dependencypolicies?limit=1&resourceVersion=0"
    assert not any("wait" in a for a in argv)


def test_a_crd_never_established_fails_with_what_was_last_seen(tmp_path):
    kubectl, _ = _fake_kubectl(tmp_path, [(0, json.dumps({**CRD, "status": {"conditions": None}}))])
    with pytest.raises(plane.PlaneError, match=r"waiting for crd/dependencypolicies.depgate.io .*conditions: \[\]"):
        plane.wait_crd_served(kubectl, None, "dependencypolicies.depgate.io", timeout=1)


def test_make_run_waits_for_the_crd_with_it(monkeypatch, tmp_path):
    """depgate.dev.demo (`make run`) applies crds/ and then waits with wait_crd_served, never `kubectl wait`."""
    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def fake_run(cmd, *args, **kwargs):
        seen.append([str(c) for c in cmd])

        class Done:
            returncode, stdout, stderr = 0, "", ""
        return Done()

    def fake_wait(kubectl, kubeconfig, name, timeout=60.0):
        seen.append(["wait_crd_served", name])
        raise Stop

    monkeypatch.setenv("USE_EXISTING_CLUSTER", "true")
    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    monkeypatch.setattr(demo.plane, "wait_crd_served", fake_wait)
    with pytest.raises(Stop):
        demo.main()
    assert seen[-1] == ["wait_crd_served", "crd/dependencypolicies.depgate.io"]
    assert any(c[1:3] == ["apply", "--server-side"] for c in seen[:-1])
    assert not any("wait" in c for c in seen[:-1])
