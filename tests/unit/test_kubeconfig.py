"""depgate.kubeconfig: what the operator's client and Kopf authenticate with, read as kubectl reads it.

Real files and a real exec plugin (a script this test writes and runs); the API server side is covered
by every plane test, whose operator authenticates with a token kubeconfig and the plane's admin one.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from depgate import kubeconfig
from depgate.kubeconfig import ConfigError


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def config(server: str = "https://10.0.0.1:6443", cluster: dict | None = None, user: dict | None = None,
           context: str = "c", **ctx: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "k", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user or {}}],
        "contexts": [{"name": context, "context": {"cluster": "k", "user": "u", **ctx}}],
    }


def test_token_and_a_ca_file_relative_to_the_kubeconfig(tmp_path):
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_text("not read here")
    path = write(tmp_path / "config", config(cluster={"certificate-authority": "pki/ca.crt"},
                                             user={"token": "abc"}, namespace="shop"))
    conn = kubeconfig.load(str(path))
    assert conn.server == "https://10.0.0.1:6443"
    assert conn.ca_file == str(tmp_path / "pki" / "ca.crt")
    assert conn.auth_headers() == {"Authorization": "Bearer abc"}
    assert conn.namespace == "shop"
    assert conn.expiration() is None


def test_client_certificate_data_becomes_private_files_and_ca_data_is_decoded(tmp_path):
    pem = b"-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"
    path = write(tmp_path / "config", config(
        cluster={"certificate-authority-data": base64.b64encode(pem).decode(), "tls-server-name": "api.internal"},
        user={"client-certificate-data": base64.b64encode(b"CERT").decode(),
              "client-key-data": base64.b64encode(b"KEY").decode()}))
    conn = kubeconfig.load(str(path))
    assert conn.ca_data == pem and conn.tls_server_name == "api.internal"
    assert Path(conn.cert_file).read_bytes() == b"CERT" and Path(conn.key_file).read_bytes() == b"KEY"
    assert os.stat(conn.key_file).st_mode & 0o077 == 0  # the key is readable by this user only
    assert conn.auth_headers() == {}


def test_kubeconfig_list_first_file_wins_as_kubectl_merges(tmp_path, monkeypatch):
    first = write(tmp_path / "a", {"current-context": "two",
                                   "users": [{"name": "u", "user": {"token": "first"}}]})
    second = write(tmp_path / "b", {**config(user={"token": "second"}),
                                    "contexts": [{"name": "two", "context": {"cluster": "k", "user": "u"}}]})
    monkeypatch.setenv("KUBECONFIG", f"{first}{os.pathsep}{tmp_path / 'missing'}{os.pathsep}{second}")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    conn = kubeconfig.load()
    assert conn.bearer() == "first"  # the first file to name user u wins, a missing file is skipped
    assert conn.server == "https://10.0.0.1:6443"  # the cluster only the second file has


@pytest.mark.parametrize(("doc", "field"), [
    ({**config(), "current-context": "nope"}, "context 'nope' is not in contexts[]"),
    ({**config(), "current-context": ""}, "no current-context"),
    (config(server=""), "clusters[k].cluster.server is required"),
    ({**config(), "users": []}, "contexts[c].user: 'u' is not in users[]"),
    (config(user={"auth-provider": {"name": "gcp"}}), "users[u].user.auth-provider is not supported"),
    (config(user={"client-certificate-data": "Q0VSVA=="}), "a client certificate needs its key"),
    (config(cluster={"certificate-authority-data": "%%%"}), "certificate-authority-data: not base64"),
    (config(user={"tokenFile": "no-such-token"}), "no-such-token"),
    (config(user={"exec": {"apiVersion": "client.authentication.k8s.io/v1"}}), "exec.command: a command is required"),
])
def test_what_cannot_be_used_is_an_error_naming_the_field(tmp_path, doc, field):
    path = write(tmp_path / "config", doc)
    with pytest.raises(ConfigError) as e:
        kubeconfig.load(str(path))
    assert field in str(e.value)


def test_no_kubeconfig_at_all_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match=r"no kubeconfig at .*nothing-here"):
        kubeconfig.from_kubeconfig(str(tmp_path / "nothing-here"))


def test_a_token_file_is_read_again_when_the_kubelet_rotates_it(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("one\n")
    conn = kubeconfig.load(str(write(tmp_path / "config", config(user={"tokenFile": "token"}))))
    assert conn.bearer() == "one"
    token.write_text("two\n")
    os.utime(token, (1, 1))  # a different mtime, as a rotation makes
    assert conn.bearer() == "one"  # not read again within TOKEN_RECHECK_SECONDS
    monkeypatch.setattr(kubeconfig, "TOKEN_RECHECK_SECONDS", 0.0)
    assert conn.bearer() == "two"
    token.unlink()
    assert conn.bearer() == "two"  # a file gone for a moment keeps the token last read


PLUGIN = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    from datetime import datetime, timedelta, timezone
    runs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs")
    with open(runs, "a") as f:
        f.write(os.environ["KUBERNETES_EXEC_INFO"] + "\\n")
    n = sum(1 for _ in open(runs))
    if os.environ.get("FAIL"):
        print("no credentials for you", file=sys.stderr)
        sys.exit(3)
    ttl = float(os.environ.get("TTL", "3600"))
    expires = (datetime.now(timezone.utc) + timedelta(seconds=ttl)).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                      "status": {{"token": f"{{sys.argv[1]}}-{{n}}", "expirationTimestamp": expires}}}}))
""")


def plugin(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "creds"
    script.parent.mkdir()
    script.write_text(PLUGIN.format(python=sys.executable))
    script.chmod(0o755)
    return script


def test_an_exec_plugin_runs_once_and_again_when_its_token_nears_expiry(tmp_path):
    plugin(tmp_path)
    exec_spec = {"apiVersion": "client.authentication.k8s.io/v1", "command": "./bin/creds", "args": ["tok"],
                 "env": [{"name": "TTL", "value": "3600"}]}
    path = write(tmp_path / "config", config(user={"exec": exec_spec}))
    conn = kubeconfig.load(str(path))
    assert conn.auth_headers() == {"Authorization": "Bearer tok-1"}
    assert conn.bearer() == "tok-1"  # cached: not run again
    runs = (tmp_path / "bin" / "runs").read_text().splitlines()
    assert len(runs) == 1 and json.loads(runs[0])["kind"] == "ExecCredential"
    exp = conn.expiration()
    assert exp is not None and timedelta(minutes=55) < exp - datetime.now(UTC) < timedelta(minutes=61)
    # a credential that expires within the margin is renewed on the next use
    exec_spec["env"] = [{"name": "TTL", "value": "5"}]
    conn = kubeconfig.load(str(write(tmp_path / "config", config(user={"exec": exec_spec}))))
    # loading ran it (tok-2); each use within the margin of its expiry runs it again
    assert conn.bearer() == "tok-3" and conn.bearer() == "tok-4"


def test_an_exec_plugin_that_fails_says_its_exit_and_stderr(tmp_path):
    plugin(tmp_path)
    exec_spec = {"command": str(tmp_path / "bin" / "creds"), "args": ["x"], "env": [{"name": "FAIL", "value": "1"}]}
    with pytest.raises(ConfigError, match="exited 3: no credentials for you"):
        kubeconfig.load(str(write(tmp_path / "config", config(user={"exec": exec_spec}))))


def test_in_cluster_reads_the_mounted_service_account(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("depgate-system")
    monkeypatch.setattr(kubeconfig, "SA_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    conn = kubeconfig.load()
    assert conn.server == "https://[fd00::1]:443" and conn.ca_file == str(tmp_path / "ca.crt")
    assert conn.bearer() == "sa-token" and conn.namespace == "depgate-system"
    # a kubeconfig named explicitly wins over the mounted account
    other = kubeconfig.load(str(write(tmp_path / "config", config(user={"token": "mine"}))))
    assert other.bearer() == "mine"


def test_the_operator_process_never_loads_the_kubernetes_client_nor_cryptography():
    """Kopf would import the client when installed (35 MiB of generated models); `depgate run` keeps it
    out. cryptography (8.6 MiB) runs in a child process (depgate.tls)."""
    code = textwrap.dedent("""\
        import sys
        from depgate import cli
        cli.without_kubernetes_client()
        import kopf, depgate.runner, depgate.handlers
        from kopf._cogs.helpers import thirdparty
        loaded = sorted(m for m, v in sys.modules.items()
                        if m.split(".")[0] in ("kubernetes", "cryptography") and v is not None)
        print(loaded, thirdparty.V1ObjectMetaSync)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["[]", "None"], out.stdout + out.stderr
    # and the client is installed (the kubectl plugin uses it), so the guard is what keeps it out
    check = subprocess.run([sys.executable, "-c", "import kopf, sys; print('kubernetes.client' in sys.modules)"],
                           capture_output=True, text=True, check=True, timeout=120)
    assert check.stdout.strip() == "True"
