"""Compile the control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok)
and helm from Go modules, once per machine, cached by version outside the repository.

These machines cannot download release binaries, but they reach the Go module proxy. The
`k8s.io/kubernetes` module replaces its staging modules with local paths, which Go ignores for a
dependency, so we build through a small wrapper module that requires `k8s.io/kubernetes` and
replaces each `k8s.io/<staging> v0.0.0` with the matching `v0.<minor>.<patch>` release. Helm's
module has no replace directives, so `go install helm.sh/helm/v3/cmd/helm@<version>` builds it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from depgate.dev.versions import GO_MIN, HELM_GO_MIN, HELM_MODULE, HELM_VERSION, KUBERNETES_VERSION, KWOK_VERSION

KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBE_COMPONENTS, "etcd", "kwok")
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


class BuildError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("DEPGATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "depgate"
    )
    return Path(base)


def version_dir(version: str = KUBERNETES_VERSION) -> Path:
    return cache_root() / f"k8s-{version}-kwok-{KWOK_VERSION}"


def bin_dir(version: str = KUBERNETES_VERSION) -> Path:
    return version_dir(version) / "bin"


def stages_dir(version: str = KUBERNETES_VERSION) -> Path:
    return version_dir(version) / "kwok-stages"


def is_built(version: str = KUBERNETES_VERSION) -> bool:
    stamp = version_dir(version) / "complete"
    return stamp.exists() and all((bin_dir(version) / b).exists() for b in ALL_BINARIES)


def _say(msg: str) -> None:
    print(f"depgate dev: {msg}", file=sys.stderr, flush=True)


_PLANE_WITHOUT_GO = ("Install Go, or point KUBEBUILDER_ASSETS at a directory holding kube-apiserver and etcd, "
                     "or set USE_EXISTING_CLUSTER=true to use $KUBECONFIG.")


def check_go(minimum: tuple[int, int] = GO_MIN, *, what: str = "kube-apiserver, etcd and kwok",
             otherwise: str = _PLANE_WITHOUT_GO) -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"the Go toolchain is not on PATH. depgate compiles {what} from Go "
            f"modules (Go >= {minimum[0]}.{minimum[1]} is needed). {otherwise}"
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False).stdout
    m = re.match(r"go(\d+)\.(\d+)", out.strip())
    if not m or (int(m.group(1)), int(m.group(2))) < minimum:
        raise BuildError(f"{go} reports {out.strip()!r}; Go >= {minimum[0]}.{minimum[1]} is needed for {what}")
    return go


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], label: str, log: Path) -> None:
    """Run one build step with a heartbeat every 15 s, so minutes of compiling show progress."""
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(15):
            _say(f"  still {label} ({int(time.monotonic() - started)}s)")

    t = threading.Thread(target=heartbeat, daemon=True)
    t.start()
    try:
        with log.open("ab") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n".encode())
            fh.flush()
            proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    finally:
        done.set()
        t.join()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise BuildError(f"{label} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    _say(f"  {label}: done in {time.monotonic() - started:.0f}s")


def staging_replaces(go: str, version: str, env: dict[str, str], cwd: Path) -> list[str]:
    """Every `k8s.io/<name> v0.0.0` requirement of k8s.io/kubernetes, as replace lines."""
    out = subprocess.run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise BuildError(f"go mod download k8s.io/kubernetes@{version} failed:\n{out.stdout}{out.stderr}")
    gomod = Path(json.loads(out.stdout)["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0\s*$", gomod, flags=re.M)))
    if not staging:
        raise BuildError(f"found no staging modules in the go.mod of k8s.io/kubernetes@{version}")
    minor_patch = version.lstrip("v").split(".", 1)[1]
    return [f"replace {mod} => {mod} v0.{minor_patch}" for mod in staging]


def build(version: str = KUBERNETES_VERSION, *, say: Callable[[str], None] = _say) -> Path:
    """Compile everything into the cache (a no-op when already there) and return the bin dir."""
    if is_built(version):
        return bin_dir(version)
    go = check_go()
    vdir = version_dir(version)
    src = vdir / "src"
    out = bin_dir(version)
    src.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = vdir / "build.log"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOWORK": "off"}
    total = time.monotonic()
    say(f"compiling the control plane {version} + kwok {KWOK_VERSION} into {vdir} (once per machine; "
        f"minutes on a cold machine; log: {log})")

    say("  resolving modules")
    replaces = staging_replaces(go, version, env, src)
    (src / "go.mod").write_text(
        "module depgate.local/controlplane\n\ngo 1.24.0\n\n"
        f"require k8s.io/kubernetes {version}\n\n" + "\n".join(replaces) + "\n"
    )
    (src / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in KUBE_COMPONENTS)
        + '\t_ "go.etcd.io/etcd/server/v3"\n)\n'
    )
    _run([go, "mod", "tidy"], cwd=src, env=env, label="go mod tidy", log=log)
    left = subprocess.run([go, "list", "-m", "all"], cwd=src, env=env, capture_output=True, text=True,
                          check=True).stdout
    unresolved = [line for line in left.splitlines() if line.endswith(" v0.0.0")]
    if unresolved:
        raise BuildError("unresolved staging modules after go mod tidy: " + ", ".join(unresolved))

    minor = version.lstrip("v").split(".")[1]
    ldflags = " ".join([
        "-s -w",
        f"-X k8s.io/component-base/version.gitVersion={version}",
        "-X k8s.io/component-base/version.gitMajor=1",
        f"-X k8s.io/component-base/version.gitMinor={minor}",
        "-X k8s.io/component-base/version.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={version}",
    ])
    for comp in KUBE_COMPONENTS:
        _run([go, "build", "-trimpath", "-tags", "selinux,notest", "-ldflags", ldflags,
              "-o", str(out / comp), f"k8s.io/kubernetes/cmd/{comp}"],
             cwd=src, env=env, label=f"compiling {comp}", log=log)
    _run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"],
         cwd=src, env=env, label="compiling etcd", log=log)
    _run([go, "install", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"], cwd=src,
         env={**env, "GOBIN": str(out), "GOFLAGS": ""}, label="compiling kwok", log=log)

    modcache = subprocess.run([go, "env", "GOMODCACHE"], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    stage_src = Path(modcache) / f"sigs.k8s.io/kwok@{KWOK_VERSION}/kustomize/stage"
    sdir = stages_dir(version)
    sdir.mkdir(exist_ok=True)
    for rel in KWOK_STAGES:
        shutil.copyfile(stage_src / rel, sdir / rel.replace("/", "_"))
    (vdir / "complete").write_text(f"{version} kwok {KWOK_VERSION} built in {time.monotonic() - total:.0f}s\n")
    say(f"control plane compiled in {time.monotonic() - total:.0f}s")
    return out


# --- helm ------------------------------------------------------------------------------------------


def helm_dir(version: str = HELM_VERSION) -> Path:
    return cache_root() / f"helm-{version}"


def helm_path(version: str = HELM_VERSION) -> Path:
    return helm_dir(version) / "bin" / "helm"


def helm_is_built(version: str = HELM_VERSION) -> bool:
    return (helm_dir(version) / "complete").exists() and helm_path(version).exists()


def _helm_kube_minor(go: str, version: str, env: dict[str, str], cwd: Path) -> str:
    """The Kubernetes minor of helm's client-go (v0.37.x: 37), which helm's own Makefile stamps in as
    the version `helm lint` and `helm template` assume when no cluster is asked."""
    out = subprocess.run([go, "mod", "download", "-json", f"{HELM_MODULE}@{version}"],
                         cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BuildError(f"go mod download {HELM_MODULE}@{version} failed:\n{out.stdout}{out.stderr}")
    gomod = Path(json.loads(out.stdout)["GoMod"]).read_text()
    m = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.\d+", gomod, flags=re.M)
    if m is None:
        raise BuildError(f"found no k8s.io/client-go requirement in the go.mod of {HELM_MODULE}@{version}")
    return m.group(1)


def build_helm(version: str = HELM_VERSION, *, say: Callable[[str], None] = _say) -> Path:
    """Compile helm into the cache (a no-op when already there) and return its path."""
    if helm_is_built(version):
        return helm_path(version)
    go = check_go(HELM_GO_MIN, what="helm", otherwise="Install Go, or skip the Helm chart's tests.")
    hdir = helm_dir(version)
    out = helm_path(version)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = hdir / "build.log"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "", "GOWORK": "off", "GOBIN": str(out.parent)}
    started = time.monotonic()
    say(f"compiling helm {version} into {hdir} (once per machine; minutes on a cold machine; log: {log})")
    say("  resolving modules")
    minor = _helm_kube_minor(go, version, env, hdir)
    ldflags = " ".join([
        "-s -w",
        f"-X {HELM_MODULE}/internal/version.version={version}",
        f"-X {HELM_MODULE}/internal/version.gitTreeState=clean",
        f"-X {HELM_MODULE}/pkg/lint/rules.k8sVersionMajor=1",
        f"-X {HELM_MODULE}/pkg/lint/rules.k8sVersionMinor={minor}",
        f"-X {HELM_MODULE}/pkg/chartutil.k8sVersionMajor=1",
        f"-X {HELM_MODULE}/pkg/chartutil.k8sVersionMinor={minor}",
    ])
    _run([go, "install", "-trimpath", "-ldflags", ldflags, f"{HELM_MODULE}/cmd/helm@{version}"],
         cwd=hdir, env=env, label="compiling helm", log=log)
    (hdir / "complete").write_text(f"helm {version} built in {time.monotonic() - started:.0f}s\n")
    say(f"helm compiled in {time.monotonic() - started:.0f}s")
    return out
