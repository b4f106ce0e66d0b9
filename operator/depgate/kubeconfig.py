"""Where depgate's credentials come from: a kubeconfig, or the Pod's ServiceAccount in a cluster.

Read here rather than through the `kubernetes` client's loader because importing that package loads
its generated models (35 MiB of the operator's RSS; Kopf imports it too when it can, see
depgate.cli). What is read is what kubectl reads for the same file: KUBECONFIG (a list of files,
the first to set a name wins) or ~/.kube/config; the current context (or --context); its cluster's
server, certificate authority (file or data), insecure-skip-tls-verify, tls-server-name and proxy-url;
its user's token, tokenFile, client certificate and key (files or data), username and password, or an
exec credential plugin (client.authentication.k8s.io, run again when its token expires). Relative
paths are relative to the file that names them. In a cluster: KUBERNETES_SERVICE_HOST/PORT and the
mounted ServiceAccount token (read again when the kubelet rotates it) and CA.

Anything else (auth-provider, a context or cluster that is not there) is a ConfigError naming the
field, never a silent fallback to fewer credentials.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_RECHECK_SECONDS = 60.0  # a token file is read again at most this often (the kubelet rotates it)
EXEC_MARGIN_SECONDS = 30.0  # an exec credential is renewed this long before it expires
EXEC_TIMEOUT_SECONDS = 60.0


class ConfigError(Exception):
    """No usable configuration: the message names the file and field."""


@dataclass
class _TokenFile:
    path: str
    token: str = ""
    read_at: float = float("-inf")
    mtime: float = 0.0

    def get(self) -> str:
        now = time.monotonic()
        if now - self.read_at >= TOKEN_RECHECK_SECONDS or not self.token:
            try:
                mtime = os.stat(self.path).st_mtime
                if mtime != self.mtime or not self.token:
                    self.token = Path(self.path).read_text().strip()
                    self.mtime = mtime
            except OSError as e:
                if not self.token:
                    raise ConfigError(f"token file {self.path}: {e.strerror}") from e
            self.read_at = now
        return self.token


@dataclass
class _Exec:
    """An exec credential plugin (users[].user.exec): run on first use and again near its expiry."""

    spec: dict[str, Any]
    base_dir: str
    where: str
    token: str = ""
    cert_data: bytes | None = None
    key_data: bytes | None = None
    expires: datetime | None = None

    def run(self) -> None:
        command = self.spec.get("command")
        if not isinstance(command, str) or not command:
            raise ConfigError(f"{self.where}.exec.command: a command is required")
        if "/" in command and not os.path.isabs(command):
            command = os.path.join(self.base_dir, command)
        env = dict(os.environ)
        for item in self.spec.get("env") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                env[item["name"]] = str(item.get("value", ""))
        api_version = str(self.spec.get("apiVersion") or "client.authentication.k8s.io/v1")
        env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": api_version, "kind": "ExecCredential",
                                                  "spec": {"interactive": False}})
        args = [command, *[str(a) for a in self.spec.get("args") or []]]
        try:
            out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=EXEC_TIMEOUT_SECONDS,
                                 stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigError(f"{self.where}.exec: running {command}: {e}") from e
        if out.returncode != 0:
            raise ConfigError(f"{self.where}.exec: {command} exited {out.returncode}: {out.stderr.strip()[:500]}")
        try:
            status = json.loads(out.stdout).get("status") or {}
        except (ValueError, AttributeError) as e:
            raise ConfigError(f"{self.where}.exec: {command} printed no ExecCredential JSON") from e
        self.token = str(status.get("token") or "")
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        self.cert_data = cert.encode() if isinstance(cert, str) and cert else None
        self.key_data = key.encode() if isinstance(key, str) and key else None
        if not self.token and not (self.cert_data and self.key_data):
            raise ConfigError(f"{self.where}.exec: the ExecCredential has neither status.token nor a client "
                              "certificate and key")
        stamp = status.get("expirationTimestamp")
        self.expires = None
        if isinstance(stamp, str) and stamp:
            try:
                self.expires = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError as e:
                raise ConfigError(f"{self.where}.exec: expirationTimestamp {stamp!r} is not RFC 3339") from e

    def current(self) -> str:
        if not self.token or (self.expires is not None
                              and (self.expires - datetime.now(UTC)).total_seconds() < EXEC_MARGIN_SECONDS):
            self.run()
        return self.token


@dataclass
class Connection:
    """How to reach and authenticate to one API server: plain data, plus the token sources that refresh."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    proxy: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    namespace: str | None = None
    token_file: _TokenFile | None = field(default=None, repr=False)
    exec: _Exec | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bearer(self) -> str | None:
        """The current bearer token (a rotated token file or a renewed exec credential included)."""
        with self._lock:
            if self.exec is not None:
                return self.exec.current() or None
            if self.token_file is not None:
                return self.token_file.get()
        return self.token

    def auth_headers(self) -> dict[str, str]:
        token = self.bearer()
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self.username is not None and self.password is not None:
            raw = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        return {}

    def expiration(self) -> datetime | None:
        """When the current credentials stop working (an exec credential's expiry), if known."""
        return self.exec.expires if self.exec is not None else None


# ---------------------------------------------------------------------- loading

_private_dir: str | None = None


def _private_file(data: bytes, suffix: str) -> str:
    """Certificate or key data as a file only this user can read (ssl loads chains from files), removed at exit."""
    global _private_dir
    if _private_dir is None:
        _private_dir = tempfile.mkdtemp(prefix="depgate-creds-")
        atexit.register(shutil.rmtree, _private_dir, True)
    fd, path = tempfile.mkstemp(suffix=suffix, dir=_private_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as e:
        raise ConfigError(f"{where}: not base64") from e


def in_cluster() -> Connection | None:
    """The Pod's ServiceAccount, or None outside a cluster."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SA_DIR / "token"
    if not host or not port or not token.exists():
        return None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ns = SA_DIR / "namespace"
    return Connection(server=f"https://{host}:{port}", ca_file=str(SA_DIR / "ca.crt"),
                      token_file=_TokenFile(str(token)),
                      namespace=ns.read_text().strip() if ns.exists() else None)


def _files(kubeconfig: str | None) -> list[Path]:
    if kubeconfig:
        return [Path(kubeconfig).expanduser()]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def _merged(paths: list[Path]) -> tuple[dict[str, dict[str, tuple[dict[str, Any], Path]]], str | None]:
    """The named clusters, users and contexts of every file (the first to name one wins, as kubectl
    merges KUBECONFIG), each with the file it came from; and the first current-context."""
    named: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {"clusters": {}, "users": {}, "contexts": {}}
    current: str | None = None
    found = False
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"kubeconfig {path}: {e}") from e
        found = True
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {path}: not a mapping")
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for i, entry in enumerate(doc.get(section) or []):
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    raise ConfigError(f"kubeconfig {path}: {section}[{i}].name is required")
                body = entry.get(inner) or {}
                if not isinstance(body, dict):
                    raise ConfigError(f"kubeconfig {path}: {section}[{i}].{inner} is not a mapping")
                named[section].setdefault(entry["name"], (body, path))
        if current is None and doc.get("current-context"):
            current = str(doc["current-context"])
    if not found:
        raise ConfigError(f"no kubeconfig at {os.pathsep.join(str(p) for p in paths)} (and not in a cluster)")
    return named, current


def _rel(value: Any, base: Path) -> str:
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else base.parent / p)


def from_kubeconfig(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    named, current = _merged(_files(kubeconfig))
    ctx_name = context or current
    if not ctx_name:
        raise ConfigError("kubeconfig: no current-context, and no --context given")
    if ctx_name not in named["contexts"]:
        raise ConfigError(f"kubeconfig: context {ctx_name!r} is not in contexts[]")
    ctx, ctx_file = named["contexts"][ctx_name]
    where = f"kubeconfig {ctx_file}: contexts[{ctx_name}]"
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if cluster_name not in named["clusters"]:
        raise ConfigError(f"{where}.cluster: {cluster_name!r} is not in clusters[]")
    cluster, cfile = named["clusters"][cluster_name]
    cwhere = f"kubeconfig {cfile}: clusters[{cluster_name}].cluster"
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"{cwhere}.server is required")
    conn = Connection(server=server.rstrip("/"), insecure=bool(cluster.get("insecure-skip-tls-verify")),
                      tls_server_name=cluster.get("tls-server-name") or None,
                      proxy=cluster.get("proxy-url") or None,
                      namespace=ctx.get("namespace") or None)
    if cluster.get("certificate-authority-data"):
        conn.ca_data = _b64(cluster["certificate-authority-data"], f"{cwhere}.certificate-authority-data")
    elif cluster.get("certificate-authority"):
        conn.ca_file = _rel(cluster["certificate-authority"], cfile)
    if not user_name:
        return conn
    if user_name not in named["users"]:
        raise ConfigError(f"{where}.user: {user_name!r} is not in users[]")
    user, ufile = named["users"][user_name]
    uwhere = f"kubeconfig {ufile}: users[{user_name}].user"
    if user.get("auth-provider"):
        raise ConfigError(f"{uwhere}.auth-provider is not supported (removed from kubectl in 1.26): use an exec "
                          "credential plugin")
    if user.get("client-certificate-data"):
        conn.cert_file = _private_file(_b64(user["client-certificate-data"], f"{uwhere}.client-certificate-data"),
                                       ".crt")
    elif user.get("client-certificate"):
        conn.cert_file = _rel(user["client-certificate"], ufile)
    if user.get("client-key-data"):
        conn.key_file = _private_file(_b64(user["client-key-data"], f"{uwhere}.client-key-data"), ".key")
    elif user.get("client-key"):
        conn.key_file = _rel(user["client-key"], ufile)
    if bool(conn.cert_file) != bool(conn.key_file):
        raise ConfigError(f"{uwhere}: a client certificate needs its key, and a key its certificate")
    if user.get("token"):
        conn.token = str(user["token"])
    elif user.get("tokenFile"):
        conn.token_file = _TokenFile(_rel(user["tokenFile"], ufile))
        conn.token_file.get()  # a missing file is an error now, naming it
    elif user.get("exec"):
        if not isinstance(user["exec"], dict):
            raise ConfigError(f"{uwhere}.exec is not a mapping")
        conn.exec = _Exec(user["exec"], str(ufile.parent), uwhere)
        conn.exec.run()
        if conn.exec.cert_data and conn.exec.key_data and not conn.cert_file:
            conn.cert_file = _private_file(conn.exec.cert_data, ".crt")
            conn.key_file = _private_file(conn.exec.key_data, ".key")
    if user.get("username") is not None:
        conn.username, conn.password = str(user["username"]), str(user.get("password") or "")
    return conn


def load(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """The in-cluster ServiceAccount when no kubeconfig is named and one is mounted, else the kubeconfig."""
    if kubeconfig is None and context is None:
        conn = in_cluster()
        if conn is not None:
            return conn
    return from_kubeconfig(kubeconfig, context)
