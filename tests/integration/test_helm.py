"""charts/depgate with the real helm (compiled from its Go module and cached, like the plane: depgate.dev.build).

- One source of truth: the chart's CRD is crds/dependencypolicies.depgate.io.yaml byte for byte (Helm reads
  only files inside a chart, and a symlink does not survive every checkout, so the chart holds a copy and
  this test fails the moment the two differ), and the chart's objects, RBAC rules included, are those of
  manifests/: `helm template` equals `kubectl kustomize manifests/` (and manifests/namespaced/ with
  namespaces=[apps]) object for object, field for field, but for Helm's own labels and the Namespace
  (a release goes into a namespace that exists: `--create-namespace`, or created with the labels below).
- `helm lint --strict`, and the values the chart's README lists do what it says.
- The default values run two replicas electing a leader (RollingUpdate, maxUnavailable 0, the PDB, the Lease
  rights in a Role of the release's namespace), checked as manifests/' are (test_manifests.py); leader
  election off needs one replica (more fails the template, saying so) and renders `--no-leader-election`,
  strategy Recreate and no PDB; the lease timings are passed only when changed.
- `helm install` and `helm upgrade` on a plane of its own (the session's plane holds manifests/' objects of
  the same names, which Helm would refuse to adopt): the operator's Deployment comes up (kwok runs its two pods),
  and the operator, run locally under a token of the chart's ServiceAccount, gates a Deployment without one
  refused request, cluster-wide after the install and in the one namespace served after the upgrade.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
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
    own_plane,
    start_operator,
    stop_operator,
    wait_aggregated,
    wait_for,
)
from tests.integration.kubehelp import apply, condition, deployment, get, init_names, wait_deployment, wait_policy
from tests.integration.test_manifests import REPLICAS, assert_two_replicas_one_leader

CHART = REPO / "charts" / "depgate"
MANIFESTS = REPO / "manifests"
CRD = "dependencypolicies.depgate.io.yaml"
RELEASE, SYSTEM_NS = "depgate", "depgate-system"  # the release whose names are manifests/' names
# What Helm's conventions add to manifests/' labels (templates/_helpers.tpl, depgate.labels)
HELM_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
               "helm.sh/chart")


# ---------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def helm(tmp_path_factory) -> Iterator[Helm]:
    from depgate.dev import build

    try:
        binary = build.build_helm()
    except build.BuildError as e:
        pytest.fail(f"could not compile helm: {e}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    yield Helm(str(binary), home)


class Helm:
    """helm with its config, cache and data in a directory of its own (never ~/.config/helm)."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_DATA_HOME": str(home / "data")}

    def run(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.binary, *args], env=self.env, capture_output=True, text=True, check=False,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def template(self, *values: str) -> list[dict[str, Any]]:
        out = self.run("template", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--include-crds", *values).stdout
        return [o for o in yaml.safe_load_all(out) if o]


@pytest.fixture(scope="module")
def kubectl() -> str:
    """The plane's kubectl (`kubectl kustomize` needs no API server)."""
    from depgate.dev import build
    from depgate.dev import plane as devplane

    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        found = shutil.which("kubectl")
        assert found, "USE_EXISTING_CLUSTER=true needs kubectl on PATH"
        return found
    try:
        bins, _ = devplane.find_binaries()
    except build.BuildError as e:
        pytest.fail(f"could not compile kubectl: {e}", pytrace=False)
    return str(bins / "kubectl") if (bins / "kubectl").exists() else shutil.which("kubectl") or "kubectl"


def kustomized(kubectl: str, path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True, timeout=60)
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    md = obj["metadata"]
    return obj["kind"], md.get("namespace", ""), md["name"]


def without_helm_labels(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for meta in (out["metadata"], (out.get("spec") or {}).get("template", {}).get("metadata")):
        if meta and "labels" in meta:
            for label in HELM_LABELS:
                meta["labels"].pop(label, None)
    return out


def assert_same_objects(rendered: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    want = {key(o): o for o in expected if o["kind"] != "Namespace"}
    got = {key(o): o for o in rendered}
    assert sorted(got) == sorted(want), "helm template and kubectl kustomize render different objects"
    for k, obj in got.items():
        if obj["kind"] != "CustomResourceDefinition":  # crds/ is installed as it is, without labels
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == RELEASE and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert without_helm_labels(obj) == want[k], f"{k} differs between the chart and manifests/"


# ---------------------------------------------------------------------------------------------------
# the chart against manifests/, no API server needed


def test_the_charts_crd_is_the_one_in_crds_byte_for_byte():
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart_crds == sorted(p.name for p in (REPO / "crds").glob("*.yaml")) == [CRD]
    assert (CHART / "crds" / CRD).read_bytes() == (REPO / "crds" / CRD).read_bytes(), (
        f"charts/depgate/crds/{CRD} is not crds/{CRD}: after changing the CRD, "
        f"cp crds/{CRD} charts/depgate/crds/")


def test_helm_lint_strict(helm):
    out = helm.run("lint", "--strict", str(CHART)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out
    namespaced = helm.run("lint", "--strict", str(CHART), "--set", "namespaces={apps,web}").stdout
    assert "0 chart(s) failed" in namespaced, namespaced


def test_helm_template_is_kubectl_kustomize_of_the_cluster_wide_install(helm, kubectl):
    expected = kustomized(kubectl, MANIFESTS)
    assert [o["kind"] for o in expected].count("Namespace") == 1
    assert_same_objects(helm.template(), expected)


def test_helm_template_with_namespaces_is_kubectl_kustomize_of_the_namespaced_install(helm, kubectl):
    assert_same_objects(helm.template("--set", "namespaces={apps}"), kustomized(kubectl, MANIFESTS / "namespaced"))


def test_values_image_ports_args_and_a_second_release_name(helm):
    digest = "sha256:" + "ab" * 32

    def operator(objs: list[dict[str, Any]]) -> dict[str, Any]:
        dep = next(o for o in objs if o["kind"] == "Deployment")
        return dict(dep["spec"]["template"]["spec"]["containers"][0])

    c = operator(helm.template("--set", "image.repository=registry.example/depgate", "--set", "image.tag=0.2.0"))
    assert c["image"] == "registry.example/depgate:0.2.0"
    assert c["env"] == [{"name": "DEPGATE_WAITER_IMAGE", "value": "registry.example/depgate:0.2.0"}]
    c = operator(helm.template("--set", f"image.digest={digest}", "--set", "image.pullPolicy=Always"))
    assert c["image"] == c["env"][0]["value"] == f"depgate/depgate@{digest}"
    assert c["imagePullPolicy"] == "Always"
    objs = helm.template("--set", "metrics.port=9090", "--set", "namespaces={apps,web}",
                         "--set", "extraArgs={--resync-seconds=120,-v}", "--set", "resources.limits.memory=1Gi")
    c = operator(objs)
    assert c["args"] == ["run", "--metrics-port=9090", "--health-port=8081", "--namespace=apps", "--namespace=web",
                         "--resync-seconds=120", "-v"]
    assert c["ports"][0] == {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
    assert c["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    service = next(o for o in objs if o["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == 9090
    rbac_bindings = [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    bindings = sorted((o["kind"], o["metadata"].get("namespace")) for o in rbac_bindings
                      if o["roleRef"]["name"] == "depgate-operator")
    assert bindings == [("RoleBinding", "apps"), ("RoleBinding", "web")]
    # another release name prefixes every name, so two releases (say, two namespaced installs) never collide
    other = helm.run("template", "ops", str(CHART), "--namespace", "ops").stdout
    names = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(other) if o}
    assert ("ClusterRole", "ops-depgate-operator") in names and ("Deployment", "ops-depgate") in names
    sa = next(o for o in yaml.safe_load_all(other) if o and o["kind"] == "ClusterRoleBinding")["subjects"]
    assert sa == [{"kind": "ServiceAccount", "name": "ops-depgate", "namespace": "ops"}]


def _deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    return dep


def _args(objs: list[dict[str, Any]]) -> list[str]:
    return list(_deployment(objs)["spec"]["template"]["spec"]["containers"][0]["args"])


def _lease_rules(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objs for r in o.get("rules") or [] if "coordination.k8s.io" in r.get("apiGroups", [])]


def _refused(helm: Helm, *values: str) -> str:
    proc = helm.run("template", RELEASE, str(CHART), "--namespace", SYSTEM_NS, *values, check=False)
    assert proc.returncode != 0, f"helm template {' '.join(values)} rendered"
    return proc.stderr


def test_two_replicas_and_a_leader_by_default_one_replica_without_leader_election(helm, kubectl):
    """The chart's default: two replicas electing a leader, the PDB, the Lease Role (as manifests/); the
    values that change it, and the ones it refuses with a message that says what to do."""
    assert_two_replicas_one_leader(helm.template())
    assert_two_replicas_one_leader(helm.template("--set", "namespaces={apps,web}"))
    assert_two_replicas_one_leader(kustomized(kubectl, MANIFESTS))
    # without leader election every replica would write: more than one is refused, saying so
    for n in ("2", "3"):
        err = _refused(helm, "--set", "leaderElection.enabled=false", "--set", f"replicas={n}")
        assert f"replicas is {n} but leaderElection.enabled is false" in err and "set replicas to 1" in err, err
    # one replica without it: the flag, Recreate (two writers never overlap in a rollout), no PDB, no lease rights
    objs = helm.template("--set", "leaderElection.enabled=false", "--set", "replicas=1")
    dep = _deployment(objs)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert _args(objs) == ["run", "--metrics-port=8080", "--health-port=8081", "--no-leader-election"]
    assert [o for o in objs if o["kind"] == "PodDisruptionBudget"] == []
    assert _lease_rules(objs) == []
    stopped = helm.template("--set", "leaderElection.enabled=false", "--set", "replicas=0")
    assert _deployment(stopped)["spec"]["replicas"] == 0
    # one replica with leader election: it acquires at once, rolls like two, and has no PDB (it would
    # block every drain of its node)
    objs = helm.template("--set", "replicas=1")
    dep = _deployment(objs)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0,
                                                                                          "maxSurge": 1}
    assert "--no-leader-election" not in _args(objs)
    assert [o for o in objs if o["kind"] == "PodDisruptionBudget"] == []
    assert sorted(v for r in _lease_rules(objs) for v in r["verbs"]) == ["create", "get", "update"]
    assert [o["kind"] for o in helm.template("--set", "replicas=3") if o["kind"] == "PodDisruptionBudget"] == [
        "PodDisruptionBudget"]
    assert [o for o in helm.template("--set", "podDisruptionBudget.enabled=false")
            if o["kind"] == "PodDisruptionBudget"] == []
    # the timings: passed only when they differ from the operator's defaults (so the default output is
    # manifests/'), each on its own
    assert _args(helm.template("--set", "leaderElection.leaseSeconds=15", "--set",
                               "leaderElection.renewDeadlineSeconds=10", "--set",
                               "leaderElection.retryPeriodSeconds=2")) == _args(helm.template())
    assert _args(helm.template("--set", "leaderElection.leaseSeconds=30"))[3:] == ["--lease-seconds=30"]
    assert _args(helm.template("--set", "leaderElection.renewDeadlineSeconds=5"))[3:] == [
        "--renew-deadline-seconds=5"]
    assert _args(helm.template("--set", "leaderElection.leaseSeconds=60", "--set",
                               "leaderElection.renewDeadlineSeconds=40", "--set",
                               "leaderElection.retryPeriodSeconds=5", "--set", "extraArgs={-v}"))[3:] == [
        "--lease-seconds=60", "--renew-deadline-seconds=40", "--retry-period-seconds=5", "-v"]
    # the leader must stop writing before the lease can expire: refused at template time, not in a crash loop
    err = _refused(helm, "--set", "leaderElection.renewDeadlineSeconds=15")
    assert "leaderElection.renewDeadlineSeconds (15) must be below leaderElection.leaseSeconds (15)" in err, err
    err = _refused(helm, "--set", "leaderElection.retryPeriodSeconds=10")
    assert "leaderElection.retryPeriodSeconds (10) must be below leaderElection.renewDeadlineSeconds (10)" in err
    for bad in ("leaderElection.leaseSeconds=0", "leaderElection.enabled=maybe", "replicas=-1", "replicaCount=2",
                "podDisruptionBudget.minAvailable=2"):
        assert "values don't meet the specifications of the schema" in _refused(helm, "--set", bad), bad
    # the anti-affinity is a default to merge into, and can be dropped
    pod = _deployment(helm.template("--set", "affinity.podAntiAffinity=null"))["spec"]["template"]["spec"]
    assert "affinity" not in pod
    pod = _deployment(helm.template("--set", "affinity.nodeAffinity.x=y"))["spec"]["template"]["spec"]
    assert sorted(pod["affinity"]) == ["nodeAffinity", "podAntiAffinity"]


# ---------------------------------------------------------------------------------------------------
# helm install and helm upgrade on a plane of its own


@pytest.fixture(scope="module")
def helm_plane() -> Iterator[Plane]:
    if os.environ.get("USE_EXISTING_CLUSTER", "").lower() == "true":
        pytest.skip("installs the chart under the names of manifests/: needs a cluster without them")
    with own_plane("depgate-test-plane-helm-") as p:
        if not p.pods:
            pytest.skip("needs kube-controller-manager (role aggregation, ReplicaSets) and kwok")
        yield p


POLICY = """
apiVersion: depgate.io/v1alpha1
kind: DependencyPolicy
metadata: {name: %(name)s}
spec:
  workloadRef: {name: %(name)s}
  preconditions:
  - name: settings
    configMap: {name: settings}
  - name: db
    service: {name: db, minReadyEndpoints: 0}
"""


def _gated(plane: Plane, ns: str, name: str) -> None:
    """A Deployment, what its policy waits for, the policy; then Ready, and the init containers in place."""
    apply(plane, ns, deployment(name))
    apply(plane, ns, POLICY % {"name": name})
    pol = wait_policy(plane, ns, name, lambda p: condition(p, "Ready").get("status") == "True",
                      timeout=60, what="Ready under the chart's ServiceAccount")
    assert [(t["kind"], t["name"]) for t in pol["status"]["targets"]] == [("Deployment", name)]
    wait_deployment(plane, ns, name, lambda d: init_names(d) == ["depgate-settings", "depgate-db"],
                    what="gated: depgate's init containers")
    wait_for(lambda: get(plane, ns, "rolebinding", f"depgate-verdict-{name}"), 20,
             what="the verdict waiter's RoleBinding, created by the operator")


def _no_refusals(log: str) -> None:
    for refused in ("(403)", "Forbidden", "Traceback"):
        assert refused not in log, log[-4000:]


def _local_webhook(plane: Plane) -> None:
    """The chart's webhook configurations point at the in-cluster Service, which no real pod serves
    here: the operator under test runs outside the cluster, and start_operator registers them anew,
    pointing at it."""
    plane.run_kubectl("delete", "validatingwebhookconfiguration,mutatingwebhookconfiguration", "depgate.io",
                      "--ignore-not-found")


def _release(helm: Helm, plane: Plane) -> dict[str, Any]:
    out = helm.run("list", "-n", SYSTEM_NS, "-o", "json", "--kubeconfig", plane.kubeconfig).stdout
    return next(r for r in json.loads(out) if r["name"] == RELEASE)


def test_helm_install_then_upgrade_and_the_operator_gates_under_the_charts_serviceaccount(
        helm, kubectl, helm_plane, tmp_path):
    plane = helm_plane
    # the release's namespace, with the labels of manifests/' Namespace (Pod Security `restricted`)
    ns_obj = next(o for o in kustomized(kubectl, MANIFESTS) if o["kind"] == "Namespace")
    plane.run_kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(ns_obj))
    kc = ["--kubeconfig", plane.kubeconfig]

    # install: --wait returns once the Deployment is available (kwok plays the kubelet)
    notes = helm.run("install", RELEASE, str(CHART), "-n", SYSTEM_NS, "--wait", "--timeout", "120s", *kc).stdout
    assert f"runs as Deployment {SYSTEM_NS}/depgate, serving every namespace." in notes, notes
    assert _release(helm, plane)["status"] == "deployed"
    wait_crd_served(plane.kubectl, plane.kubeconfig, "crd/dependencypolicies.depgate.io")
    wait_aggregated(plane)
    dep = get(plane, SYSTEM_NS, "deployment", "depgate") or {}
    assert dep["status"].get("readyReplicas") == REPLICAS  # both: the standby serves the webhooks too
    events = json.loads(plane.run_kubectl("get", "events", "-n", SYSTEM_NS, "-o", "json").stdout)["items"]
    assert [e["message"] for e in events if e.get("reason") == "FailedCreate"] == []
    # the PodDisruptionBudget selects the two pods (kube-controller-manager's disruption controller counts them)
    wait_for(lambda: ((get(plane, SYSTEM_NS, "poddisruptionbudget", "depgate") or {}).get("status") or {})
             .get("currentHealthy") == REPLICAS, 60, interval=0.5, what="the chart's PDB counting both pods")
    sa = f"--as=system:serviceaccount:{SYSTEM_NS}:depgate"
    for verb in ("create", "get", "update"):  # the leases, in the release's namespace only
        assert plane.run_kubectl("auth", "can-i", verb, "leases.coordination.k8s.io", "-n", SYSTEM_NS, sa,
                                 check=False).stdout.strip() == "yes", verb
        assert plane.run_kubectl("auth", "can-i", verb, "leases.coordination.k8s.io", "-n", "default", sa,
                                 check=False).stdout.strip() == "no", verb

    for ns in ("apps", "elsewhere"):
        plane.run_kubectl("create", "namespace", ns)
        plane.run_kubectl("wait", "--for=create", "serviceaccount/default", "-n", ns, "--timeout=60s")
        apply(plane, ns, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n")
        apply(plane, ns, "apiVersion: v1\nkind: Service\nmetadata: {name: db}\n"
                         "spec: {selector: {app: db}, ports: [{port: 5432}]}\n")
    token = str(operator_token_kubeconfig(plane, tmp_path))  # of depgate-system/depgate, made by the chart
    _local_webhook(plane)
    op = start_operator(token, tmp_path, admin=plane)
    try:
        _gated(plane, "elsewhere", "web")  # cluster-wide: any namespace
    finally:
        stop_operator(op)
    _no_refusals(op.log_text())

    _local_webhook(plane)  # the test's registration, not the chart's: helm recreates the chart's on upgrade
    # upgrade: serve only `apps` (RoleBinding there instead of the ClusterRoleBinding) with one more argument
    notes = helm.run("upgrade", RELEASE, str(CHART), "-n", SYSTEM_NS, "--wait", "--timeout", "120s",
                     "--set", "namespaces={apps}", "--set", "extraArgs={--resync-seconds=120}", *kc).stdout
    assert "serving the namespaces apps." in notes, notes
    release = _release(helm, plane)
    assert (release["status"], release["revision"]) == ("deployed", "2")
    assert plane.run_kubectl("get", "clusterrolebinding", "depgate-operator", check=False).returncode != 0
    assert get(plane, "apps", "rolebinding", "depgate-operator") is not None
    dep = get(plane, SYSTEM_NS, "deployment", "depgate") or {}
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["run", "--metrics-port=8080", "--health-port=8081", "--namespace=apps", "--resync-seconds=120"]
    # rolled (maxUnavailable 0: a new pod ready before an old one goes) to two ready replicas of the new template

    def rolled() -> bool:
        st = (get(plane, SYSTEM_NS, "deployment", "depgate") or {}).get("status") or {}
        return all(st.get(k) == REPLICAS for k in ("replicas", "updatedReplicas", "readyReplicas"))

    wait_for(rolled, 60, interval=0.5, what="the upgrade rolled out to two ready replicas")
    denied = plane.run_kubectl("auth", "can-i", "patch", "deployments", "-n", "elsewhere",
                               f"--as=system:serviceaccount:{SYSTEM_NS}:depgate", check=False)
    assert denied.stdout.strip() == "no"
    _local_webhook(plane)
    op = start_operator(token, tmp_path, "--namespace=apps", "--resync-seconds=120", admin=plane)
    try:
        _gated(plane, "apps", "app")
    finally:
        stop_operator(op)
    _no_refusals(op.log_text())

    # uninstall removes everything but the CRD (Helm never deletes what crds/ installed) and the policies
    # Not --wait: kube-controller-manager's aggregation controller may server-side-apply the rules of the
    # aggregated ClusterRole depgate-operator just after helm deleted it together with the roles it
    # aggregates, which re-creates it (no labels, no rules); helm --wait would wait on that name forever.
    helm.run("uninstall", RELEASE, "-n", SYSTEM_NS, *kc)
    for kind, name in (("clusterrole", "depgate-operator-core"), ("clusterrole", "depgate-edit"),
                       ("clusterrole", "depgate-verdict-reader"), ("clusterrole", "depgate-secret-reader"),
                       ("clusterrole", "depgate-template-creator"),
                       ("validatingadmissionpolicy", "depgate-operator-rolebindings"),
                       ("serviceaccount", "depgate"), ("deployment", "depgate"),
                       ("poddisruptionbudget", "depgate"), ("role", "depgate-operator-webhook")):
        wait_for(lambda kind=kind, name=name: "NotFound" in plane.run_kubectl("get", kind, name, "-n", SYSTEM_NS,
                                                                              check=False).stderr,
                 60, interval=0.5, what=f"{kind}/{name} uninstalled")
    left = plane.run_kubectl("get", "clusterrole", "depgate-operator", "-o", "json", check=False)
    if left.returncode == 0:  # only that leftover, holding nothing
        role = json.loads(left.stdout)
        assert not role.get("rules") and not role["metadata"].get("labels"), role
    assert plane.run_kubectl("get", "crd", "dependencypolicies.depgate.io", check=False).returncode == 0
