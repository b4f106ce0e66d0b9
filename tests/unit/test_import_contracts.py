"""The import contracts (.importlinter) enforce what the layout promises: each import below, added to a
copy of the package, must break `lint-imports`, and the package as it is must keep every contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(source_root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(source_root))  # the copy shadows the installed package
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / ".importlinter"), "--no-cache"],
                          cwd=source_root, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_package_keeps_every_contract(tmp_path: Path) -> None:
    shutil.copytree(REPO / "operator" / "depgate", tmp_path / "depgate")
    proc = lint(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 6


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("spec", "import yaml", "imports no client, no YAML, no Prometheus"),
    ("render", "import prometheus_client", "imports no client, no YAML, no Prometheus"),
    ("status", "from depgate import metrics", "imports no client, no YAML, no Prometheus"),
    ("spec", "from depgate import status", "Layers:"),
    ("kube", "from depgate import controller", "Layers:"),
    ("kube", "from depgate import render", "kube.py (the adapter) imports no decision"),
    ("graph", "import kopf", "imports no client, no YAML, no Prometheus"),
    ("handlers", "from depgate.dev import plane", "The operator and the waiter never import depgate.dev"),
    ("kube", "from kubernetes import client", "The operator talks to the API through depgate.kube alone"),
])
def test_each_forbidden_import_breaks_the_check(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copytree(REPO / "operator" / "depgate", tmp_path / "depgate")
    path = tmp_path / "depgate" / f"{module}.py"
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    proc = lint(tmp_path)
    assert proc.returncode != 0, f"{module}.py with `{line}` keeps every contract:\n{proc.stdout}"
    # lint-imports wraps a contract's name over lines: read the report as one line of words
    report = " ".join(proc.stdout.split())
    at = report.index(contract)
    verdict = min(report.find(w, at) for w in (" KEPT", " BROKEN") if report.find(w, at) >= 0)
    assert report.startswith(" BROKEN", verdict), f"the contract '{contract}...' is not the broken one:\n{report}"
    assert f"depgate.{module} ->" in report or f"depgate.{module} is not allowed" in report, report
