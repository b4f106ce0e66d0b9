"""manifests/ against the real plane: `kubectl apply -k`, least-privilege RBAC, Pod Security, GitOps health.

- The cluster-wide install (manifests/) is applied server-side to the session's plane, and again as a
  server dry run; kube-controller-manager creates the operator's two pods in the `restricted` namespace
  (kwok runs them on its one node: the anti-affinity is preferred, never required) and its disruption
  controller counts them in the PodDisruptionBudget.
- Two replicas, one leader (issue 18), in both installs: RollingUpdate with maxUnavailable 0, a preferred
  anti-affinity over the operator's own pod labels, the /healthz probes, a PodDisruptionBudget of
  minAvailable 1 over the same pods, and the Lease rights (create, get, update) in a Role of the
  operator's namespace only, which the plane's authorizer confirms (nowhere else, no other verb). A
  one-replica overlay as docs/operations.md shows it renders one pod and no PodDisruptionBudget.
- The operator ServiceAccount's rights, as `kubectl auth can-i --list` reports them, must equal the
  committed snapshot tests/integration/snapshots/operator-can-i.txt: any verb added to the manifests
  fails here (DEPGATE_UPDATE_SNAPSHOTS=1 rewrites the file, for a change you mean to make).
- `edit`/`admin`/`view` users get DependencyPolicy rights through the aggregated roles.
- The namespaced overlay (manifests/namespaced/) is installed on a second plane of its own (its
  ClusterRoleBinding-less RBAC cannot share a cluster with the cluster-wide install that other tests
  run the operator under); there the operator runs with the ServiceAccount's token, reconciles a
  policy in `apps`, leaves one in another namespace alone, and is never refused a request.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from depgate.dev.plane import wait_crd_served
from tests.conftest import (
    REPO,
    Plane,
    operator_token_kubeconfig,
    start_operator,
    stop_operator,
    wait_aggregated,
    wait_for,
)
from tests.integration.kubehelp import apply, condition, deployment, get, wait_policy

MANIFESTS = REPO / "manifests"
SNAPSHOT = Path(__file__).parent / "snapshots" / "operator-can-i.txt"
SYSTEM_NS = "depgate-system"
SA = f"system:serviceaccount:{SYSTEM_NS}:depgate"
# A ServiceAccount name nobody binds: what every ServiceAccount of depgate-system may do anyway
# (discovery, self-reviews, ...). The snapshot holds only what the manifests add to that.
BASELINE = f"system:serviceaccount:{SYSTEM_NS}:depgate-can-i-baseline"
CORE_ROLE = "depgate-operator-core"
REPLICAS = 2  # one leader, one standby (issue 18)
LEASES = "leases.coordination.k8s.io"


# ---------------------------------------------------------------------------------------------------
# helpers


def _kubectl_json(plane: Plane, *args: str, input: str | None = None) -> dict[str, Any]:
    return dict(json.loads(plane.run_kubectl(*args, "-o", "json", input=input).stdout))


def _objects(plane: Plane, path: Path) -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(plane.run_kubectl("kustomize", str(path)).stdout) if o]


def _can_i(plane: Plane, user: str, ns: str) -> set[str]:
    """`kubectl auth can-i --list`, one normalised line per row: the table's padding dropped, verbs sorted."""
    out = plane.run_kubectl("auth", "can-i", "--list", f"--as={user}", "-n", ns).stdout.splitlines()
    header = out[0]
    starts = [header.index(h) for h in ("Resources", "Non-Resource URLs", "Resource Names", "Verbs")]
    rows = set()
    for line in out[1:]:
        if not line.strip():
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        resource, urls, names, verbs = cells
        verbs = " ".join(sorted(verbs.strip("[]").split()))
        row = f"{resource or '-'} urls={urls} names={names} verbs=[{verbs}]"
        rows.add(row)
    return rows


def _granted(plane: Plane, ns: str) -> list[str]:
    """What the manifests grant the operator in namespace `ns` (everything beyond the baseline)."""
    return sorted(_can_i(plane, SA, ns) - _can_i(plane, BASELINE, ns))


def _snapshot_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in SNAPSHOT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[(.+)\]", line.strip())
        if m:
            current = m.group(1)
            sections[current] = []
        else:
            assert current is not None, f"{SNAPSHOT}: a line before the first [section]"
            sections[current].append(line.strip())
    return sections


def _write_snapshot_section(name: str, lines: list[str]) -> None:
    """Replace one [section] of the snapshot, keeping its header comment and the other sections."""
    text = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    head = []
    for line in text.splitlines():
        if line.startswith("["):
            break
        head.append(line)
    sections = _snapshot_sections() if SNAPSHOT.exists() else {}
    sections[name] = lines
    body = "\n".join(f"[{k}]\n" + "".join(f"{x}\n" for x in v) for k, v in sections.items())
    SNAPSHOT.write_text("\n".join(head).rstrip("\n") + "\n\n" + body)


def _expect_rights(plane: Plane, ns: str, section: str) -> None:
    if os.environ.get("DEPGATE_UPDATE_SNAPSHOTS") == "1":
        _write_snapshot_section(section, _granted(plane, ns))
    expected = _snapshot_sections()[section]
    # RBAC's authorizer caches converge within moments of the last write; wait for that, not longer.
    deadline = time.monotonic() + 15
    while True:
        got = _granted(plane, ns)
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == expected, (
        f"the operator's rights in namespace {ns} differ from [{section}] of {SNAPSHOT.relative_to(REPO)} "
        "(DEPGATE_UPDATE_SNAPSHOTS=1 rewrites it, for a change you mean)")


def _operator_pods_admitted(plane: Plane) -> None:
    """The Deployment's ReplicaSet created its two pods in the restricted namespace, and never failed to;
    both become Ready (kwok plays the kubelet on the plane's one node, so the preferred anti-affinity
    must not keep the second one Pending)."""

    def pods() -> list[dict[str, Any]]:
        out = plane.run_kubectl("get", "pods", "-n", SYSTEM_NS, "-l", "app.kubernetes.io/component=operator",
                                "-o", "json").stdout
        return list(json.loads(out)["items"])

    created = wait_for(lambda: len(pods()) >= REPLICAS and pods(), 60, interval=0.3,
                       what="the operator Deployment's two pods")
    assert len(created) == REPLICAS
    events = plane.run_kubectl("get", "events", "-n", SYSTEM_NS, "-o", "json").stdout
    failed = [e["message"] for e in json.loads(events)["items"] if e.get("reason") == "FailedCreate"]
    assert not failed, failed
    wait_for(lambda: (get(plane, SYSTEM_NS, "deployment", "depgate") or {}).get("status", {})
             .get("readyReplicas") == REPLICAS, 60, interval=0.3, what="both operator pods ready (kwok)")
    assert all(p["spec"].get("nodeName") for p in pods()), "an operator pod was not scheduled"


WEBHOOK_KINDS = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}


def _install(plane: Plane, path: Path, *, webhooks: bool = True) -> str:
    """`kubectl apply -k` of an install. webhooks=False: without its webhook configurations, for the
    session's plane, whose operator runs outside the cluster with the configurations pointing at it
    (start_operator registers them): the install's would point the API server at a Service no pod serves."""
    if webhooks:
        out = plane.run_kubectl("apply", "-k", str(path), "--server-side").stdout
    else:
        docs = [o for o in _objects(plane, path) if o["kind"] not in WEBHOOK_KINDS]
        out = plane.run_kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs)).stdout
    wait_crd_served(plane.kubectl, plane.kubeconfig, "crd/dependencypolicies.depgate.io")
    return out


LEADER_FLAGS = ("--leader-election", "--no-leader-election", "--lease-name", "--lease-seconds",
                "--renew-deadline-seconds", "--retry-period-seconds", "--shard")


def assert_two_replicas_one_leader(objs: list[dict[str, Any]], ns: str = SYSTEM_NS, sa: str = "depgate") -> None:
    """What running two operator replicas with no gap needs from a rendered install (manifests/ or the chart
    with its default values; test_helm.py calls this too)."""
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == REPLICAS
    # a rollout starts a new pod (a Ready standby, serving the webhooks) before it stops an old one
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    selector = spec["selector"]["matchLabels"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    pod = spec["template"]["spec"]
    # apart where the scheduler can, and never unschedulable for it (a one-node cluster runs both)
    anti = pod["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti, anti
    terms = [t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]]
    assert [t["topologyKey"] for t in terms] == ["kubernetes.io/hostname"]
    assert terms[0]["labelSelector"] == {"matchLabels": selector}
    assert not pod.get("podAffinity") and not (pod["affinity"].get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    for c in pod.get("topologySpreadConstraints") or []:
        assert c["whenUnsatisfiable"] == "ScheduleAnyway", c
    # room to stop and hand the lease back on SIGTERM, not minutes of a hung pod
    assert 15 <= pod["terminationGracePeriodSeconds"] <= 60
    (c,) = pod["containers"]
    for probe in ("livenessProbe", "readinessProbe"):  # /healthz answers on the standby too: both Ready
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    # the leader election is on, with the operator's defaults (no flag needed)
    assert not [a for a in c["args"] if a.split("=")[0] in LEADER_FLAGS], c["args"]
    # one of the two pods through voluntary disruptions
    (pdb,) = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1" and pdb["metadata"]["namespace"] == ns
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"] == {"matchLabels": selector}
    # the Leases: a Role in the operator's namespace (no ClusterRole), bound to its ServiceAccount only
    lease_rules = [(o, r) for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o.get("rules") or []
                   if "coordination.k8s.io" in r["apiGroups"]]
    assert {(o["kind"], o["metadata"].get("namespace")) for o, _ in lease_rules} == {("Role", ns)}, lease_rules
    assert all(r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"] for _, r in lease_rules)
    assert sorted(v for _, r in lease_rules for v in r["verbs"]) == ["create", "get", "update"]
    roles = {o["metadata"]["name"] for o, _ in lease_rules}
    bindings = [o for o in objs if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] == "Role"
                and o["roleRef"]["name"] in roles]
    assert [(b["metadata"]["namespace"], b["subjects"]) for b in bindings] == [
        (ns, [{"kind": "ServiceAccount", "name": sa, "namespace": ns}])]


# ---------------------------------------------------------------------------------------------------
# the cluster-wide install, on the session's plane


@pytest.fixture(scope="module")
def installed(plane: Plane) -> str:
    if not plane.pods:
        pytest.skip("needs kube-controller-manager (role aggregation, ReplicaSets) and kwok")
    out = _install(plane, MANIFESTS, webhooks=False)
    wait_aggregated(plane)
    return out


def test_apply_k_server_side_and_a_server_dry_run(plane, installed):
    objects = [o for o in _objects(plane, MANIFESTS) if o["kind"] not in WEBHOOK_KINDS]
    assert installed.count("serverside-applied") == len(objects)
    for o in objects:
        assert f"/{o['metadata']['name']} serverside-applied" in installed
    # a server dry run of the same install (what `kubectl diff -k` and an upgrade preview do) passes
    # admission and validation; on a cluster without depgate-system it would report the namespace
    # NotFound, since a dry run creates nothing for the objects after it
    out = plane.run_kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                            input=yaml.safe_dump_all(objects)).stdout
    assert out.count("(server dry run)") == len(objects)
    # the webhook configurations too, under another name: the session's operator registered its own
    # (pointing at it, outside the cluster), which the install's (pointing at the Service) would not merge into
    hooks = [o for o in _objects(plane, MANIFESTS) if o["kind"] in WEBHOOK_KINDS]
    assert len(hooks) == 2
    for o in hooks:
        o["metadata"]["name"] = f"dry-run-{uuid.uuid4().hex[:6]}.depgate.io"
        plane.run_kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(o))


def test_operator_pods_are_admitted_in_the_restricted_namespace(plane, installed):
    labels = _kubectl_json(plane, "get", "namespace", SYSTEM_NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    _operator_pods_admitted(plane)
    # and the label is enforced: a pod that is not restricted is refused in that namespace
    refused = plane.run_kubectl("run", "not-restricted", "-n", SYSTEM_NS, "--image=busybox", "--restart=Never",
                                "--dry-run=server", check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr


def test_the_waiter_image_follows_the_operator_image(plane, tmp_path):
    def images(path: Path) -> tuple[str, str]:
        dep = next(o for o in _objects(plane, path) if o["kind"] == "Deployment")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        return c["image"], next(e["value"] for e in c["env"] if e["name"] == "DEPGATE_WAITER_IMAGE")

    assert images(MANIFESTS) == ("depgate/depgate:0.1.0", "depgate/depgate:0.1.0")
    assert images(MANIFESTS / "namespaced") == ("depgate/depgate:0.1.0", "depgate/depgate:0.1.0")
    # pinned by digest where docs/operations.md says to pin it, both follow
    shutil.copytree(REPO / "crds", tmp_path / "crds")
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    base = tmp_path / "manifests" / "base" / "kustomization.yaml"
    pinned = "registry.example/depgate@sha256:" + "ab" * 32
    base.write_text(base.read_text().replace(
        "  newTag: 0.1.0", "  newName: registry.example/depgate\n  digest: sha256:" + "ab" * 32))
    assert images(tmp_path / "manifests") == (pinned, pinned)


def test_both_installs_run_two_replicas_with_one_leader(plane):
    assert_two_replicas_one_leader(_objects(plane, MANIFESTS))
    namespaced = _objects(plane, MANIFESTS / "namespaced")
    assert_two_replicas_one_leader(namespaced)
    # the namespaced install's per-namespace RoleBindings grant the ClusterRole, never the Lease Role
    assert [o["metadata"]["namespace"] for o in namespaced if o["kind"] == "RoleBinding"
            and o["roleRef"]["name"] == "depgate-operator"] == ["apps"]


def _docs_one_replica_overlay() -> str:
    """The kustomize overlay docs/operations.md ("High availability") shows for one replica."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("## High availability"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    (block,) = [b for b in blocks if "kind: Kustomization" in b]
    return "\n".join(line.removeprefix("  ") for line in block.splitlines()) + "\n"


def test_the_one_replica_overlay_of_the_docs_renders_one_pod_and_no_pdb(plane, tmp_path):
    shutil.copytree(REPO / "crds", tmp_path / "crds")
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    overlay = tmp_path / "one"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(_docs_one_replica_overlay())
    objs = _objects(plane, overlay)
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert [o for o in objs if o["kind"] == "PodDisruptionBudget"] == []
    # nothing else of the install changes
    full = [o for o in _objects(plane, MANIFESTS) if o["kind"] != "PodDisruptionBudget"]
    assert len(objs) == len(full) and [o for o in objs if o["kind"] != "Deployment"] == [
        o for o in full if o["kind"] != "Deployment"]


def test_the_pdb_counts_both_operator_pods_and_lets_one_go(plane, installed):
    _operator_pods_admitted(plane)

    def counted() -> dict[str, Any] | None:
        st = (get(plane, SYSTEM_NS, "poddisruptionbudget", "depgate") or {}).get("status") or {}
        return st if st.get("expectedPods") == REPLICAS and st.get("currentHealthy") == REPLICAS else None

    # kube-controller-manager's disruption controller: the PDB selects exactly the Deployment's two pods
    status = wait_for(counted, 60, interval=0.5, what="the PodDisruptionBudget counting both operator pods")
    assert (status["desiredHealthy"], status["disruptionsAllowed"]) == (1, 1), status


def test_the_lease_rights_hold_in_the_operators_namespace_only(plane, installed, namespace):
    wait_for(lambda: _may(plane, SA, "update", LEASES, SYSTEM_NS), 15, interval=0.3, what="the Lease Role in effect")
    for verb in ("create", "get", "update"):
        assert _may(plane, SA, verb, LEASES, SYSTEM_NS), verb
        for name in ("depgate-leader", "depgate-leader-a"):  # the lease and a shard's
            assert verb == "create" or _may(plane, SA, verb, f"{LEASES}/{name}", SYSTEM_NS), (verb, name)
        for elsewhere in (namespace, "kube-system", "kube-node-lease", "default"):
            assert not _may(plane, SA, verb, LEASES, elsewhere), (verb, elsewhere)
    for verb in ("list", "watch", "patch", "delete", "deletecollection"):
        assert not _may(plane, SA, verb, LEASES, SYSTEM_NS), verb


def test_operator_rights_are_exactly_the_snapshot(plane, installed, namespace):
    # The same rights in every namespace (a ClusterRoleBinding): no Secret, no Role, no Deployment
    # creation; in its own namespace also what the webhook needs (its serving Secret).
    _expect_rights(plane, namespace, "cluster-wide install: any namespace")
    _expect_rights(plane, "kube-system", "cluster-wide install: any namespace")
    _expect_rights(plane, SYSTEM_NS, "cluster-wide install: the operator's namespace (depgate-system)")


def test_the_opt_in_roles_add_exactly_their_rights_where_a_namespace_binds_them(plane, installed, namespace):
    """`secret` preconditions and template mode, enabled in one namespace by its admin; and what the
    verdict waiters' RoleBinding grants a workload's ServiceAccount."""
    base = set(_granted(plane, namespace))
    for role in ("depgate-secret-reader", "depgate-template-creator"):
        plane.run_kubectl("create", "rolebinding", role, "-n", namespace, f"--clusterrole={role}",
                          f"--serviceaccount={SYSTEM_NS}:depgate")
    want = {"secrets urls=[] names=[] verbs=[get list watch]",
            "deployments.apps urls=[] names=[] verbs=[create get list patch watch]"}
    expected = {r for r in base if not r.startswith("deployments.apps ")} | want
    wait_for(lambda: set(_granted(plane, namespace)) == expected, 15, interval=0.5,
             what="exactly the two RoleBindings' rights added")
    assert "secrets urls=[] names=[] verbs=[get list watch]" not in _granted(plane, "kube-system")
    plane.run_kubectl("create", "serviceaccount", "app", "-n", namespace)
    plane.run_kubectl("create", "rolebinding", "depgate-verdict-app", "-n", namespace,
                      "--clusterrole=depgate-verdict-reader", f"--serviceaccount={namespace}:app")
    app = f"system:serviceaccount:{namespace}:app"
    wait_for(lambda: _may(plane, app, "get", "dependencypolicies.depgate.io", namespace), 15, interval=0.3,
             what="the verdict reader in effect")
    assert _may(plane, app, "watch", "dependencypolicies.depgate.io", namespace)
    assert not _may(plane, app, "list", "dependencypolicies.depgate.io", namespace)
    assert not _may(plane, app, "get", "secrets", namespace)


def test_no_wildcards_and_no_escalation_verbs_anywhere(plane):
    for path in (MANIFESTS, MANIFESTS / "namespaced"):
        for o in _objects(plane, path):
            for rule in o.get("rules") or []:
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in (rule.get(key) or []), (o["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule.get("verbs") or []), rule


def _may(plane: Plane, user: str, verb: str, resource: str, ns: str, subresource: str = "") -> bool:
    sub = [f"--subresource={subresource}"] if subresource else []
    out = plane.run_kubectl("auth", "can-i", verb, resource, *sub, "-n", ns, f"--as={user}", check=False)
    return out.stdout.strip() == "yes"


def test_edit_admin_and_view_users_get_policy_rights_through_aggregation(plane, installed, namespace):
    for user, role in (("alice", "edit"), ("carol", "admin"), ("bob", "view")):
        plane.run_kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}",
                          "-n", namespace)
    dp = "dependencypolicies.depgate.io"
    # kube-controller-manager aggregates depgate-edit/-view into the built-in roles
    wait_for(lambda: _may(plane, "alice", "create", dp, namespace) and _may(plane, "bob", "get", dp, namespace),
             30, interval=0.3, what="depgate-edit and depgate-view aggregated into edit and view")
    for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
        assert _may(plane, "alice", verb, dp, namespace), verb
        assert _may(plane, "carol", verb, dp, namespace), verb
    for verb in ("get", "list", "watch"):
        assert _may(plane, "bob", verb, dp, namespace), verb
    assert _may(plane, "bob", "get", dp, namespace, "status")
    for verb in ("create", "update", "patch", "delete"):
        assert not _may(plane, "bob", verb, dp, namespace), verb
    # only the operator writes status; and nobody without a binding reads policies
    assert _may(plane, SA, "patch", dp, namespace, "status")
    for user in ("alice", "carol", "bob"):
        assert not _may(plane, user, "patch", dp, namespace, "status"), user
        assert not _may(plane, user, "update", dp, namespace, "status"), user
    assert not _may(plane, "dave", "get", dp, namespace)
    # the rights stop at the namespace of the binding
    assert not _may(plane, "alice", "create", dp, "default")


# ---------------------------------------------------------------------------------------------------
# the namespaced install, on a plane of its own


@pytest.fixture(scope="module")
def own_plane(plane: Plane) -> Iterator[Plane]:
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        pytest.skip("the namespaced install needs a cluster without the cluster-wide one")
    if not plane.pods:
        pytest.skip("needs kube-controller-manager (role aggregation, ReplicaSets) and kwok")
    from depgate.dev import plane as devplane

    state = Path(tempfile.mkdtemp(prefix="depgate-test-plane-ns-"))
    try:
        st = devplane.up(state, die_with_parent=True)
    except devplane.PlaneError as e:
        shutil.rmtree(state, ignore_errors=True)
        pytest.fail(f"could not start a second control plane: {e}", pytrace=False)
    try:
        yield Plane(st.kubeconfig, plane.kubectl, st.server, pods=st.pods)
    finally:
        devplane.down(state, quiet=True)


@pytest.fixture(scope="module")
def namespaced(own_plane: Plane) -> Plane:
    for ns in ("apps", "elsewhere"):
        own_plane.run_kubectl("create", "namespace", ns)
        own_plane.run_kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=60s")
    out = _install(own_plane, MANIFESTS / "namespaced")
    assert "clusterrolebinding.rbac.authorization.k8s.io/depgate-operator serverside" not in out
    assert "rolebinding.rbac.authorization.k8s.io/depgate-operator serverside-applied" in out
    wait_aggregated(own_plane)
    return own_plane


def test_namespaced_install_applies_and_its_pods_are_admitted(namespaced):
    out = namespaced.run_kubectl("apply", "-k", str(MANIFESTS / "namespaced"), "--server-side",
                                 "--dry-run=server").stdout
    assert "(server dry run)" in out
    _operator_pods_admitted(namespaced)
    dep = get(namespaced, SYSTEM_NS, "deployment", "depgate") or {}
    assert "--namespace=apps" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_namespaced_operator_rights_are_exactly_the_snapshot(namespaced):
    _expect_rights(namespaced, "apps", "namespaced install: a served namespace (apps)")
    _expect_rights(namespaced, "elsewhere", "namespaced install: any other namespace")


POLICY = """
apiVersion: depgate.io/v1alpha1
kind: DependencyPolicy
metadata: {name: app}
spec:
  workloadRef: {name: app}
  preconditions:
  - name: settings
    configMap: {name: settings}
  - name: db
    service: {name: db, minReadyEndpoints: 0}
"""


def test_namespaced_operator_runs_under_its_serviceaccount_and_stays_in_its_namespace(namespaced, tmp_path):
    # first the operator: the install's admission webhook must be served before a policy can be
    # created. Its configurations point at the in-cluster Service (no real pod serves it here): this
    # operator runs outside the cluster, so start_operator registers them anew, pointing at it.
    namespaced.run_kubectl("delete", "validatingwebhookconfiguration,mutatingwebhookconfiguration", "depgate.io",
                           "--ignore-not-found")
    op = start_operator(str(operator_token_kubeconfig(namespaced, tmp_path)), tmp_path, "--namespace=apps",
                        admin=namespaced)
    try:
        for ns in ("apps", "elsewhere"):
            apply(namespaced, ns, deployment("app"))
            apply(namespaced, ns, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n")
            apply(namespaced, ns, "apiVersion: v1\nkind: Service\nmetadata: {name: db}\n"
                                  "spec: {selector: {app: db}, ports: [{port: 5432}]}\n")
            apply(namespaced, ns, POLICY)
        pol = wait_policy(namespaced, "apps", "app", lambda p: condition(p, "Ready").get("status") == "True",
                          timeout=60, what="Ready under the ServiceAccount's token")
        assert [(t["kind"], t["name"]) for t in pol["status"]["targets"]] == [("Deployment", "app")]
        wait_for(lambda: get(namespaced, "apps", "rolebinding", "depgate-verdict-app"), 20,
                 what="the verdict waiter's RoleBinding, created by the operator")
        time.sleep(2)  # give it the chance to touch what it must not
    finally:
        stop_operator(op)
    log = op.log_text()
    for refused in ("(403)", "Forbidden", "Traceback"):
        assert refused not in log, log[-4000:]
    # the namespace it does not serve is left alone
    other = get(namespaced, "elsewhere", "dependencypolicy", "app") or {}
    assert not other.get("status")
    assert "depgate.io/policy" not in ((get(namespaced, "elsewhere", "deployment", "app") or {})
                                       .get("metadata", {}).get("annotations") or {})
