"""The image's build, without Docker: the wheel, a fresh venv, the locked install, the installed `depgate`.

No Docker engine runs where the tests run, so this repeats the Dockerfile's build stage step by step:
the build context is exactly what the Dockerfile COPYs (read from the Dockerfile, minus what
.dockerignore drops), `pip wheel --no-deps` builds the wheel, and the wheel goes into a new venv
(`python -m venv`) with `--only-binary=:all: -c requirements.lock`, from the package index as in the
image, followed by `pip check` and the removal of pip and setuptools. Then the installed console
script runs with only that venv on PATH, from a directory outside the repository, as the image's
ENTRYPOINT and the init containers' command do.

Installing the dependencies from the index is the honest way to prove the image layer resolves; a
venv borrowing the project venv's site-packages would prove nothing about that. So without a
reachable index this module skips (saying so) rather than pretending. It takes some 10-60 s
(pip's download cache makes reruns fast), hence the `slow` mark; it stays in the suite.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), split by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _build_sources() -> list[str]:
    """What the build stage COPYs from the context (COPY lines without --from)."""
    sources = []
    for line in _stages()[0]:
        words = line.split()
        if words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def _pattern(pat: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**/` any directories, `*` and `?` within one name."""
    out = ""
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile(out)


def _dockerignored(rel: str) -> bool:
    """True when an exclusion of .dockerignore (the lines after its allow-list) drops this path or a
    folder it is in."""
    pats = [_pattern(line.strip()) for line in (REPO / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.strip().startswith(("#", "!")) and line.strip() != "*"]
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(p.fullmatch(prefix) for p in pats for prefix in prefixes)


def _context(dest: Path) -> Path:
    dest.mkdir()
    for src in _build_sources():
        path = REPO / src.rstrip("/")
        assert path.exists(), f"the Dockerfile COPYs {src}, which the repository lacks"
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if _dockerignored(rel):
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / rel)
    return dest


def _index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=False).stdout
        m = re.search(r"^\S*index-url='([^']+)'", out, re.MULTILINE)
        url = m.group(1) if m else "https://pypi.org/simple"
    return url


def _reachable(url: str) -> str | None:
    u = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((u.hostname or "", u.port or (443 if u.scheme == "https" else 80)), timeout=5):
            return None
    except OSError as e:
        return str(e)


def _env(venv: Path) -> dict[str, str]:
    """The image's environment, near enough: only the venv (and the system's basics) on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600,
         ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    assert proc.returncode in ok, \
        f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = _index_url()
    why = _reachable(index)
    if why is not None:
        pytest.skip(f"the package index {index} is unreachable ({why}): the image's locked install cannot be "
                    "repeated here")
    tmp = tmp_path_factory.mktemp("packaging")
    ctx = _context(tmp / "context")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp / "wheels"), "."], cwd=ctx)
    wheels = sorted((tmp / "wheels").glob("depgate-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    pip = str(venv / "bin" / "pip")
    _run([pip, "install", "-q", "--disable-pip-version-check", "--only-binary=:all:",
          "-c", str(ctx / "requirements.lock"), str(wheels[0])], cwd=tmp)
    _run([pip, "check"], cwd=tmp)
    _run([pip, "uninstall", "-q", "--yes", "pip", "setuptools"], cwd=tmp)
    return venv


def test_the_dockerfile_copies_only_what_the_wheel_needs_and_runs_depgate_as_65532():
    assert _build_sources() == ["pyproject.toml", "requirements.lock", "operator/"]
    final = _stages()[-1]
    assert 'ENTRYPOINT ["depgate"]' in final and 'CMD ["run"]' in final
    assert "USER 65532:65532" in final
    # the operator's Deployment runs as the same numeric user, with the args CMD would give
    dep = yaml.safe_load((REPO / "manifests" / "base" / "deployment.yaml").read_text())
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["containers"][0]["args"][0] == "run"


def test_the_installed_package_is_the_wheel_and_imports_without_pip(venv: Path, tmp_path: Path):
    py = str(venv / "bin" / "python")
    out = _run([py, "-c", "import depgate, depgate.handlers, kopf, kubernetes; print(depgate.__file__)"],
               cwd=tmp_path, env=_env(venv)).stdout.strip()
    assert Path(out).is_relative_to(venv), f"depgate imported from {out}, not from the fresh venv"
    assert _run(["depgate", "--version"], cwd=tmp_path, env=_env(venv)).stdout.strip() == "0.1.0"
    assert not (venv / "bin" / "pip").exists()


def test_depgate_run_help(venv: Path, tmp_path: Path):
    out = _run(["depgate", "run", "--help"], cwd=tmp_path, env=_env(venv)).stdout
    for flag in ("--metrics-port", "--health-port", "--namespace", "--waiter-image"):
        assert flag in out


def test_depgate_wait_tcp_returns_0_when_the_port_listens(venv: Path, tmp_path: Path):
    log = tmp_path / "termination-log"
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # the kernel completes the handshake; no accept() needed
        port = srv.getsockname()[1]
        _run(["depgate", "wait", "tcp", "--host", "127.0.0.1", "--port", str(port), "--timeout", "10",
              f"--termination-log={log}"], cwd=tmp_path, env=_env(venv), timeout=30)
    assert log.read_text().startswith("Ready")


def test_depgate_wait_tcp_exits_124_when_nothing_listens(venv: Path, tmp_path: Path):
    log = tmp_path / "termination-log"
    with socket.socket() as s:  # a port that was free a moment ago; nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    _run(["depgate", "wait", "tcp", "--host", "127.0.0.1", "--port", str(port), "--timeout", "1",
          f"--termination-log={log}"], cwd=tmp_path, env=_env(venv), timeout=30, ok=(124,))
    assert time.monotonic() - started < 10
    assert log.read_text().startswith("Timeout")
