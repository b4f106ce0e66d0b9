"""Container images without a registry, for the opt-in real node (`depgate.dev.node`).

Each image is an OCI image layout in a tar archive, made with the standard library alone (one
uncompressed layer, a config with `rootfs.diff_ids`, a manifest, `index.json` carrying the image
name annotations, `oci-layout`) from files of this machine, cached under
``~/.cache/depgate/images/`` by a hash of what went in, and imported into containerd with
``ctr -n k8s.io -a <socket> images import``. Pods use them with `imagePullPolicy: Never` (or
`IfNotPresent`: the image is present, so nothing is pulled).

- ``busybox``: Debian's busybox-static and a link for each of its applets; `sh` by default.
- ``pause``: the same layer; its entrypoint is a shell loop that sleeps (the pod sandbox).
- ``waiter``: this machine's ``/usr/bin/python3``, its standard library, the shared libraries `ldd`
  lists for it and its extension modules, and the depgate package source, with `depgate` on PATH
  (the rendered init containers run ``depgate wait <type> ...``; `depgate wait` is standard library
  only, so no third-party package is copied). User 65532, as the real image's.
- ``redis``: this machine's ``redis-server`` (Debian's redis-server, `make system-deps`) and the shared
  libraries `ldd` lists for it, on the busybox layer (so a probe or `kubectl exec` has a shell); user
  65532, no persistence (`--save '' --appendonly no`), protected mode off (it listens on the pod IP).
- the demo's (`make run` on a real node: examples/microservices unchanged): stand-ins under the names the
  example's manifests give, since no registry is reached. ``redis:7`` is the Redis image above;
  ``lrakai/microservices:server-v1`` is busybox with an ``npm`` script: ``npm start`` serves HTTP on
  8080 (busybox httpd), ``npm run await-redis`` waits until ``$REDIS_URL`` answers PING with PONG, as the
  lesson's server does; ``counter-v1`` and ``poller-v1`` ask ``$API_URL`` every few seconds. Not the
  lesson's Node.js programs: what the demo shows is depgate holding them, not what they compute.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from depgate.dev.build import BuildError, _say, cache_root

BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "depgate.local/busybox:latest"
PAUSE_IMAGE = "depgate.local/pause:latest"
# the same busybox under a tag other than `latest`: imagePullPolicy defaults to IfNotPresent for it
BUSYBOX_APP_IMAGE = "depgate.local/busybox:app"
WAITER_IMAGE = "docker.io/depgate/depgate:test"  # what the integration tests' operator renders (--waiter-image)
PYTHON = Path("/usr/bin/python3")
REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_IMAGE = "depgate.local/redis:latest"
PACKAGE = Path(__file__).resolve().parent.parent  # operator/depgate
# What the waiter never imports: left out of the copied standard library.
_STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages",
                "dist-packages", "distutils", "unittest", "venv"}
_STDLIB_SKIP_PREFIX = ("config-",)
_DYNLOAD_SKIP = re.compile(r"^(_test|xxlimited|_xx|_ctypes_test|_curses|readline|ossaudiodev|nis|_dbm|_sqlite3)")
PAUSE_LOOP = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
PATH_ENV = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def images_dir() -> Path:
    return cache_root() / "images"


@dataclass
class Layer:
    """What goes into one layer: regular files (copied from this machine), symlinks, directories."""

    files: dict[str, Path] = field(default_factory=dict)  # path in the image -> source file
    links: dict[str, str] = field(default_factory=dict)  # path in the image -> link target
    texts: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (content, mode)
    dirs: dict[str, int] = field(default_factory=dict)  # path -> mode

    def key(self) -> str:
        """A hash of everything that decides the layer's bytes (sources by path, size and mtime)."""
        h = hashlib.sha256()
        for arc, src in sorted(self.files.items()):
            st = src.stat()
            h.update(f"f {arc} {src} {st.st_size} {st.st_mtime_ns} {st.st_mode & 0o777}\n".encode())
        for arc, target in sorted(self.links.items()):
            h.update(f"l {arc} {target}\n".encode())
        for arc, (text, mode) in sorted(self.texts.items()):
            h.update(f"t {arc} {mode} {hashlib.sha256(text.encode()).hexdigest()}\n".encode())
        for arc, mode in sorted(self.dirs.items()):
            h.update(f"d {arc} {mode}\n".encode())
        return h.hexdigest()

    def write(self, out: Path) -> None:
        """A deterministic tar (mtime 0, owner root), parents before children."""
        paths = set(self.files) | set(self.links) | set(self.texts) | set(self.dirs)
        parents: set[str] = set()
        for p in paths:
            parts = p.strip("/").split("/")
            parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            for d in sorted(parents | set(self.dirs)):
                ti = tarfile.TarInfo(d.strip("/"))
                ti.type, ti.mode = tarfile.DIRTYPE, self.dirs.get(d, 0o755)
                tar.addfile(ti)
            for arc in sorted(set(self.files) | set(self.links) | set(self.texts)):
                ti = tarfile.TarInfo(arc.strip("/"))
                if arc in self.links:
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, self.links[arc], 0o777
                    tar.addfile(ti)
                elif arc in self.texts:
                    text, mode = self.texts[arc]
                    data = text.encode()
                    ti.size, ti.mode = len(data), mode
                    tar.addfile(ti, io.BytesIO(data))
                else:
                    src = self.files[arc]
                    ti.size, ti.mode = src.stat().st_size, src.stat().st_mode & 0o777
                    with src.open("rb") as fh:
                        tar.addfile(ti, fh)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def oci_archive(name: str, layer: Layer, config: dict[str, object], *, cache: Path | None = None,
                say: Callable[[str], None] = _say) -> Path:
    """The OCI archive of image `name` (one layer, this container config), built once per input hash."""
    cache = cache or images_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{name}\n{layer.key()}\n{json.dumps(config, sort_keys=True)}".encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    out = cache / f"{safe}-{key}.tar"
    if out.exists():
        return out
    say(f"building image {name} into {out}")
    work = cache / f".{safe}-{key}.work"
    work.mkdir(exist_ok=True)
    layer_tar = work / "layer.tar"
    layer.write(layer_tar)
    diff_id = _sha256_file(layer_tar)
    image_config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "depgate.dev.images"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{diff_id}", "size": layer_tar.stat().st_size}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": f"sha256:{manifest_digest}", "size": len(manifest_bytes),
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": tag}}],
    }
    tmp = out.with_suffix(".tar.part")
    with tarfile.open(tmp, "w") as tar:
        def add(arc: str, data: bytes) -> None:
            ti = tarfile.TarInfo(arc)
            ti.size, ti.mode = len(data), 0o644
            tar.addfile(ti, io.BytesIO(data))

        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(ti)
        add("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add("index.json", json.dumps(index, sort_keys=True).encode())
        add(f"blobs/sha256/{manifest_digest}", manifest_bytes)
        add(f"blobs/sha256/{config_digest}", config_bytes)
        tar.add(layer_tar, arcname=f"blobs/sha256/{diff_id}")
    tmp.rename(out)
    layer_tar.unlink()
    work.rmdir()
    for old in cache.glob(f"{safe}-*.tar"):  # earlier builds of the same image name
        if old != out:
            old.unlink()
    return out


def _base_files(layer: Layer) -> None:
    layer.texts["/etc/passwd"] = ("root:x:0:0:root:/root:/bin/sh\nnobody:x:65532:65532:nobody:/:/bin/false\n", 0o644)
    layer.texts["/etc/group"] = ("root:x:0:\nnobody:x:65532:\n", 0o644)
    layer.texts["/etc/nsswitch.conf"] = ("hosts: files dns\n", 0o644)
    for d in ("/proc", "/sys", "/dev", "/etc", "/root", "/var", "/run"):
        layer.dirs[d] = 0o755
    layer.dirs["/tmp"] = 0o1777


def busybox_layer() -> Layer:
    if not BUSYBOX.exists():
        raise BuildError(f"{BUSYBOX} is missing: install Debian's busybox-static (apt-get install busybox-static)")
    layer = Layer()
    _base_files(layer)
    layer.files["/bin/busybox"] = BUSYBOX
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            layer.links[f"/bin/{applet}"] = "busybox"
    for d in ("/usr/bin", "/sbin", "/usr/sbin"):
        layer.dirs[d] = 0o755
    return layer


def busybox_image(*, say: Callable[[str], None] = _say) -> Path:
    return oci_archive(BUSYBOX_IMAGE, busybox_layer(), {"Cmd": ["sh"], "Env": [PATH_ENV], "WorkingDir": "/"},
                       say=say)


def busybox_app_image(*, say: Callable[[str], None] = _say) -> Path:
    return oci_archive(BUSYBOX_APP_IMAGE, busybox_layer(), {"Cmd": ["sh"], "Env": [PATH_ENV], "WorkingDir": "/"},
                       say=say)


def pause_image(*, say: Callable[[str], None] = _say) -> Path:
    return oci_archive(PAUSE_IMAGE, busybox_layer(),
                       {"Entrypoint": ["/bin/sh", "-c", PAUSE_LOOP], "Env": [PATH_ENV], "WorkingDir": "/"}, say=say)


def _ldd(paths: Iterable[Path]) -> set[Path]:
    """Every shared library (resolved path as `ldd` names it) the given ELF files load, and the loader."""
    libs: set[Path] = set()
    for p in paths:
        out = subprocess.run(["ldd", str(p)], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(Path(m.group(1)))
    return libs


def waiter_layer() -> Layer:
    if not PYTHON.exists():
        raise BuildError(f"{PYTHON} is missing (Debian's python3): the waiter image copies it")
    ver = subprocess.run([str(PYTHON), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                         capture_output=True, text=True, check=True).stdout.strip()
    layer = Layer()
    _base_files(layer)
    layer.files["/usr/bin/python3"] = PYTHON.resolve()
    stdlib = Path(f"/usr/lib/python{ver}")
    elves: list[Path] = [PYTHON.resolve()]
    for root, dirs, files in os.walk(stdlib):
        rel = Path(root).relative_to(stdlib)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP and not d.startswith(_STDLIB_SKIP_PREFIX)]
        dirs[:] = [d for d in dirs if d not in ("test", "tests", "idle_test")]
        for f in files:
            src = Path(root) / f
            if rel == Path("lib-dynload") and _DYNLOAD_SKIP.match(f):
                continue
            if src.is_symlink() and not src.exists():
                continue
            layer.files[str(Path("/") / src.relative_to("/"))] = src.resolve()
            if f.endswith(".so"):
                elves.append(src)
    for lib in _ldd(elves):
        layer.files[str(lib)] = lib.resolve()
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith((".py", ".typed", ".yaml", ".json")):
                src = Path(root) / f
                layer.files[f"/opt/depgate/lib/depgate/{src.relative_to(PACKAGE)}"] = src
    layer.texts["/usr/local/bin/depgate"] = (
        "#!/usr/bin/python3\nimport sys\n\nfrom depgate.cli import main\n\nsys.exit(main())\n", 0o755)
    return layer


def waiter_image(*, say: Callable[[str], None] = _say) -> Path:
    return oci_archive(WAITER_IMAGE, waiter_layer(), {
        # `depgate wait` only: `depgate run` needs kopf and the kubernetes client, which are not copied
        "Entrypoint": ["depgate"], "Cmd": ["--help"], "User": "65532:65532", "WorkingDir": "/",
        "Env": [PATH_ENV, "PYTHONPATH=/opt/depgate/lib", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
    }, say=say)


def redis_layer() -> Layer:
    if not REDIS_SERVER.exists():
        raise BuildError(f"{REDIS_SERVER} is missing: install Debian's redis-server (`make system-deps`)")
    layer = busybox_layer()
    # Debian's /usr/bin/redis-server is a link to redis-check-rdb: the binary picks its mode by argv[0],
    # so the image holds the resolved file under the name redis-server
    binary = REDIS_SERVER.resolve()
    layer.files["/usr/bin/redis-server"] = binary
    for lib in _ldd([binary]):
        layer.files[str(lib)] = lib.resolve()
    layer.dirs["/data"] = 0o1777
    return layer


def _redis_image(name: str, user: str, say: Callable[[str], None]) -> Path:
    return oci_archive(name, redis_layer(), {
        "Entrypoint": ["redis-server"],
        "Cmd": ["--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"],
        "User": user, "WorkingDir": "/data", "Env": [PATH_ENV], "ExposedPorts": {"6379/tcp": {}},
    }, say=say)


def redis_image(*, say: Callable[[str], None] = _say) -> Path:
    return _redis_image(REDIS_IMAGE, "65532:65532", say)


# --- the demo's stand-ins (make run on a real node) --------------------------------------------------

DEMO_REDIS_IMAGE = "docker.io/library/redis:7"
DEMO_SERVER_IMAGE = "docker.io/lrakai/microservices:server-v1"
DEMO_COUNTER_IMAGE = "docker.io/lrakai/microservices:counter-v1"
DEMO_POLLER_IMAGE = "docker.io/lrakai/microservices:poller-v1"
DEMO_NPM = r"""#!/bin/sh
# A stand-in for the lesson's Node.js server (depgate.dev.images): `npm start`, `npm run await-redis`.
case "$1 $2" in
"run await-redis")
  url=${REDIS_URL:-redis://localhost:6379}; hp=${url#redis://}; host=${hp%:*}; port=${hp##*:}
  until printf 'PING\r\n' | nc -w 1 "$host" "$port" 2>&1 | grep -q PONG; do
    echo "await-redis: no PONG from $url yet"; sleep 1
  done
  echo "await-redis: $url answered PONG";;
"start "*)
  echo "server: listening on :8080 (REDIS_URL=$REDIS_URL)"
  exec httpd -f -v -p 8080 -h /srv/www;;
*) echo "npm stand-in: only 'npm start' and 'npm run await-redis'" >&2; exit 1;;
esac
"""
DEMO_CLIENT = r"""#!/bin/sh
# A stand-in for the lesson's $1 (depgate.dev.images): asks $API_URL every 5 s.
while :; do
  if wget -q -T 2 -O /dev/null "$API_URL/"; then echo "$1: $API_URL answered"; else echo "$1: $API_URL did not"; fi
  sleep 5
done
"""


def demo_redis_image(*, say: Callable[[str], None] = _say) -> Path:
    return _redis_image(DEMO_REDIS_IMAGE, "999:999", say)  # the uid of Docker Hub's redis image


def demo_server_image(*, say: Callable[[str], None] = _say) -> Path:
    layer = busybox_layer()
    layer.texts["/usr/local/bin/npm"] = (DEMO_NPM, 0o755)
    layer.texts["/srv/www/index.html"] = ("microservices server stand-in (depgate make run)\n", 0o644)
    return oci_archive(DEMO_SERVER_IMAGE, layer, {
        "Entrypoint": [], "Cmd": ["npm", "start"], "User": "1000:1000", "WorkingDir": "/",
        "Env": [PATH_ENV], "ExposedPorts": {"8080/tcp": {}},
    }, say=say)


def _demo_client_image(name: str, role: str, say: Callable[[str], None]) -> Path:
    layer = busybox_layer()
    layer.texts["/usr/local/bin/client"] = (DEMO_CLIENT, 0o755)
    return oci_archive(name, layer, {"Cmd": ["client", role], "User": "1000:1000", "WorkingDir": "/",
                                     "Env": [PATH_ENV]}, say=say)


def demo_counter_image(*, say: Callable[[str], None] = _say) -> Path:
    return _demo_client_image(DEMO_COUNTER_IMAGE, "counter", say)


def demo_poller_image(*, say: Callable[[str], None] = _say) -> Path:
    return _demo_client_image(DEMO_POLLER_IMAGE, "poller", say)


IMAGES: dict[str, Callable[..., Path]] = {"busybox": busybox_image, "pause": pause_image, "waiter": waiter_image,
                                          "redis": redis_image, "busybox-app": busybox_app_image,
                                          "demo-redis": demo_redis_image, "demo-server": demo_server_image,
                                          "demo-counter": demo_counter_image, "demo-poller": demo_poller_image}
DEMO_IMAGES = ("busybox", "pause", "waiter", "demo-redis", "demo-server", "demo-counter", "demo-poller")


def import_images(ctr: str, socket: Path, archives: Iterable[Path]) -> None:
    """`ctr -n k8s.io images import` each archive into the containerd listening on `socket`."""
    for archive in archives:
        proc = subprocess.run([ctr, "-n", "k8s.io", "-a", str(socket), "images", "import",
                               str(archive)], capture_output=True, text=True, check=False, timeout=300)
        if proc.returncode != 0:
            raise BuildError(f"ctr images import {archive} failed ({proc.returncode}): {proc.stderr.strip()}")
