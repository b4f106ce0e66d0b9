"""A stolen operator token, replayed on the real plane: what issue 14 did with it, each step refused.

With the operator ServiceAccount's token alone (a compromised operator pod), issue 14 read every Secret
in the cluster, read a kube-system token Secret that was cluster-admin, created a privileged host-network
Deployment in kube-system, granted `system:authenticated` the right to list kube-system Secrets, and
emptied a Role. Each test below is one of those steps, made with `kubectl` under a TokenRequest token of
`depgate-system/depgate` holding exactly the RBAC of manifests/ (the `operator_kubeconfig` fixture), and
shows the API server answer Forbidden, and nothing changed. The last tests show what the operator still
may do, and only where it is meant to (the verdict waiter's RoleBinding; Secrets where a namespace admin
bound depgate-secret-reader; Deployments where template mode is enabled).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Plane, wait_for

SA = "system:serviceaccount:depgate-system:depgate"


class Stolen:
    """kubectl with nothing but the operator's token."""

    def __init__(self, plane: Plane, kubeconfig: str) -> None:
        self.plane, self.kubeconfig = plane, kubeconfig

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.plane.kubectl, f"--kubeconfig={self.kubeconfig}", *args], input=input,
                              capture_output=True, text=True, check=False, timeout=60)

    def refused(self, *args: str, input: str | None = None) -> str:
        """The step's error, asserted to be the API server's Forbidden."""
        proc = self.run(*args, input=input)
        assert proc.returncode != 0, f"kubectl {' '.join(args)} was allowed with the operator's token:\n{proc.stdout}"
        # kubectl says "Error from server (Forbidden): ..." or, for `create rolebinding`, "... is forbidden: ..."
        assert "(Forbidden)" in proc.stderr or " is forbidden: " in proc.stderr, proc.stderr
        print(f"refused: kubectl {' '.join(args)}\n  {proc.stderr.strip().splitlines()[0]}")
        return proc.stderr


ADMISSION_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


@pytest.fixture(scope="module")
def stolen(plane: Plane, operator_kubeconfig: str) -> Stolen:
    s = Stolen(plane, operator_kubeconfig)
    # the token works (this is not a test of a broken token): it lists policies cluster-wide
    wait_for(lambda: s.run("get", "dependencypolicies", "-A").returncode == 0, 30, interval=0.3,
             what="the operator's token accepted")
    # the install's admission backstops too (the operator_kubeconfig fixture applies its RBAC only)
    docs = [d for d in yaml.safe_load_all(plane.run_kubectl("kustomize", str(REPO / "manifests")).stdout)
            if d and d.get("kind") in ADMISSION_KINDS and d["metadata"]["name"].startswith("depgate-operator-")]
    assert len(docs) == 4
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))
    probe = _binding("probe", "default", "depgate-operator-core", "default", "default")  # held: only admission refuses
    wait_for(lambda: "ValidatingAdmissionPolicy" in s.run("create", "--dry-run=server", "-f", "-",
                                                          input=probe).stderr,
             30, interval=0.3, what="the ValidatingAdmissionPolicies enforced")
    return s


@pytest.fixture(scope="module")
def victims(plane: Plane) -> Iterator[dict[str, str]]:
    """As admin: a cluster-admin ServiceAccount with a token Secret in kube-system, a Role to empty."""
    tag = uuid.uuid4().hex[:6]
    sa, secret, ns = f"root-{tag}", f"root-{tag}-token", f"victim-{tag}"
    plane.run_kubectl("create", "serviceaccount", sa, "-n", "kube-system")
    plane.run_kubectl("create", "clusterrolebinding", sa, "--clusterrole=cluster-admin",
                      f"--serviceaccount=kube-system:{sa}")
    plane.run_kubectl("apply", "-n", "kube-system", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": secret, "annotations": {"kubernetes.io/service-account.name": sa}}}))
    plane.run_kubectl("create", "namespace", ns)
    plane.run_kubectl("create", "role", "app-reader", "-n", ns, "--verb=get,list", "--resource=pods,configmaps")
    yield {"sa": sa, "secret": secret, "ns": ns}
    plane.run_kubectl("delete", "clusterrolebinding", sa, check=False)
    plane.run_kubectl("delete", "serviceaccount", sa, "-n", "kube-system", check=False)
    plane.run_kubectl("delete", "namespace", ns, "--wait=false", check=False)


PRIVILEGED = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: NAME, namespace: kube-system}
    spec:
      selector: {matchLabels: {app: NAME}}
      template:
        metadata: {labels: {app: NAME}}
        spec:
          hostNetwork: true
          hostPID: true
          serviceAccountName: SA
          containers:
          - name: c
            image: busybox
            command: [sleep, infinity]
            securityContext: {privileged: true, runAsUser: 0}
            volumeMounts: [{name: host, mountPath: /host}]
          volumes: [{name: host, hostPath: {path: /}}]
    """)


def test_step_1_read_every_secret_in_the_cluster(stolen: Stolen) -> None:
    err = stolen.refused("get", "secrets", "--all-namespaces")
    assert f'User "{SA}" cannot list resource "secrets"' in err and "at the cluster scope" in err
    stolen.refused("get", "secrets", "--all-namespaces", "--watch", "--request-timeout=5s")


def test_step_2_read_a_kube_system_token_secret_that_is_cluster_admin(plane: Plane, stolen: Stolen,
                                                                      victims: dict[str, str]) -> None:
    # it is a real cluster-admin token (admin reads it, the token controller filled it in) ...
    wait_for(lambda: (json.loads(plane.run_kubectl("get", "secret", victims["secret"], "-n", "kube-system",
                                                   "-o", "json").stdout).get("data") or {}).get("token"),
             30, interval=0.3, what="the token controller filling the Secret")
    # ... and the operator's token may neither read it nor find it by listing
    err = stolen.refused("get", "secret", victims["secret"], "-n", "kube-system", "-o", "json")
    assert 'cannot get resource "secrets"' in err
    stolen.refused("get", "secrets", "-n", "kube-system")


def test_step_3_create_a_privileged_host_network_deployment_in_kube_system(plane: Plane, stolen: Stolen,
                                                                           victims: dict[str, str]) -> None:
    name = f"pwn-{uuid.uuid4().hex[:6]}"
    body = PRIVILEGED.replace("NAME", name).replace("SA", victims["sa"])
    err = stolen.refused("create", "-f", "-", input=body)
    assert 'cannot create resource "deployments"' in err
    # the way depgate writes (server-side apply, field manager depgate) is refused too: creating is a create
    err = stolen.refused("apply", "--server-side", "--field-manager=depgate", "-f", "-", input=body)
    assert 'cannot create resource "deployments"' in err
    assert plane.run_kubectl("get", "deployment", name, "-n", "kube-system", check=False).returncode != 0


def test_step_4_grant_system_authenticated_list_on_kube_system_secrets(plane: Plane, stolen: Stolen) -> None:
    name = f"everyone-{uuid.uuid4().hex[:6]}"
    # no Role of its own: depgate writes no Roles any more
    err = stolen.refused("create", "role", name, "-n", "kube-system", "--verb=list", "--resource=secrets")
    assert 'cannot create resource "roles"' in err
    # it may write RoleBindings, but escalation prevention lets it grant only what it holds, and it holds
    # no Secret anywhere: neither the opt-in secret reader nor a built-in role that reads Secrets
    for clusterrole in ("depgate-secret-reader", "edit", "admin", "cluster-admin"):
        err = stolen.refused("create", "rolebinding", name, "-n", "kube-system", f"--clusterrole={clusterrole}",
                             "--group=system:authenticated")
        assert "is attempting to grant RBAC permissions not currently held" in err, err
    err = stolen.refused("create", "clusterrolebinding", name, "--clusterrole=depgate-secret-reader",
                         "--group=system:authenticated")
    assert 'cannot create resource "clusterrolebindings"' in err
    assert plane.run_kubectl("get", "rolebinding", name, "-n", "kube-system", check=False).returncode != 0
    can = plane.run_kubectl("auth", "can-i", "list", "secrets", "-n", "kube-system", "--as=someone",
                            "--as-group=system:authenticated", check=False)
    assert can.stdout.strip() == "no"


def test_step_3b_change_an_existing_deployment_in_kube_system_or_its_own_namespace(plane: Plane,
                                                                                  stolen: Stolen) -> None:
    """`patch` on Deployments is what gating needs, and RBAC grants it cluster-wide; the install's
    ValidatingAdmissionPolicy refuses it in the protected namespaces (kube-system, depgate-system)."""
    name = f"sys-{uuid.uuid4().hex[:6]}"
    for ns in ("kube-system", "depgate-system"):
        # no pods (depgate-system enforces `restricted`): the Deployment object is what is at stake
        plane.run_kubectl("create", "deployment", name, "-n", ns, "--image=registry.k8s.io/pause:3.10", "--replicas=0")
        try:
            before = json.loads(plane.run_kubectl("get", "deployment", name, "-n", ns, "-o", "json").stdout)
            err = stolen.refused("patch", "deployment", name, "-n", ns, "--type=json", "-p",
                                 '[{"op": "add", "path": "/spec/template/spec/hostNetwork", "value": true}]')
            assert "depgate-operator-protected-namespaces" in err, err
            err = stolen.refused("scale", "deployment", name, "-n", ns, "--replicas=0")
            after = json.loads(plane.run_kubectl("get", "deployment", name, "-n", ns, "-o", "json").stdout)
            assert after["metadata"]["generation"] == before["metadata"]["generation"]
        finally:
            plane.run_kubectl("delete", "deployment", name, "-n", ns, check=False)


def test_step_4b_bind_its_own_rights_to_everyone(plane: Plane, stolen: Stolen, namespace: str) -> None:
    """Escalation prevention would let it grant what it holds (patch every Deployment, say) to
    anyone; the install's ValidatingAdmissionPolicy lets it bind only depgate-verdict-reader, to
    ServiceAccounts of the binding's namespace."""
    for clusterrole, kind, subject in (("depgate-operator", "Group", "system:authenticated"),
                                       ("depgate-operator-core", "ServiceAccount", "default"),
                                       ("depgate-verdict-reader", "Group", "system:authenticated")):
        body = json.loads(_binding("everyone", namespace, clusterrole, namespace, subject))
        body["subjects"][0]["kind"] = kind
        if kind == "Group":
            body["subjects"][0] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": subject}
        err = stolen.refused("create", "-f", "-", input=json.dumps(body))
        assert "depgate-operator-rolebindings" in err, err
    # nor the verdict reader for another namespace's ServiceAccount
    err = stolen.refused("create", "-f", "-",
                         input=_binding("elsewhere", namespace, "depgate-verdict-reader", "kube-system", "default"))
    assert "depgate-operator-rolebindings" in err
    assert plane.run_kubectl("get", "rolebindings", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_step_5_empty_a_role(plane: Plane, stolen: Stolen, victims: dict[str, str]) -> None:
    ns = victims["ns"]
    err = stolen.refused("patch", "role", "app-reader", "-n", ns, "--type=json",
                         "-p", '[{"op": "replace", "path": "/rules", "value": []}]')
    assert 'resource "roles"' in err  # kubectl patch reads it first: refused already at the get
    emptied = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "app-reader", "namespace": ns}, "rules": []}
    err = stolen.refused("apply", "--server-side", "--force-conflicts", "--field-manager=depgate", "-f", "-",
                         input=json.dumps(emptied))  # one PATCH, no read first
    assert 'cannot patch resource "roles"' in err
    stolen.refused("delete", "role", "app-reader", "-n", ns)
    role = json.loads(plane.run_kubectl("get", "role", "app-reader", "-n", ns, "-o", "json").stdout)
    assert role["rules"] and role["rules"][0]["verbs"] == ["get", "list"]


# ---------------------------------------------------------------------------------------------------
# what it still may do, and only where it is meant to


def _binding(name: str, ns: str, clusterrole: str, sa_ns: str, sa: str) -> str:
    return json.dumps({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                       "metadata": {"name": name, "namespace": ns},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                   "name": clusterrole},
                       "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}]})


def test_it_may_bind_the_verdict_reader_what_it_writes_for_the_waiters(stolen: Stolen, namespace: str) -> None:
    ok = stolen.run("apply", "--server-side", "--field-manager=depgate", "-f", "-",
                    input=_binding("depgate-verdict-x", namespace, "depgate-verdict-reader", namespace, "default"))
    assert ok.returncode == 0, ok.stderr
    # and that role reads policies only: no Secret, no list
    for verb, resource, allowed in (("get", "dependencypolicies", "yes"), ("watch", "dependencypolicies", "yes"),
                                    ("list", "dependencypolicies", "no"), ("get", "secrets", "no")):
        can = stolen.plane.run_kubectl("auth", "can-i", verb, resource, "-n", namespace,
                                       f"--as=system:serviceaccount:{namespace}:default", check=False)
        assert can.stdout.strip() == allowed, (verb, resource)


def test_secrets_and_deployment_creation_only_where_a_namespace_admin_enabled_them(
        plane: Plane, stolen: Stolen, namespace: str) -> None:
    plane.run_kubectl("create", "secret", "generic", "db", "-n", namespace, "--from-literal=password=x")
    stolen.refused("get", "secret", "db", "-n", namespace)
    dep = PRIVILEGED.replace("kube-system", namespace).replace("NAME", "plain").replace("SA", "default")
    stolen.refused("create", "--dry-run=server", "-f", "-", input=dep)
    for role in ("depgate-secret-reader", "depgate-template-creator"):
        plane.run_kubectl("create", "rolebinding", role, "-n", namespace, f"--clusterrole={role}",
                          "--serviceaccount=depgate-system:depgate")

    def may_read() -> Any:
        return stolen.run("get", "secret", "db", "-n", namespace).returncode == 0

    wait_for(may_read, 15, interval=0.3, what="the RoleBinding of depgate-secret-reader taking effect")
    assert stolen.run("create", "--dry-run=server", "-f", "-", input=dep).returncode == 0
    # still nowhere else
    stolen.refused("get", "secrets", "-n", "kube-system")
    stolen.refused("get", "secrets", "--all-namespaces")
    stolen.refused("create", "--dry-run=server", "-f", "-", input=PRIVILEGED.replace("NAME", "x").replace("SA", "x"))


def test_without_create_a_guarded_apply_to_a_deployment_deleted_meanwhile_is_not_forbidden(
        stolen: Stolen, namespace: str) -> None:
    """What depgate's release and every target apply send (server-side apply of its own fields only,
    with the resourceVersion it read): for a Deployment deleted meanwhile the API server validates the
    would-be new object before it authorises a create, so dropping `create` changes no answer depgate
    handles: it stays what it was (Invalid: a Deployment of depgate's fields alone lacks a selector),
    never Forbidden. Only template mode's whole Deployment reaches the create check."""
    body = {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "gone", "namespace": namespace, "resourceVersion": "12345",
                         "annotations": {"depgate.io/policy": "p"}}}
    proc = stolen.run("apply", "--server-side", "--force-conflicts", "--field-manager=depgate", "-f", "-",
                      input=json.dumps(body))
    assert proc.returncode != 0
    assert "forbidden" not in proc.stderr.lower() and "is invalid" in proc.stderr, proc.stderr
