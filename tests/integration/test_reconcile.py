"""The operator against the real API server: Deployments carry one init container per precondition,
in order, and only depgate's own fields change."""

from __future__ import annotations

import json
import textwrap

from tests.conftest import wait_for
from tests.integration.kubehelp import (
    apply,
    condition,
    deployment,
    get,
    init_names,
    wait_deployment,
    wait_policy,
)

POLICY = """
apiVersion: depgate.io/v1alpha1
kind: DependencyPolicy
metadata: {{name: {name}}}
spec:
  {target}
  placement: {placement}
  preconditions:
  - name: redis-port
    tcp: {{host: data-tier, port: 6379}}
  - name: settings
    configMap: {{name: app-config, keys: [redis.conf]}}
  - name: await-redis
    command: {{fromContainer: server, command: [npm, run, await-redis]}}
"""


def policy(name: str, target: str, placement: str = "BeforeExisting") -> str:
    return POLICY.format(name=name, target=target, placement=placement)


def target_names(pol: dict) -> list[str]:
    """The names of the Deployments status.targets lists ({kind, name} entries), sorted."""
    return sorted(t["name"] for t in pol["status"].get("targets") or [] if t.get("kind") == "Deployment")


OURS = ["depgate-redis-port", "depgate-settings", "depgate-await-redis"]


def test_create_renders_init_containers_in_order_before_existing(plane, operator, namespace):
    apply(plane, namespace, deployment("app", init="[{name: own-init, image: busybox}]"))
    apply(plane, namespace, policy("app", "workloadRef: {name: app}"))
    dep = wait_deployment(plane, namespace, "app", lambda d: init_names(d) == [*OURS, "own-init"],
                          what="our init containers first")
    inits = dep["spec"]["template"]["spec"]["initContainers"]
    assert inits[0]["image"] == "depgate/depgate:test"
    assert inits[0]["command"] == ["depgate", "wait", "tcp"]
    assert "--host=data-tier" in inits[0]["args"] and "--port=6379" in inits[0]["args"]
    assert inits[1]["command"] == ["depgate", "wait", "verdict"]
    # the lesson's own init container: the app's image and env, another command
    assert inits[2]["image"] == "node:20"
    assert inits[2]["command"] == ["npm", "run", "await-redis"]
    assert {"name": "REDIS_URL", "value": "redis://data-tier:6379"} in inits[2]["env"]
    assert dep["metadata"]["annotations"]["depgate.io/policy"] == "app"
    assert "ownerReferences" not in dep["metadata"], "never an ownerReference on a user's Deployment"
    pol = wait_policy(plane, namespace, "app", lambda p: condition(p, "Applied").get("status") == "True",
                      what="Applied=True")
    assert [(t["kind"], t["name"]) for t in pol["status"]["targets"]] == [("Deployment", "app")]
    assert pol["status"]["targetSummary"] == "deploy/app"
    assert pol["status"]["observedGeneration"] == pol["metadata"]["generation"]
    # the verdict waiter's read access to the policies of its namespace: a RoleBinding of the shipped
    # ClusterRole, no Role of its own
    binding = get(plane, namespace, "rolebinding", "depgate-verdict-app")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "depgate-verdict-reader"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]
    assert get(plane, namespace, "role", "depgate-wait-app") is None


def test_after_existing_placement(plane, operator, namespace):
    apply(plane, namespace, deployment("app", init="[{name: own-init, image: busybox}]"))
    apply(plane, namespace, policy("app", "workloadRef: {name: app}", placement="AfterExisting"))
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == ["own-init", *OURS],
                    what="our init containers after the user's")


def test_update_removes_and_changes_only_ours(plane, operator, namespace):
    apply(plane, namespace, deployment("app", init="[{name: own-init, image: busybox}]"))
    apply(plane, namespace, policy("app", "workloadRef: {name: app}"))
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == [*OURS, "own-init"])
    apply(plane, namespace, """
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {name: app}
    spec:
      workloadRef: {name: app}
      preconditions:
      - name: redis-port
        tcp: {host: data-tier, port: 6380}
    """)
    dep = wait_deployment(plane, namespace, "app", lambda d: init_names(d) == ["depgate-redis-port", "own-init"],
                          what="removed preconditions gone")
    assert "--port=6380" in dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert dep["spec"]["template"]["spec"]["initContainers"][1] == {
        **dep["spec"]["template"]["spec"]["initContainers"][1], "name": "own-init", "image": "busybox"}


def test_delete_removes_everything_depgate_added(plane, operator, namespace):
    apply(plane, namespace, deployment("app", init="[{name: own-init, image: busybox}]"))
    apply(plane, namespace, policy("app", "workloadRef: {name: app}"))
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == [*OURS, "own-init"])
    wait_for(lambda: get(plane, namespace, "rolebinding", "depgate-verdict-app"), 20, what="the waiter's RoleBinding")
    plane.run_kubectl("delete", "-n", namespace, "dependencypolicy", "app", "--timeout=60s")
    dep = wait_deployment(plane, namespace, "app", lambda d: init_names(d) == ["own-init"],
                          what="our init containers removed")
    # the waiter's RoleBinding is owned by the policy: garbage-collected with it
    wait_for(lambda: get(plane, namespace, "rolebinding", "depgate-verdict-app") is None, 60, what="binding GC")
    assert "depgate.io/policy" not in (dep["metadata"].get("annotations") or {})
    assert get(plane, namespace, "dependencypolicy", "app") is None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "node:20"


def test_drift_is_restored(plane, operator, namespace):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("app", "workloadRef: {name: app}"))
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == OURS)
    plane.run_kubectl("patch", "-n", namespace, "deployment", "app", "--type=json",
                      "-p", '[{"op": "remove", "path": "/spec/template/spec/initContainers"}]')
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == OURS, timeout=30,
                    what="our init containers restored")


def _rolled_out(d) -> bool:
    st = d.get("status") or {}
    return (st.get("observedGeneration") == d["metadata"]["generation"]
            and st.get("updatedReplicas") == st.get("replicas") == st.get("readyReplicas") == d["spec"]["replicas"])


def test_no_write_without_a_real_change(plane, operator, namespace, needs_pods):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("app", "workloadRef: {name: app}"))
    wait_policy(plane, namespace, "app", lambda p: condition(p, "Applied").get("status") == "True")
    # let the rollout our apply started settle, and the status catch up with it
    wait_deployment(plane, namespace, "app", _rolled_out, what="rolled out")
    wait_policy(plane, namespace, "app", lambda p: (p["status"].get("pods") or {}) == {
        "total": 1, "initializing": 0, "ready": 1}, what="status shows the one ready pod")
    before_dep = get(plane, namespace, "deployment", "app")
    before_pol = get(plane, namespace, "dependencypolicy", "app")
    reconciles = operator.counter("depgate_reconciles_total")
    # An event on the target wakes the policy: the reconcile must find nothing to write.
    plane.run_kubectl("label", "-n", namespace, "deployment", "app", "touched=yes")
    wait_for(lambda: operator.counter("depgate_reconciles_total") > reconciles, 15, what="a reconcile")
    after_dep = get(plane, namespace, "deployment", "app")
    after_pol = get(plane, namespace, "dependencypolicy", "app")
    assert after_dep["metadata"]["generation"] == before_dep["metadata"]["generation"]
    assert after_dep["spec"] == before_dep["spec"]
    assert after_pol["metadata"]["resourceVersion"] == before_pol["metadata"]["resourceVersion"]


def test_second_policy_reports_conflict_and_never_fights(plane, operator, namespace):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("first", "workloadRef: {name: app}"))
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == OURS)
    apply(plane, namespace, """
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {name: second}
    spec:
      workloadRef: {name: app}
      preconditions:
      - name: other
        dns: {name: example.internal}
    """)
    pol = wait_policy(plane, namespace, "second", lambda p: condition(p, "Applied").get("reason") == "Conflict",
                      what="Conflict")
    assert "first" in condition(pol, "Applied")["message"]
    assert condition(pol, "Stalled").get("status") == "True"
    dep = get(plane, namespace, "deployment", "app")
    assert init_names(dep) == OURS
    assert dep["metadata"]["annotations"]["depgate.io/policy"] == "first"


def test_missing_target_is_applied_as_soon_as_it_appears(plane, operator, namespace):
    apply(plane, namespace, policy("app", "workloadRef: {name: app}"))
    pol = wait_policy(plane, namespace, "app", lambda p: condition(p, "Applied").get("reason") == "TargetNotFound",
                      what="TargetNotFound")
    assert condition(pol, "Applied")["status"] == "False"
    apply(plane, namespace, deployment("app"))
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == OURS, what="applied once created")
    wait_policy(plane, namespace, "app", lambda p: condition(p, "Applied").get("status") == "True")


def test_from_container_missing_is_reported_and_nothing_applied(plane, operator, namespace):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, """
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {name: app}
    spec:
      workloadRef: {name: app}
      preconditions:
      - name: await-redis
        command: {fromContainer: nope, command: [npm, run, await-redis]}
    """)
    pol = wait_policy(plane, namespace, "app", lambda p: condition(p, "Applied").get("status") == "False",
                      what="Applied=False")
    assert "nope" in condition(pol, "Applied")["message"]
    assert "fromContainer" in condition(pol, "Applied")["message"]
    assert init_names(get(plane, namespace, "deployment", "app")) == []


def test_selector_gates_every_matching_deployment(plane, operator, namespace):
    apply(plane, namespace, deployment("a", labels=", tier: app"))
    apply(plane, namespace, deployment("b", labels=", tier: app"))
    apply(plane, namespace, deployment("c", labels=", tier: data"))
    apply(plane, namespace, policy("tier", "selector: {matchLabels: {tier: app}}"))
    for name in ("a", "b"):
        wait_deployment(plane, namespace, name, lambda d: init_names(d) == OURS)
    pol = wait_policy(plane, namespace, "tier", lambda p: target_names(p) == ["a", "b"])
    assert init_names(get(plane, namespace, "deployment", "c")) == []
    assert condition(pol, "Applied")["status"] == "True"
    # a Deployment that stops matching is released
    plane.run_kubectl("label", "-n", namespace, "deployment", "b", "tier=other", "--overwrite")
    wait_deployment(plane, namespace, "b", lambda d: init_names(d) == [], what="released when no longer selected")


def test_selector_releases_a_deployment_it_gated_but_never_recorded(plane, operator, namespace):
    """An operator killed between gating a Deployment and writing status.targets leaves a Deployment that
    carries depgate's init containers and its claim, unselected meanwhile, named nowhere in the status.
    The policy's next reconcile finds the claim in the namespace's list and releases it."""
    # created, not `kubectl apply`-ed: a later `kubectl apply --server-side` would migrate the client-side
    # apply's fields (selector, containers) to its field manager, depgate, whose release then drops them
    plane.run_kubectl("create", "-n", namespace, "-f", "-",
                      input=textwrap.dedent(deployment("left", labels=", tier: other")))
    # what a depgate that died before its status write leaves behind (depgate's own field manager)
    plane.run_kubectl("apply", "--server-side", "--field-manager=depgate", "-n", namespace, "-f", "-", input="""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: left
  annotations: {depgate.io/policy: tier}
spec:
  template:
    spec:
      initContainers:
      - {name: depgate-redis-port, image: depgate/depgate:test, command: [depgate, wait, tcp]}
""")
    assert init_names(get(plane, namespace, "deployment", "left"))[0] == "depgate-redis-port"
    apply(plane, namespace, deployment("a", labels=", tier: app"))
    apply(plane, namespace, policy("tier", "selector: {matchLabels: {tier: app}}"))
    wait_policy(plane, namespace, "tier", lambda p: target_names(p) == ["a"])
    dep = wait_deployment(plane, namespace, "left", lambda d: "depgate-redis-port" not in init_names(d),
                          what="released although status.targets never named it")
    assert "depgate.io/policy" not in (dep["metadata"].get("annotations") or {})
    assert init_names(get(plane, namespace, "deployment", "a")) == OURS


TEMPLATE = """
apiVersion: depgate.io/v1alpha1
kind: DependencyPolicy
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      replicas: 1
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers: [{name: server, image: nginx}]
  preconditions:
  - name: api
    http: {url: "http://api:8080/healthz", expectStatus: [200, 204]}
"""


def _enable_templates(plane, namespace: str) -> None:
    """What a namespace admin runs to let depgate create template-mode Deployments there."""
    plane.run_kubectl("create", "rolebinding", "depgate-template-creator", "-n", namespace,
                      "--clusterrole=depgate-template-creator", "--serviceaccount=depgate-system:depgate")


def test_template_mode_where_it_is_not_enabled_says_which_rolebinding_enables_it(plane, operator, namespace):
    apply(plane, namespace, TEMPLATE)
    pol = wait_policy(plane, namespace, "web", lambda p: condition(p, "Stalled").get("reason") == "Forbidden",
                      what="Stalled Forbidden")
    msg = condition(pol, "Stalled")["message"]
    assert (f"kubectl create rolebinding depgate-template-creator -n {namespace} "
            "--clusterrole=depgate-template-creator --serviceaccount=depgate-system:depgate") in msg, msg
    assert get(plane, namespace, "deployment", "web") is None
    _enable_templates(plane, namespace)
    wait_deployment(plane, namespace, "web", lambda d: init_names(d) == ["depgate-api"], timeout=90,
                    what="created once enabled (the next retry)")


def test_template_mode_creates_owns_and_garbage_collects(plane, operator, namespace, needs_pods):
    _enable_templates(plane, namespace)
    apply(plane, namespace, TEMPLATE)
    dep = wait_deployment(plane, namespace, "web", lambda d: init_names(d) == ["depgate-api"])
    owners = dep["metadata"]["ownerReferences"]
    pol = get(plane, namespace, "dependencypolicy", "web")
    assert owners[0]["kind"] == "DependencyPolicy" and owners[0]["uid"] == pol["metadata"]["uid"]
    args = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert "--expect-status=200" in args and "--expect-status=204" in args
    plane.run_kubectl("delete", "-n", namespace, "dependencypolicy", "web", "--timeout=60s")
    wait_for(lambda: get(plane, namespace, "deployment", "web") is None, 60,
             what="the template Deployment garbage-collected")


def test_template_mode_never_takes_over_a_deployment_it_did_not_create(plane, operator, namespace):
    apply(plane, namespace, deployment("web"))
    before = get(plane, namespace, "deployment", "web")
    apply(plane, namespace, """
    apiVersion: depgate.io/v1alpha1
    kind: DependencyPolicy
    metadata: {name: web}
    spec:
      template:
        metadata: {labels: {app: web}}
        spec:
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              containers: [{name: server, image: nginx}]
      preconditions:
      - name: api
        http: {url: "http://api:8080/healthz"}
    """)
    pol = wait_policy(plane, namespace, "web", lambda p: condition(p, "Stalled").get("status") == "True",
                      what="Stalled")
    assert condition(pol, "Stalled")["reason"] == "Conflict"
    assert condition(pol, "Applied")["status"] == "False" and condition(pol, "Applied")["reason"] == "Conflict"
    assert "not owned by this policy" in condition(pol, "Stalled")["message"]
    after = get(plane, namespace, "deployment", "web")
    assert after["spec"] == before["spec"] and init_names(after) == []
    assert "depgate.io/policy" not in (after["metadata"].get("annotations") or {})


def test_other_field_managers_keep_their_fields_and_ours(plane, operator, namespace):
    apply(plane, namespace, deployment("app", init="[{name: own-init, image: busybox}]"), "--server-side",
          "--field-manager=gitops")
    apply(plane, namespace, policy("app", "workloadRef: {name: app}"))
    wait_deployment(plane, namespace, "app", lambda d: init_names(d) == [*OURS, "own-init"])
    # the GitOps tool re-applies its manifest (server-side, its own manager), with a change of its own
    apply(plane, namespace, deployment("app", init="[{name: own-init, image: busybox:1.36}]", replicas=2),
          "--server-side", "--field-manager=gitops")
    dep = get(plane, namespace, "deployment", "app")
    assert init_names(dep) == [*OURS, "own-init"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["initContainers"][-1]["image"] == "busybox:1.36"
    full = json.loads(plane.run_kubectl("get", "-n", namespace, "deployment", "app", "-o", "json",
                                        "--show-managed-fields").stdout)
    managers = {m["manager"] for m in full["metadata"]["managedFields"]}
    assert {"gitops", "depgate"} <= managers

    # and client-side `kubectl apply` (last-applied-configuration) keeps them too
    apply(plane, namespace, deployment("cs", init="[{name: own-init, image: busybox}]"))
    apply(plane, namespace, policy("cs", "workloadRef: {name: cs}"))
    wait_deployment(plane, namespace, "cs", lambda d: init_names(d) == [*OURS, "own-init"])
    apply(plane, namespace, deployment("cs", init="[{name: own-init, image: busybox:1.36}]", replicas=3))
    dep = get(plane, namespace, "deployment", "cs")
    assert dep["spec"]["replicas"] == 3
    assert init_names(dep) == [*OURS, "own-init"]
    last = json.loads(dep["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert [c["name"] for c in last["spec"]["template"]["spec"]["initContainers"]] == ["own-init"]
    # nothing flaps afterwards: the generation settles
    gen = dep["metadata"]["generation"]
    wait_policy(plane, namespace, "cs", lambda p: condition(p, "Applied").get("status") == "True")
    assert get(plane, namespace, "deployment", "cs")["metadata"]["generation"] == gen


def test_a_workloadref_wins_over_a_broad_selector_that_claimed_first_and_both_statuses_say_so(
        plane, operator, namespace):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, deployment("other"))
    # a selector that matches every Deployment here claims both first
    apply(plane, namespace, policy("broad", "selector: {matchExpressions: [{key: app, operator: Exists}]}"))
    wait_policy(plane, namespace, "broad", lambda p: target_names(p) == ["app", "other"],
                what="broad gates both")
    apply(plane, namespace, policy("mine", "workloadRef: {name: app}"))
    mine = wait_policy(plane, namespace, "mine", lambda p: condition(p, "Applied").get("status") == "True",
                       what="mine takes app over")
    assert "the selector of DependencyPolicy broad also matches deployment app" in condition(mine, "Applied")["message"]
    assert condition(mine, "Stalled").get("status") != "True"
    dep = get(plane, namespace, "deployment", "app")
    assert dep["metadata"]["annotations"]["depgate.io/policy"] == "mine" and init_names(dep) == OURS
    broad = wait_policy(plane, namespace, "broad", lambda p: target_names(p) == ["other"],
                        what="broad leaves app")
    assert condition(broad, "Applied")["status"] == "True"
    assert "deployment app is left to DependencyPolicy mine" in condition(broad, "Applied")["message"]
    assert condition(broad, "Stalled").get("status") != "True"
    assert get(plane, namespace, "deployment", "other")["metadata"]["annotations"]["depgate.io/policy"] == "broad"
    # and it stays that way: app keeps mine's init containers on the next reconciles of both
    plane.run_kubectl("annotate", "-n", namespace, "dependencypolicy", "broad", "poke=1")
    wait_policy(plane, namespace, "broad", lambda p: "left to DependencyPolicy mine" in
                condition(p, "Applied").get("message", ""))
    assert get(plane, namespace, "deployment", "app")["metadata"]["annotations"]["depgate.io/policy"] == "mine"


def test_among_equals_the_first_claim_wins(plane, operator, namespace):
    apply(plane, namespace, deployment("app"))
    apply(plane, namespace, policy("first", "workloadRef: {name: app}"))
    wait_policy(plane, namespace, "first", lambda p: condition(p, "Applied").get("status") == "True")
    apply(plane, namespace, policy("second", "workloadRef: {name: app}"))
    second = wait_policy(plane, namespace, "second", lambda p: condition(p, "Stalled").get("reason") == "Conflict")
    assert "already gated by DependencyPolicy first" in condition(second, "Stalled")["message"]
    assert get(plane, namespace, "deployment", "app")["metadata"]["annotations"]["depgate.io/policy"] == "first"


def test_policies_in_protected_namespaces_change_nothing_and_say_why(plane, operator):
    """The operator's own namespace (depgate-system: it could gate its own Deployment on a verdict only
    it writes) and kube-system, by default."""
    import uuid

    name = f"gate-{uuid.uuid4().hex[:6]}"
    try:
        for ns in ("depgate-system", "kube-system"):
            apply(plane, ns, deployment(name, replicas=0))  # no pods: depgate-system enforces `restricted`
            before = get(plane, ns, "deployment", name)
            apply(plane, ns, policy(name, f"workloadRef: {{name: {name}}}"))
            pol = wait_policy(plane, ns, name, lambda p: condition(p, "Stalled").get("reason") == "ProtectedNamespace",
                              what="Stalled ProtectedNamespace")
            msg = condition(pol, "Stalled")["message"]
            assert f"namespace {ns} is protected" in msg and "depgate-system, kube-system" in msg, msg
            assert condition(pol, "Applied")["status"] == "False"
            after = get(plane, ns, "deployment", name)
            # Not the resourceVersion: kube-controller-manager writes the new Deployment's status meanwhile.
            assert after["metadata"]["generation"] == before["metadata"]["generation"]
            assert after["spec"] == before["spec"]
            assert not [m for m in after["metadata"].get("managedFields") or [] if m.get("manager") == "depgate"]
            assert init_names(after) == [] and "depgate.io/policy" not in (after["metadata"].get("annotations") or {})
            assert get(plane, ns, "rolebinding", f"depgate-verdict-{name}") is None
    finally:
        for ns in ("depgate-system", "kube-system"):
            plane.run_kubectl("delete", "-n", ns, "dependencypolicy", name, "--ignore-not-found", "--timeout=60s",
                              check=False)
            plane.run_kubectl("delete", "-n", ns, "deployment", name, "--ignore-not-found", check=False)
