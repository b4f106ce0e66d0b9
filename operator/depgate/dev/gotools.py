"""Compile the test suite's small Go programs (operator/depgate/dev/tools/) into the cache, once.

- `kstatus`: the real kstatus library (sigs.k8s.io/cli-utils pkg/kstatus/status), what Flux, kpt and
  cli-utils compute for a resource's health, on objects given as JSON.
- `argocdhealth`: an Argo CD health.lua run under gopher-lua, the Lua Argo CD embeds, as Argo CD's
  controller runs a health customization.

Their versions are pinned in tools/go.mod and go.sum (built with -mod=readonly: nothing resolves at
build time). The cache directory is named by a hash of the sources, so a change to them builds anew.
Cold (empty module and build caches), on 2 cores: about 1.5 minutes, most of it compiling
k8s.io/api/core/v1, which kstatus imports; with the plane's modules already downloaded, less.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from depgate.dev.build import BuildError, _run, _say, cache_root, check_go

SOURCE = Path(__file__).resolve().parent / "tools"
TOOLS = ("kstatus", "argocdhealth")
GO_MIN = (1, 24)  # tools/go.mod says `go 1.24.0` (k8s.io/apimachinery v0.34's minimum)


def _sources() -> list[Path]:
    return sorted(p for p in SOURCE.rglob("*") if p.is_file() and (p.suffix == ".go" or p.name in ("go.mod", "go.sum")))


def source_hash() -> str:
    h = hashlib.sha256()
    for p in _sources():
        h.update(p.relative_to(SOURCE).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def tools_dir() -> Path:
    return cache_root() / f"gotools-{source_hash()}"


def tool_path(name: str) -> Path:
    if name not in TOOLS:
        raise ValueError(f"no such tool: {name} (one of {', '.join(TOOLS)})")
    return tools_dir() / "bin" / name


def tools_are_built() -> bool:
    return (tools_dir() / "complete").exists() and all(tool_path(t).exists() for t in TOOLS)


def build_tools(*, say: Callable[[str], None] = _say) -> Path:
    """Compile every tool into the cache (a no-op when already there) and return their bin dir."""
    tdir = tools_dir()
    if tools_are_built():
        return tdir / "bin"
    go = check_go(GO_MIN, what="the test tools kstatus and argocdhealth",
                  otherwise="Install Go, or skip the kstatus and Argo CD health tests.")
    out = tdir / "bin"
    out.mkdir(parents=True, exist_ok=True)
    log = tdir / "build.log"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly", "GOWORK": "off"}
    started = time.monotonic()
    say(f"compiling the test tools ({', '.join(TOOLS)}) into {tdir} (once per machine; a minute or two on a cold "
        f"machine; log: {log})")
    for tool in TOOLS:
        _run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / tool), f"./{tool}"],
             cwd=SOURCE, env=env, label=f"compiling {tool}", log=log)
    missing = [t for t in TOOLS if not (out / t).exists()]
    if missing:
        raise BuildError(f"go build reported success but left no {', '.join(missing)} in {out}")
    (tdir / "complete").write_text(f"{' '.join(TOOLS)} from {SOURCE} built in {time.monotonic() - started:.0f}s\n")
    say(f"test tools compiled in {time.monotonic() - started:.0f}s")
    return out
