"""The pure parts of the real node's cluster DNS (depgate.dev.coredns, depgate.dev.node): the Corefile
has no upstream, cannot_run() says why, the DNS reply parser reads what CoreDNS answers."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from depgate.dev import coredns
from depgate.dev import node as devnode


def corefile() -> str:
    return coredns.corefile(listen="10.88.0.1", port=53, ready="10.88.0.1:8181", kubeconfig="/s/kubeconfig")


def test_corefile_never_forwards_anywhere() -> None:
    text = corefile()
    for word in ("forward", "proxy", "resolv.conf", "upstream", "8.8.8.8", "1.1.1.1"):
        assert word not in text, word


def test_corefile_answers_cluster_names_from_the_plane_and_nxdomain_for_the_rest() -> None:
    text = corefile()
    cluster, rest = text.split("\n.:53 {")
    assert cluster.startswith("cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {")
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {" in cluster
    assert "kubeconfig /s/kubeconfig" in cluster
    assert "ready 10.88.0.1:8181" in cluster
    assert "rcode NXDOMAIN" in rest and "kubernetes" not in rest
    # every server block binds the node IP only (not 0.0.0.0: the host's own resolver stays untouched)
    assert text.count("bind 10.88.0.1") == 2


def test_corefile_uses_only_the_compiled_plugins() -> None:
    directives = {line.split()[0] for line in corefile().splitlines()
                  if line.startswith("    ") and not line.startswith("        ") and line.strip() != "}"}
    assert directives <= set(coredns.PLUGINS), directives - set(coredns.PLUGINS)
    main = coredns.main_go()
    for plugin in coredns.PLUGINS:
        assert f'plugin/{plugin}"' in main
    assert "forward" not in main


def reply(qid: int, rcode: int, name: str, addresses: list[str], *, compressed: bool = True) -> bytes:
    qname = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    out = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(addresses), 0, 0) + qname + struct.pack("!HH", 1, 1)
    for a in addresses:
        owner = b"\xc0\x0c" if compressed else qname
        out += owner + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(a)
    return out


def test_parse_dns_reply_reads_a_records() -> None:
    assert devnode.parse_dns_reply(reply(7, 0, "web.ns.svc.cluster.local", ["10.96.0.12"])) == (0, ["10.96.0.12"])
    assert devnode.parse_dns_reply(reply(7, 0, "x.cluster.local", ["10.0.0.1", "10.0.0.2"], compressed=False)) \
        == (0, ["10.0.0.1", "10.0.0.2"])


def test_parse_dns_reply_nxdomain_has_no_addresses() -> None:
    assert devnode.parse_dns_reply(reply(9, 3, "example.com", [])) == (3, [])


def test_parse_dns_reply_skips_records_that_are_not_a() -> None:
    base = reply(1, 0, "a.cluster.local", [])
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 5, 2) + b"\xc0\x0c"
    a = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton("10.1.2.3")
    msg = bytearray(base + cname + a)
    struct.pack_into("!H", msg, 6, 2)
    assert devnode.parse_dns_reply(bytes(msg)) == (0, ["10.1.2.3"])


@pytest.fixture
def runnable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """cannot_run()'s every question answered 'yes, it can'."""
    monkeypatch.setattr(devnode.sys, "platform", "linux")
    monkeypatch.setattr(devnode.os, "geteuid", lambda: 0)
    monkeypatch.setattr(devnode, "_controllers", lambda types=("cgroup",): [Path("/sys/fs/cgroup/cpu")])
    monkeypatch.setattr(devnode, "missing_packages", lambda packages=(): [])
    monkeypatch.setattr(devnode, "node_is_built", lambda version="": True)
    monkeypatch.setattr(devnode.coredns, "coredns_is_built", lambda version="": True)
    monkeypatch.setattr(devnode, "LOCK", tmp_path / "no-lock")
    return monkeypatch


def test_cannot_run_none_when_everything_is_there(runnable: pytest.MonkeyPatch) -> None:
    assert devnode.cannot_run() is None


def test_cannot_run_not_linux(runnable: pytest.MonkeyPatch) -> None:
    runnable.setattr(devnode.sys, "platform", "darwin")
    assert devnode.cannot_run() == "a real node needs Linux (this is darwin)"


def test_cannot_run_not_root(runnable: pytest.MonkeyPatch) -> None:
    runnable.setattr(devnode.os, "geteuid", lambda: 1000)
    assert "needs root" in (devnode.cannot_run() or "")


def test_cannot_run_no_cgroups(runnable: pytest.MonkeyPatch) -> None:
    runnable.setattr(devnode, "_controllers", lambda types=("cgroup",): [])
    assert "no cgroup hierarchy" in (devnode.cannot_run() or "")


def test_cannot_run_packages_missing_without_apt(runnable: pytest.MonkeyPatch) -> None:
    runnable.setattr(devnode, "missing_packages", lambda packages=(): ["containerd", "runc"])
    runnable.setattr(devnode.shutil, "which", lambda name: None)
    reason = devnode.cannot_run() or ""
    assert "no apt-get" in reason and "containerd runc" in reason


def test_cannot_run_packages_apt_does_not_know(runnable: pytest.MonkeyPatch) -> None:
    runnable.setattr(devnode, "missing_packages", lambda packages=(): ["containerd", "runc"])
    runnable.setattr(devnode.shutil, "which", lambda name: f"/usr/bin/{name}")
    runnable.setattr(devnode, "_installable", lambda packages: ["runc"])
    reason = devnode.cannot_run() or ""
    assert "not installable" in reason and reason.endswith("runc") and "containerd" not in reason


def test_cannot_run_installable_packages_are_no_reason(runnable: pytest.MonkeyPatch) -> None:
    runnable.setattr(devnode, "missing_packages", lambda packages=(): ["containerd"])
    runnable.setattr(devnode.shutil, "which", lambda name: f"/usr/bin/{name}")
    runnable.setattr(devnode, "_installable", lambda packages: [])
    assert devnode.cannot_run() is None


def test_cannot_run_coredns_unbuilt_and_no_go(runnable: pytest.MonkeyPatch) -> None:
    runnable.setattr(devnode.coredns, "coredns_is_built", lambda version="": False)

    def no_go(*a: object, **kw: object) -> None:
        raise devnode.BuildError("no Go toolchain (go 1.26 or newer) to compile CoreDNS\n")

    runnable.setattr(devnode, "check_go", no_go)
    assert devnode.cannot_run() == "no Go toolchain (go 1.26 or newer) to compile CoreDNS"


def test_cannot_run_another_node_holds_the_lock(runnable: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import fcntl
    import os

    lock = tmp_path / "node.lock"
    lock.write_text("")
    runnable.setattr(devnode, "LOCK", lock)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert "another real node runs" in (devnode.cannot_run() or "")
    finally:
        os.close(fd)
    assert devnode.cannot_run() is None
