"""Gated from the first pod (issue 15): a workload that a policy targets gets depgate's init containers
at admission, through the real kube-apiserver admission chain (the MutatingWebhookConfiguration's
webhook workloads.depgate.io points at the operator on loopback). Pods come from kube-controller-
manager and kwok. Every pod of the namespace is watched from before the apply: none may ever exist
without depgate's init containers. With the operator down or hung, workloads are admitted as they are,
within the webhook's timeout."""

from __future__ import annotations

import json
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils

from depgate import plan, render, spec, webhook
from depgate.constants import APPLIED_HASH_ANNOTATION, POLICY_ANNOTATION
from tests.conftest import PROBE_POLICY, Plane, start_operator, stop_operator, wait_for
from tests.integration.kubehelp import PodWatch, condition, get, restored_webhooks, wait_policy  # noqa: F401 (a fixture)

TCP = "- name: db\n  tcp: {host: db, port: 5432}"
WAITER_IMAGE = "depgate/depgate:test"  # start_operator's --waiter-image
DNS = "- name: resolve\n  dns: {name: db}"


def policy(name: str, kind: str, target: str, preconditions: str = TCP) -> str:
    body = textwrap.indent(preconditions, "    ")
    return f"""apiVersion: depgate.io/v1alpha1
kind: DependencyPolicy
metadata: {{name: {name}}}
spec:
  workloadRef: {{kind: {kind}, name: {target}}}
  preconditions:
{body}
"""


POD = """    metadata: {{labels: {{app: {name}}}}}
    spec:
      {restart}
      containers:
      - name: server
        image: node:20
"""


def workload(kind: str, name: str, replicas: int = 1) -> str:
    api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    head = f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n"
    template = POD.format(name=name, restart="restartPolicy: Never" if kind in ("Job", "CronJob") else "")
    if kind == "Job":
        return head + "  template:\n" + template
    if kind == "CronJob":
        return (head + "  schedule: '*/5 * * * *'\n  jobTemplate:\n    spec:\n      template:\n"
                + textwrap.indent(template, "    "))
    extra = f"  serviceName: {name}\n" if kind == "StatefulSet" else ""
    count = "" if kind == "DaemonSet" else f"  replicas: {replicas}\n"
    selector = f"  selector: {{matchLabels: {{app: {name}}}}}\n"
    return head + f"{count}{extra}{selector}  template:\n" + template


def apply_file(plane: Plane, ns: str, *docs: str) -> subprocess.CompletedProcess[str]:
    """One `kubectl apply -f` of a multi-document file, in the order given."""
    return plane.run_kubectl("apply", "-n", ns, "-f", "-", input="---\n".join(docs))


def inits(template_spec: dict[str, Any] | None) -> list[str]:
    return [c["name"] for c in (template_spec or {}).get("initContainers") or []]


@pytest.fixture
def core(api_client) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def pod_watch(core, namespace) -> Iterator[PodWatch]:
    w = PodWatch(core, namespace)
    yield w
    w.stop()


def assert_every_pod_gated(w: PodWatch, want: list[str], at_least: int) -> None:
    """Every version of every pod the watch saw carried depgate's init containers first, from its
    ADDED event on; and the watch saw at least `at_least` pods."""
    wait_for(lambda: len(w.pods()) >= at_least, 60, what=f"{at_least} pod(s) created by the controllers")
    seen = list(w.seen)
    ungated = [(s.type, s.name, s.inits) for s in seen if list(s.inits[: len(want)]) != want]
    assert not ungated, f"pods existed without depgate's init containers {want}: {ungated}"
    assert any(s.type == "ADDED" for s in seen)


def applied(plane: Plane, ns: str, name: str) -> dict[str, Any]:
    """The policy once a reconcile has applied it (or found it applied) to a target."""
    try:
        return wait_policy(plane, ns, name, lambda p: condition(p, "Applied").get("status") == "True"
                           and bool(p["status"].get("targets")), timeout=60, what="Applied, with its target")
    except AssertionError as e:  # say what the policy says instead
        status = (get(plane, ns, "dependencypolicy", name) or {}).get("status")
        raise AssertionError(f"{e}; its status: {json.dumps(status)}") from None


def policy_then_workload(plane: Plane, ns: str, pol: str, work: str) -> None:
    """The policy, then (once it has been reconciled, so that the workload's event wakes it: see the
    DaemonSet and CronJob test) the workload, each in its own apply."""
    name = yaml.safe_load(pol)["metadata"]["name"]
    apply_file(plane, ns, pol)
    wait_policy(plane, ns, name, lambda p: bool(p["status"].get("conditions")), timeout=60, what="reconciled once")
    apply_file(plane, ns, work)


def with_fields(plane: Plane, ns: str, kind: str, name: str) -> dict[str, Any]:
    """The object with its managedFields (kubectl hides them unless asked)."""
    return json.loads(plane.run_kubectl("get", "-n", ns, kind, name, "-o", "json", "--show-managed-fields").stdout)


def entry_of(obj: dict[str, Any], manager: str, operation: str = "Apply") -> dict[str, Any] | None:
    return next((m for m in obj["metadata"].get("managedFields") or []
                 if m.get("manager") == manager and m.get("operation") == operation), None)


def the_api_servers_fields(plane: Plane, ns: str, pol: str, twin: str) -> dict[str, Any]:
    """What the API server records for depgate's own server-side apply of the policy's apply body (a
    dry run on `twin`, a copy of the workload that no policy names)."""
    body = render.apply_body(spec.parse_policy(get(plane, ns, "dependencypolicy", pol)),
                             get(plane, ns, "deployment", twin), render.RenderConfig(waiter_image=WAITER_IMAGE))
    body["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = plan.body_hash(body)
    out = plane.run_kubectl("apply", "-n", ns, "--server-side", "--field-manager=depgate", "--dry-run=server",
                            "--show-managed-fields", "-o", "json", "-f", "-", input=json.dumps(body))
    entry = entry_of(json.loads(out.stdout), "depgate")
    assert entry is not None
    return dict(entry["fieldsV1"])


# --------------------------------------------------------------------------- policy first, one apply


def test_policy_and_deployment_in_one_apply_every_pod_is_gated_and_the_reconcile_writes_nothing(
        plane, api_client, operator, namespace, needs_pods, pod_watch):
    ns = namespace
    apply_file(plane, ns, policy("app", "Deployment", "app", TCP + "\n" + DNS), workload("Deployment", "app", 2))
    dep = get(plane, ns, "deployment", "app")
    assert inits(dep["spec"]["template"]["spec"]) == ["depgate-db", "depgate-resolve"]  # as created
    ann = dep["metadata"]["annotations"]
    assert ann[POLICY_ANNOTATION] == "app" and ann[APPLIED_HASH_ANNOTATION]
    assert_every_pod_gated(pod_watch, ["depgate-db", "depgate-resolve"], at_least=2)
    # the first (and only) ReplicaSet has them
    apps = client.AppsV1Api(api_client)
    rss = apps.list_namespaced_replica_set(ns).items
    assert len(rss) == 1, [r.metadata.name for r in rss]
    assert [c.name for c in rss[0].spec.template.spec.init_containers] == ["depgate-db", "depgate-resolve"]
    # depgate owns what it added, exactly as its own server-side apply would have left it
    ours = entry_of(with_fields(plane, ns, "deployment", "app"), "depgate")
    assert ours is not None
    apply_file(plane, ns, workload("Deployment", "twin", 0))
    assert ours["fieldsV1"] == the_api_servers_fields(plane, ns, "app", "twin")
    # the reconcile then finds it up to date: no change to the pod template (generation 1, one ReplicaSet)
    applied(plane, ns, "app")
    dep = with_fields(plane, ns, "deployment", "app")
    assert dep["metadata"]["generation"] == 1
    assert entry_of(dep, "depgate") == ours
    assert len(apps.list_namespaced_replica_set(ns, label_selector="app=app").items) == 1
    rendered = 'depgate_workload_admission_seconds_count{kind="Deployment",outcome="rendered"}'
    assert operator.metrics().get(rendered, 0) >= 1


def test_a_statefulset_created_after_its_policy_has_only_gated_pods_and_one_revision(
        plane, operator, namespace, needs_pods, pod_watch):
    ns = namespace
    apply_file(plane, ns, policy("db", "StatefulSet", "db"), workload("StatefulSet", "db", 2))
    assert_every_pod_gated(pod_watch, ["depgate-db"], at_least=2)
    applied(plane, ns, "db")
    sts = with_fields(plane, ns, "statefulset", "db")
    assert sts["metadata"]["generation"] == 1
    assert entry_of(sts, "depgate") is not None
    revisions = json.loads(plane.run_kubectl("get", "controllerrevisions", "-n", ns, "-o", "json").stdout)["items"]
    assert len(revisions) == 1, [r["metadata"]["name"] for r in revisions]


def test_a_daemonset_and_a_cronjob_applied_with_their_policies_are_rendered_as_created(
        plane, operator, namespace, needs_pods, pod_watch):
    ns = namespace
    apply_file(plane, ns, policy("agent", "DaemonSet", "agent"), workload("DaemonSet", "agent"),
               policy("nightly", "CronJob", "nightly"), workload("CronJob", "nightly"))
    cron = get(plane, ns, "cronjob", "nightly")
    assert inits(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]) == ["depgate-db"]  # its Jobs copy it
    assert_every_pod_gated(pod_watch, ["depgate-db"], at_least=1)  # the DaemonSet's pod on the kwok node
    for kind, name in (("daemonset", "agent"), ("cronjob", "nightly")):
        obj = with_fields(plane, ns, kind, name)
        assert entry_of(obj, "depgate") is not None, kind  # owned as if depgate had applied it
    # The reconcile then finds the DaemonSet up to date. (The CronJob's policy is not waited for here: its
    # first reconcile can read before the CronJob exists, and a CronJob sends no later event to wake it
    # before the resync: the wiring's, reported to the lead.)
    applied(plane, ns, "agent")
    assert with_fields(plane, ns, "daemonset", "agent")["metadata"]["generation"] == 1


def test_a_replace_with_the_original_file_keeps_the_rendering_and_rolls_nothing(plane, api_client, operator,
                                                                                 namespace):
    """`kubectl replace -f app.yaml` (the file never had depgate's init containers) is an UPDATE that
    drops them: the webhook renders them back in the same request, so the pod template is unchanged."""
    ns = namespace
    policy_then_workload(plane, ns, policy("app", "Deployment", "app"), workload("Deployment", "app", 0))
    applied(plane, ns, "app")
    before = get(plane, ns, "deployment", "app")
    plane.run_kubectl("replace", "-n", ns, "-f", "-", input=workload("Deployment", "app", 0))
    dep = with_fields(plane, ns, "deployment", "app")
    assert inits(dep["spec"]["template"]["spec"]) == ["depgate-db"]
    # nothing of the pod template changed: no rollout (the generation moves: the replace drops the
    # Deployment's own annotations, which the API server counts as a change of the Deployment)
    assert dep["spec"]["template"] == before["spec"]["template"]
    assert entry_of(dep, "depgate") is not None  # and depgate owns its entries again
    rss = client.AppsV1Api(api_client).list_namespaced_replica_set(ns, label_selector="app=app").items
    assert len(rss) == 1


def test_a_job_created_after_its_policy_runs_only_gated_pods(plane, operator, namespace, needs_pods, pod_watch):
    ns = namespace
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("migrate", "Job", "migrate"))
    wait_policy(plane, ns, "migrate", lambda p: bool(p["status"].get("conditions")), timeout=60,
                what="reconciled once (the webhook's index has it)")
    plane.run_kubectl("create", "-n", ns, "-f", "-", input=workload("Job", "migrate"))
    job = get(plane, ns, "job", "migrate")
    assert inits(job["spec"]["template"]["spec"]) == ["depgate-db"]
    assert job["metadata"]["annotations"][POLICY_ANNOTATION] == "migrate"
    assert_every_pod_gated(pod_watch, ["depgate-db"], at_least=1)


def test_jobs_of_a_generated_name_that_a_selector_names_are_rendered_and_said_gated(plane, operator, namespace):
    """A Job has no name at admission when it is created with generateName (a migration Job per
    release): the selector policy's kinds name Jobs, the Jobs are rendered, and the policy's status
    counts them gated, not "created without depgate's init containers"."""
    ns = namespace
    sel = ("apiVersion: depgate.io/v1alpha1\nkind: DependencyPolicy\nmetadata: {name: migrations}\nspec:\n"
           "  selector: {matchLabels: {app: migrate}, kinds: [Job]}\n  preconditions:\n" + textwrap.indent(TCP, "  "))
    apply_file(plane, ns, sel)
    wait_policy(plane, ns, "migrations", lambda p: bool(p["status"].get("conditions")), timeout=60,
                what="reconciled once")
    manifest = yaml.safe_load(workload("Job", "migrate"))
    manifest["metadata"] = {"generateName": "migrate-", "labels": {"app": "migrate"}}
    names = [plane.run_kubectl("create", "-n", ns, "-o", "name", "-f", "-", input=json.dumps(manifest)).stdout.strip()
             for _ in range(2)]
    for name in names:
        job = get(plane, ns, "job", name.split("/", 1)[1])
        assert inits(job["spec"]["template"]["spec"]) == ["depgate-db"], name
        assert job["metadata"]["annotations"][POLICY_ANNOTATION] == "migrations"

    def both_counted() -> dict[str, Any] | None:
        p = get(plane, ns, "dependencypolicy", "migrations") or {}
        targets = [t for t in (p.get("status") or {}).get("targets") or [] if isinstance(t, dict)]
        return p if sorted(f"job.batch/{t.get('name')}" for t in targets) == sorted(names) else None

    pol = wait_for(both_counted, 60, interval=0.2, what="both Jobs among the policy's targets")
    notes = [t.get("note") or "" for t in pol["status"]["targets"]]
    assert not any("without depgate's init containers" in n for n in notes), notes
    assert condition(pol, "Applied").get("status") == "True", condition(pol, "Applied")


def test_a_deployment_rendered_at_admission_is_released_whole_when_its_policy_goes(plane, operator, namespace):
    """What the webhook added is depgate's (managedFields): the release takes all of it back out, the
    annotations included, and leaves the user's fields."""
    ns = namespace
    policy_then_workload(plane, ns, policy("app", "Deployment", "app"), workload("Deployment", "app", 0))
    assert inits(get(plane, ns, "deployment", "app")["spec"]["template"]["spec"]) == ["depgate-db"]
    applied(plane, ns, "app")
    plane.run_kubectl("delete", "-n", ns, "dependencypolicy", "app", "--wait=false")

    def released() -> dict[str, Any] | None:
        dep = get(plane, ns, "deployment", "app")
        ann = dep["metadata"].get("annotations") or {}
        ours = {POLICY_ANNOTATION, APPLIED_HASH_ANNOTATION} & set(ann)
        return dep if not inits(dep["spec"]["template"]["spec"]) and not ours else None

    dep = wait_for(released, 60, what="the Deployment released: no depgate-* init container, no depgate.io annotation")
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["server"]
    assert entry_of(with_fields(plane, ns, "deployment", "app"), "depgate") is None


def test_a_workload_no_policy_names_is_admitted_untouched_and_a_render_error_only_warns(plane, operator, namespace):
    ns = namespace
    apply_file(plane, ns, policy("other", "Deployment", "other"))
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=workload("Deployment", "free"))
    free = get(plane, ns, "deployment", "free")
    assert inits(free["spec"]["template"]["spec"]) == []
    assert POLICY_ANNOTATION not in (free["metadata"].get("annotations") or {})
    typo = "- name: wait\n  command: {fromContainer: serverr, command: [npm, run, wait]}"
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("typo", "Deployment", "typo", typo))
    wait_policy(plane, ns, "typo", lambda p: bool(p["status"].get("conditions")), timeout=60, what="reconciled once")
    out = plane.run_kubectl("apply", "-n", ns, "-f", "-", input=workload("Deployment", "typo"))
    assert "spec.preconditions[0].command.fromContainer" in out.stderr, out.stderr
    assert "admitted unchanged" in out.stderr, out.stderr
    assert inits(get(plane, ns, "deployment", "typo")["spec"]["template"]["spec"]) == []


# --------------------------------------------------------------------------- the operator down or hung


def _mutating(plane: Plane) -> dict[str, Any]:
    return json.loads(plane.run_kubectl("get", "mutatingwebhookconfiguration", "depgate.io", "-o", "json").stdout)


def _point_workloads_at(plane: Plane, url: str | None, config: dict[str, Any] | None = None) -> None:
    """The workloads webhook's clientConfig (as an admin): at `url`, or back to `config`."""
    live = _mutating(plane)
    i = next(i for i, w in enumerate(live["webhooks"]) if w["name"] == f"{webhook.WORKLOADS_PATH}.depgate.io")
    value = config if config is not None else {**live["webhooks"][i]["clientConfig"], "url": url}
    patch = [{"op": "replace", "path": f"/webhooks/{i}/clientConfig", "value": value}]
    plane.run_kubectl("patch", "mutatingwebhookconfiguration", "depgate.io", "--type=json", "-p", json.dumps(patch))


def _timed_create(api: client.ApiClient, ns: str, manifest: str) -> float:
    """Seconds one create request takes (the API client's, not a kubectl process's start-up)."""
    body = yaml.safe_load(manifest)
    started = time.monotonic()
    utils.create_from_dict(api, body, namespace=ns)
    return time.monotonic() - started


def _no_webhook_answers(plane: Plane) -> bool:
    """The API server calls the stopped operator now: a policy's dry run fails calling its webhook
    (the same configuration holds the workloads' webhook)."""
    out = plane.run_kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(PROBE_POLICY), check=False)
    return out.returncode != 0 and "failed calling webhook" in out.stderr


@pytest.mark.usefixtures("restored_webhooks")
def test_with_the_operator_stopped_workloads_are_admitted_promptly_and_a_job_runs_ungated(
        plane, api_client, operator, operator_kubeconfig, namespace, tmp_path: Path):
    ns = namespace
    plane.run_kubectl("apply", "-n", ns, "-f", "-", input=policy("migrate", "Job", "migrate"))
    # An operator of this test's own points the webhooks at itself; then it stops: nothing answers.
    mine = start_operator(operator_kubeconfig, tmp_path, admin=plane)
    stop_operator(mine)
    assert f"{webhook.WORKLOADS_PATH}.depgate.io" in [w["name"] for w in _mutating(plane)["webhooks"]]
    wait_for(lambda: _no_webhook_answers(plane), 30, interval=0.2, what="the API server calling the stopped operator")
    elapsed = _timed_create(api_client, ns, workload("Deployment", "free"))
    assert elapsed < webhook.WORKLOADS_TIMEOUT_SECONDS, f"{elapsed:.2f}s for a refused connection"
    _timed_create(api_client, ns, workload("Job", "migrate"))
    job = get(plane, ns, "job", "migrate")
    # admitted ungated, and recognisably so: neither depgate's claim nor its applied hash
    assert inits(job["spec"]["template"]["spec"]) == []
    assert not {POLICY_ANNOTATION, APPLIED_HASH_ANNOTATION} & set(job["metadata"].get("annotations") or {})


@pytest.mark.usefixtures("restored_webhooks")
def test_with_the_operator_hung_a_workload_waits_at_most_the_webhooks_timeout(plane, api_client, operator, namespace):
    """A listener that accepts and never answers: the API server gives up after timeoutSeconds and
    admits the workload (failurePolicy Ignore)."""
    ns = namespace
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        _point_workloads_at(plane, f"https://127.0.0.1:{hung.getsockname()[1]}/{webhook.WORKLOADS_PATH}")
        # the API server reads its webhook configurations from a watch: wait until it calls the hung one
        wait_for(lambda: _timed_create(api_client, ns, workload("Deployment", f"probe-{time.monotonic_ns()}"))
                 > webhook.WORKLOADS_TIMEOUT_SECONDS * 0.9, 30, interval=0.1, what="the API server using the hung URL")
        elapsed = _timed_create(api_client, ns, workload("Deployment", "free"))
    assert webhook.WORKLOADS_TIMEOUT_SECONDS * 0.9 < elapsed < webhook.WORKLOADS_TIMEOUT_SECONDS + 3, elapsed
    assert inits(get(plane, ns, "deployment", "free")["spec"]["template"]["spec"]) == []
