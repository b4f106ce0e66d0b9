"""depgate.render and `depgate render`: golden files, the apply body, placement under server-side
apply, operator-judged errors, the CLI, the examples, and properties (hypothesis).

Golden files: tests/golden/<case>/{policy.yaml, deployment.yaml, expected.yaml}. expected.yaml is
the spec: `UPDATE_GOLDEN=1 pytest tests/unit/test_render.py` rewrites them, then read the diff.
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from depgate import registry, render_cli
from depgate import spec as S
from depgate.render import (
    ANNOTATION,
    RenderConfig,
    RenderProblem,
    apply_body,
    base_from_template,
    init_containers,
    is_ours,
    owner_reference,
    placement_patch,
    render_errors,
    rendered,
    rendered_template,
    ssa_merged_order,
    template_name,
    volumes,
    without_ours,
)
from depgate.spec import parse_policy

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLES = ROOT / "examples" / "microservices"
CONFIG = RenderConfig(waiter_image="depgate/depgate:0.1.0")
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "policy.yaml").exists())


def case_files(case: str) -> list[str]:
    return [str(p) for p in (GOLDEN / case / "policy.yaml", GOLDEN / case / "deployment.yaml") if p.exists()]


def render_files(paths: list[str]) -> str:
    objs, _ = render_cli.render_documents(render_cli.load_documents(paths), CONFIG)
    return render_cli.dump(objs, "yaml")


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- golden files ------------------------------------------------------------------------------------


def test_golden_cases_cover_the_brief() -> None:
    assert len(CASES) >= 15
    types = set()
    placements = set()
    for case in CASES:
        (policy,) = [d for d in load_all(GOLDEN / case / "policy.yaml") if d["kind"] == "DependencyPolicy"]
        types |= {
            next(k for k in pre if k not in ("name", "timeoutSeconds", "periodSeconds"))
            for pre in policy["spec"]["preconditions"]
        }
        placements.add(policy["spec"].get("placement", "BeforeExisting"))
    assert types == {
        "tcp",
        "redis",
        "http",
        "dns",
        "service",
        "job",
        "secret",
        "configMap",
        "workload",
        "resource",
        "download",
        "command",
    }
    assert placements == {"BeforeExisting", "AfterExisting"}


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    got = render_files(case_files(case))
    expected = GOLDEN / case / "expected.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected.write_text(got)
    assert expected.exists(), f"run UPDATE_GOLDEN=1 to create {expected}"
    assert got == expected.read_text()


@pytest.mark.parametrize("case", CASES)
def test_rendering_the_rendered_output_changes_nothing(case: str, tmp_path: Path) -> None:
    expected = (GOLDEN / case / "expected.yaml").read_text()
    again = tmp_path / "deployments.yaml"
    again.write_text(expected)
    policy = parse_policy(next(d for d in load_all(GOLDEN / case / "policy.yaml") if d["kind"] == "DependencyPolicy"))
    if policy.target_field == "template":
        # the Deployment depgate created, read back and rendered as a live one
        (live,) = load_all(again)
        assert rendered(policy, live, CONFIG) == live
    else:
        assert render_files([str(GOLDEN / case / "policy.yaml"), str(again)]) == expected


@pytest.mark.parametrize("case", CASES)
def test_the_operator_takes_the_rendered_output_for_up_to_date(case: str) -> None:
    """render prints the operator's applied-hash annotation too: a Deployment applied as render printed
    it (GitOps, or a `kubectl diff --server-side` of it) is one the operator writes nothing to."""
    from depgate import plan
    from depgate.constants import APPLIED_HASH_ANNOTATION

    policy = golden_policy(case)
    for dep in load_all(GOLDEN / case / "expected.yaml"):
        if policy.target_field == "template":
            want = rendered_template(policy, CONFIG, owner_reference(policy))
            assert dep["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] == plan.body_hash(want)
        else:
            assert plan.target_writes(policy, dep, CONFIG).applies == (), dep["metadata"]["name"]


# --- what is rendered, in detail ----------------------------------------------------------------------


def golden_policy(case: str) -> Any:
    return parse_policy(load_all(GOLDEN / case / "policy.yaml")[0])


def golden_deployment(case: str) -> dict[str, Any]:
    return load_all(GOLDEN / case / "deployment.yaml")[0]


def test_waiter_container_shape() -> None:
    (c,) = init_containers(golden_policy("tcp-defaults"), golden_deployment("tcp-defaults"), CONFIG)
    assert c == {
        "name": "depgate-postgres",
        "image": "depgate/depgate:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "command": ["depgate", "wait", "tcp"],
        "args": ["--timeout=0", "--period=1", "--host=postgres", "--port=5432"],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def test_the_waiter_image_comes_from_the_config_only() -> None:
    config = RenderConfig(waiter_image="registry.local/depgate:dev", image_pull_policy="Never")
    (c,) = init_containers(golden_policy("tcp-defaults"), golden_deployment("tcp-defaults"), config)
    assert (c["image"], c["imagePullPolicy"]) == ("registry.local/depgate:dev", "Never")


def test_redis_password_is_in_env_not_args() -> None:
    cache, _ = init_containers(golden_policy("redis-password"), golden_deployment("redis-password"), CONFIG)
    assert cache["args"][2:] == [
        "--host=cache.shop.svc",
        "--port=6379",
        "--tls",
        "--password-env=DEPGATE_REDIS_PASSWORD",
    ]
    assert cache["env"] == [
        {"name": "DEPGATE_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "cache-auth", "key": "password"}}}
    ]


def test_secret_backed_basic_auth_and_headers_are_env_refs_not_args() -> None:
    case = "http-secret-auth"
    api, bearer, fonts = init_containers(golden_policy(case), golden_deployment(case), CONFIG)
    assert api["args"][4:] == [
        "--header=X-Probe: depgate",
        "--header-env=X-Api-Key=DEPGATE_HEADER_1",
        "--username-env=DEPGATE_HTTP_USERNAME",
        "--password-env=DEPGATE_HTTP_PASSWORD",
    ]
    assert api["env"] == [
        {"name": "DEPGATE_HEADER_1", "valueFrom": {"secretKeyRef": {"name": "api-key", "key": "token"}}},
        {"name": "DEPGATE_HTTP_USERNAME", "valueFrom": {"secretKeyRef": {"name": "api-basic-auth", "key": "username"}}},
        {"name": "DEPGATE_HTTP_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "api-basic-auth", "key": "password"}}},
    ]
    assert bearer["args"][4:] == ["--header-env=Authorization=DEPGATE_HEADER_0"]
    assert fonts["args"][-2:] == ["--username-env=DEPGATE_HTTP_USERNAME", "--password-env=DEPGATE_HTTP_PASSWORD"]
    assert [e["valueFrom"]["secretKeyRef"] for e in fonts["env"]] == [
        {"name": "files-auth", "key": "user"},
        {"name": "files-auth", "key": "pass"},
    ]
    # no env entry carries a literal value, and the args name no Secret or key
    for c in (api, bearer, fonts):
        assert all("value" not in e for e in c["env"])
        for secret in ("api-key", "api-basic-auth", "billing-token", "files-auth", "token", "user", "pass"):
            assert not any(a.endswith(secret) or f"{secret}:" in a for a in c["args"]), (secret, c["args"])


def test_http_ca_volume_and_flags() -> None:
    policy, dep = golden_policy("http-full"), golden_deployment("http-full")
    api, legacy, plain = init_containers(policy, dep, CONFIG)
    assert api["args"][2:] == [
        "--url=https://api.shop.svc:8443/healthz",
        "--expect-status=200",
        "--expect-status=204",
        "--ca-file=/depgate/ca/api/ca.crt",
        "--header=Host: api.internal",
        "--header=X-Probe: depgate",
    ]
    assert api["volumeMounts"] == [{"name": "depgate-ca-api", "mountPath": "/depgate/ca/api", "readOnly": True}]
    assert legacy["args"][-1] == "--insecure" and "volumeMounts" not in legacy
    assert plain["args"][2:] == ["--url=http://plain/ready", "--expect-status=200"]
    assert volumes(policy, dep) == [
        {
            "name": "depgate-ca-api",
            "configMap": {"name": "internal-ca", "items": [{"key": "root.pem", "path": "ca.crt"}]},
        }
    ]


def test_api_types_are_verdicts() -> None:
    containers = init_containers(golden_policy("api-types"), golden_deployment("api-types"), CONFIG)
    for c in containers:
        assert c["command"] == ["depgate", "wait", "verdict"]
        assert c["args"][2:] == ["--policy=web", f"--precondition={c['name'][len('depgate-') :]}"]
        assert c["env"] == [
            {
                "name": "DEPGATE_NAMESPACE",
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
            }
        ]
        assert "volumeMounts" not in c  # the pod automounts the ServiceAccount token


def test_projected_token_only_for_verdicts_when_automount_is_off() -> None:
    policy, dep = golden_policy("automount-false-token"), golden_deployment("automount-false-token")
    broker, job, service = init_containers(policy, dep, CONFIG)
    assert "volumeMounts" not in broker
    mount = {"name": "depgate-token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}
    assert job["volumeMounts"] == [mount] and service["volumeMounts"] == [mount]
    (token,) = volumes(policy, dep)
    sources = token["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    assert sources[2]["downwardAPI"]["items"][0]["path"] == "namespace"
    # with the token automounted, no projected volume
    dep["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    assert volumes(policy, dep) == []


def test_command_from_container_copies_and_overrides() -> None:
    policy, dep = golden_policy("command-from-container"), golden_deployment("command-from-container")
    await_redis, seed = init_containers(policy, dep, CONFIG)
    server = dep["spec"]["template"]["spec"]["containers"][0]
    assert await_redis["image"] == server["image"]
    assert await_redis["command"] == ["npm", "run", "await-redis"] and "args" not in await_redis
    assert await_redis["env"] == [
        {"name": "REDIS_URL", "value": "redis://data-tier:6379/1"},  # overridden in place
        {"name": "NODE_ENV", "value": "production"},
        {"name": "DEBUG", "value": "1"},  # added
    ]
    assert await_redis["envFrom"] == server["envFrom"]
    assert await_redis["volumeMounts"] == server["volumeMounts"]
    assert await_redis["workingDir"] == "/srv/app"
    assert await_redis["resources"] == server["resources"]
    assert await_redis["securityContext"] == server["securityContext"]
    assert "readinessProbe" not in await_redis and "ports" not in await_redis
    assert seed["workingDir"] == "/srv/seed" and seed["args"] == ["--once"]
    assert seed["resources"] == {"limits": {"memory": "128Mi"}}
    assert seed["securityContext"] == {"runAsNonRoot": True, "readOnlyRootFilesystem": False}


def test_the_lesson_init_container_renders_as_the_lesson_wrote_it() -> None:
    """The course's app tier, unmodified, and `command` fromContainer server: the same container as
    the lesson's hand-written await-redis (no runAsNonRoot, no 64Mi limit: the server has neither)."""
    policy, dep = golden_policy("lesson-await-redis"), golden_deployment("lesson-await-redis")
    lesson = yaml.safe_load((GOLDEN / "lesson-await-redis" / "lesson-init-container.yaml").read_text())
    verdict, await_redis = init_containers(policy, dep, CONFIG)
    assert await_redis == {**lesson, "name": "depgate-await-redis"}
    assert "resources" not in await_redis and "securityContext" not in await_redis
    # depgate's own waiter keeps the restricted defaults
    assert verdict["securityContext"]["runAsNonRoot"] is True
    assert verdict["resources"]["limits"] == {"memory": "64Mi"}


def from_container_policy(source_resources: Any = None, defaults: bool = False, **command: Any) -> Any:
    spec: dict[str, Any] = {
        "workloadRef": {"name": "app"},
        "preconditions": [
            {"name": "copied", "command": {"fromContainer": "app", "command": ["check"], **command}},
            {"name": "own-image", "command": {"image": "busybox", "command": ["true"]}},
        ],
    }
    if defaults:
        spec["defaults"] = {
            "resources": {"limits": {"memory": "16Mi"}},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
        }
    return parse_policy({"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
                         "metadata": {"name": "p", "namespace": "ns"}, "spec": spec})


def app_deployment(**container: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": "ns"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "node:20", **container}]}}}}


@pytest.mark.parametrize("defaults", [False, True])
@pytest.mark.parametrize(
    "source",
    [{}, {"resources": {}}, {"securityContext": {}}, {"resources": {}, "securityContext": {}}],
    ids=["absent", "empty-resources", "empty-security-context", "both-empty"],
)
def test_from_container_without_resources_or_security_context_gets_none(
    source: dict[str, Any], defaults: bool
) -> None:
    """Neither depgate's restricted defaults nor spec.defaults: those are for its own containers. An
    empty `resources: {}` (what the API server shows for none) is none too, so the Deployment as the
    operator reads it back renders as its file does."""
    copied, own = init_containers(from_container_policy(defaults=defaults), app_deployment(**source), CONFIG)
    assert "resources" not in copied and "securityContext" not in copied
    assert copied == init_containers(from_container_policy(defaults=defaults), app_deployment(), CONFIG)[0]
    # a command with its own image keeps the defaults (spec.defaults when given)
    if defaults:
        assert own["resources"] == {"limits": {"memory": "16Mi"}}
        assert own["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532}
    else:
        assert own["resources"] == {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
        assert own["securityContext"]["runAsNonRoot"] is True


def test_from_container_copies_the_source_and_the_precondition_wins() -> None:
    source = {"resources": {"requests": {"memory": "256Mi"}}, "securityContext": {"runAsUser": 0}}
    copied, _ = init_containers(from_container_policy(defaults=True), app_deployment(**source), CONFIG)
    assert copied["resources"] == source["resources"] and copied["securityContext"] == source["securityContext"]
    given = from_container_policy(resources={"limits": {"memory": "1Gi"}}, securityContext={"runAsUser": 1000})
    copied, _ = init_containers(given, app_deployment(**source), CONFIG)
    assert copied["resources"] == {"limits": {"memory": "1Gi"}}
    assert copied["securityContext"] == {"runAsUser": 1000}


def test_download_mounts_the_shared_volume_everywhere_it_should() -> None:
    policy, dep = golden_policy("download-shared-volume"), golden_deployment("download-shared-volume")
    out = rendered(policy, dep, CONFIG)
    pod = out["spec"]["template"]["spec"]
    model, unpack = pod["initContainers"]
    assert model["args"][-2:] == ["--dest=/models/resnet50/model.onnx", "--max-bytes=268435456"]
    shared = {"name": "depgate-shared", "mountPath": "/models"}
    assert model["volumeMounts"] == [shared] and unpack["volumeMounts"] == [shared]
    assert [c["volumeMounts"][-1] for c in pod["containers"]] == [shared, shared]
    assert pod["containers"][0]["volumeMounts"][0]["name"] == "cache"
    assert pod["volumes"] == [
        {"name": "cache", "emptyDir": {}},
        {"name": "depgate-shared", "emptyDir": {"sizeLimit": "2Gi"}},
    ]


def test_download_max_bytes_defaults_to_100_mib() -> None:
    doc = yaml.safe_load((GOLDEN / "download-shared-volume" / "policy.yaml").read_text())
    del doc["spec"]["preconditions"][0]["download"]["maxBytes"]
    (model, _) = init_containers(parse_policy(doc), golden_deployment("download-shared-volume"), CONFIG)
    assert model["args"][-1] == "--max-bytes=104857600"


def test_wait_role_names_are_unique_for_any_valid_policy_name() -> None:
    from depgate.render import WAIT_ROLE_PREFIX, wait_role_name

    assert wait_role_name("app") == "depgate-wait-app"
    fits = "a" * (253 - len(WAIT_ROLE_PREFIX))
    assert wait_role_name(fits) == WAIT_ROLE_PREFIX + fits  # exactly 253: unchanged
    # Two names of 240+ characters sharing their first 240: each its own Role, stable, at most 253.
    one, two = "x" * 240 + ".one", "x" * 240 + ".two"
    assert wait_role_name(one) != wait_role_name(two)
    assert wait_role_name(one) == wait_role_name(one)
    for name in (one, two, "a" * 253, "a" * 239 + "-" + "b" * 13, "a." * 126 + "a"):
        role = wait_role_name(name)
        assert len(role) <= 253 and role.startswith(WAIT_ROLE_PREFIX), role
        assert S.DNS_SUBDOMAIN_RE.fullmatch(role), role  # still a valid object name


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?\Z"), min_size=2, max_size=2, unique=True))
def test_wait_role_names_never_collide(names: list[str]) -> None:
    from depgate.render import wait_role_name

    a, b = names
    assert wait_role_name(a) != wait_role_name(b)
    assert S.DNS_SUBDOMAIN_RE.fullmatch(wait_role_name(a)) and len(wait_role_name(a)) <= 253


# --- the apply body -----------------------------------------------------------------------------------


def test_apply_body_holds_only_what_depgate_owns() -> None:
    policy, dep = golden_policy("existing-init-before"), golden_deployment("existing-init-before")
    body = apply_body(policy, dep, CONFIG)
    assert list(body) == ["apiVersion", "kind", "metadata", "spec"]
    assert body["metadata"] == {"name": "api", "namespace": "shop", "annotations": {ANNOTATION: "api"}}
    assert list(body["spec"]) == ["template"] and list(body["spec"]["template"]) == ["spec"]
    pod = body["spec"]["template"]["spec"]
    assert list(pod) == ["initContainers"]
    assert [c["name"] for c in pod["initContainers"]] == ["depgate-postgres", "depgate-db-credentials"]


def test_apply_body_with_shared_volume_names_the_app_containers_and_our_mount_only() -> None:
    policy, dep = golden_policy("download-shared-volume"), golden_deployment("download-shared-volume")
    pod = apply_body(policy, dep, CONFIG)["spec"]["template"]["spec"]
    assert list(pod) == ["initContainers", "volumes", "containers"]
    assert pod["containers"] == [
        {"name": "server", "volumeMounts": [{"name": "depgate-shared", "mountPath": "/models"}]},
        {"name": "metrics", "volumeMounts": [{"name": "depgate-shared", "mountPath": "/models"}]},
    ]
    assert [v["name"] for v in pod["volumes"]] == ["depgate-shared"]


@pytest.mark.parametrize("case", [c for c in CASES if c != "template-mode"])
def test_apply_body_is_deterministic_and_matches_rendered(case: str) -> None:
    docs = load_all(GOLDEN / case / "deployment.yaml")
    policy = golden_policy(case)
    dep = next(d for d in docs if policy.target_field != "workloadRef" or d["metadata"]["name"] == policy.target.name)
    before = copy.deepcopy(dep)
    a, b = apply_body(policy, dep, CONFIG), apply_body(policy, copy.deepcopy(dep), CONFIG)
    assert json.dumps(a) == json.dumps(b)
    assert dep == before  # inputs are never mutated
    # the body's init containers are exactly ours in the rendered Deployment; applying the body to the
    # rendered Deployment again would change nothing
    full = rendered(policy, dep, CONFIG)
    ours = [c for c in registry.pod_template(full)["spec"]["initContainers"] if is_ours(c["name"])]
    assert registry.pod_template(a)["spec"]["initContainers"] == ours
    assert (a["apiVersion"], a["kind"]) == (dep["apiVersion"], dep["kind"])  # each kind applied as itself
    assert apply_body(policy, full, CONFIG) == a


def test_apply_body_of_a_rendered_deployment_has_no_stale_entries() -> None:
    policy, dep = golden_policy("rerender-stale"), golden_deployment("rerender-stale")
    pod = apply_body(policy, dep, CONFIG)["spec"]["template"]["spec"]
    assert list(pod) == ["initContainers"]
    assert [c["name"] for c in pod["initContainers"]] == ["depgate-postgres"]
    assert without_ours(dep)["spec"]["template"]["spec"]["volumes"] == [{"name": "html", "emptyDir": {}}]


# --- placement under server-side apply -------------------------------------------------------------


# Each row was checked against kube-apiserver v1.34.4: a Deployment applied by manager "user", then
# bodies applied by manager "depgate" (and reorders by JSON patch), reading the order back.
@pytest.mark.parametrize(
    ("live", "applied", "merged"),
    [
        ([], ["a", "b"], ["a", "b"]),
        (["u1", "d1x", "u2"], ["a", "b"], ["u1", "d1x", "u2", "a", "b"]),  # new entries go after the user's
        (["u1", "d1x", "u2", "a", "b"], ["a", "c", "b"], ["u1", "d1x", "u2", "a", "c", "b"]),
        (["u1", "d1x", "u2", "a", "b"], ["b", "a"], ["u1", "d1x", "u2", "b", "a"]),
        (["b", "a", "u1", "d1x", "u2"], ["a", "b"], ["a", "u1", "d1x", "u2", "b"]),
        (["a", "u1", "d1x", "u2", "b"], ["b", "a"], ["u1", "d1x", "u2", "b", "a"]),
        (["u1", "b", "d1x", "a", "u2"], ["a", "b"], ["u1", "d1x", "a", "u2", "b"]),
        (["a", "b", "u1"], ["a", "b"], ["a", "b", "u1"]),  # re-apply after placement_patch: unchanged
        (["a", "b", "u1"], ["a", "b", "c"], ["a", "b", "u1", "c"]),  # a new precondition lands after u1
    ],
)
def test_ssa_merged_order(live: list[str], applied: list[str], merged: list[str]) -> None:
    assert ssa_merged_order(live, applied) == merged


def with_init_order(dep: dict[str, Any], containers: list[dict[str, Any]], rv: str | None = "41") -> dict[str, Any]:
    out = copy.deepcopy(dep)
    out["spec"]["template"]["spec"]["initContainers"] = containers
    if rv:
        out["metadata"]["resourceVersion"] = rv
    return out


def test_placement_patch_puts_ours_first_after_the_first_apply() -> None:
    policy, dep = golden_policy("existing-init-before"), golden_deployment("existing-init-before")
    theirs = dep["spec"]["template"]["spec"]["initContainers"]
    ours = init_containers(policy, dep, CONFIG)
    # what the server holds after the first apply: ours appended after theirs
    order = ssa_merged_order([c["name"] for c in theirs], [c["name"] for c in ours])
    assert order == ["migrate", "warm-cache", "depgate-postgres", "depgate-db-credentials"]
    by_name = {c["name"]: c for c in theirs + ours}
    live = with_init_order(dep, [by_name[n] for n in order])
    patch = placement_patch(policy, live)
    assert patch is not None
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "41"}
    assert patch[1]["op"] == "replace" and patch[1]["path"] == "/spec/template/spec/initContainers"
    assert patch[1]["value"] == rendered(policy, dep, CONFIG)["spec"]["template"]["spec"]["initContainers"]
    # once in place: nothing to do
    assert placement_patch(policy, with_init_order(dep, patch[1]["value"])) is None


def test_placement_patch_after_existing_needs_nothing_on_first_apply() -> None:
    policy, dep = golden_policy("existing-init-after"), golden_deployment("existing-init-after")
    live = rendered(policy, dep, CONFIG)
    assert placement_patch(policy, live) is None
    names = [c["name"] for c in live["spec"]["template"]["spec"]["initContainers"]]
    assert names == ["migrate", "warm-cache", "depgate-postgres", "depgate-db-credentials"]
    # the user moved one of theirs after ours: the patch restores AfterExisting, without a resourceVersion test
    inits = live["spec"]["template"]["spec"]["initContainers"]
    patch = placement_patch(policy, with_init_order(dep, [inits[0], inits[2], inits[3], inits[1]], rv=None))
    assert patch is not None and [op["op"] for op in patch] == ["replace"]
    assert [c["name"] for c in patch[0]["value"]] == names


# --- operator-judged errors ------------------------------------------------------------------------


def test_from_container_must_exist() -> None:
    policy = golden_policy("command-from-container")
    dep = golden_deployment("command-from-container")
    dep["spec"]["template"]["spec"]["containers"][0]["name"] = "api"
    errors = render_errors(policy, dep, CONFIG)
    assert [(e.field_path, e.reason) for e in errors] == [
        ("spec.preconditions[0].command.fromContainer", "ContainerNotFound"),
        ("spec.preconditions[1].command.fromContainer", "ContainerNotFound"),
    ]
    assert "Deployment microservices/app-tier has no container 'server' (it has: api)" in errors[0].message
    with pytest.raises(RenderProblem) as info:
        apply_body(policy, dep, CONFIG)
    assert info.value.errors == tuple(errors)
    with pytest.raises(RenderProblem):
        rendered(policy, dep, CONFIG)


def test_shared_mount_path_must_be_free() -> None:
    policy, dep = golden_policy("download-shared-volume"), golden_deployment("download-shared-volume")
    dep["spec"]["template"]["spec"]["containers"][1]["volumeMounts"] = [{"name": "data", "mountPath": "/models/"}]
    (error,) = render_errors(policy, dep, CONFIG)
    assert (error.field_path, error.reason) == ("spec.sharedVolume.mountPath", "MountPathConflict")
    assert "'metrics'" in error.message and "'data'" in error.message


@pytest.mark.parametrize(
    ("theirs", "how"),
    [("/models/cache", "inside /models"), ("/", "which /models is inside"), ("/models/", "already mounts")],
)
def test_shared_mount_path_may_not_contain_or_be_inside_an_app_mount(theirs: str, how: str) -> None:
    policy, dep = golden_policy("download-shared-volume"), golden_deployment("download-shared-volume")
    dep["spec"]["template"]["spec"]["containers"][1]["volumeMounts"] = [{"name": "data", "mountPath": theirs}]
    (error,) = render_errors(policy, dep, CONFIG)
    assert (error.field_path, error.reason) == ("spec.sharedVolume.mountPath", "MountPathConflict")
    assert how in error.message and "'data'" in error.message


def test_a_shared_mount_path_beside_an_app_mount_is_fine() -> None:
    policy, dep = golden_policy("download-shared-volume"), golden_deployment("download-shared-volume")
    dep["spec"]["template"]["spec"]["containers"][1]["volumeMounts"] = [{"name": "data", "mountPath": "/models2"}]
    assert render_errors(policy, dep, CONFIG) == []


def test_not_a_usable_deployment() -> None:
    policy = golden_policy("tcp-defaults")
    assert [e.reason for e in render_errors(policy, {"kind": "StatefulSet", "metadata": {"name": "x"}}, CONFIG)] == [
        "InvalidTarget"
    ]
    assert [e.reason for e in render_errors(policy, {"kind": "Deployment", "metadata": {"name": "x"}}, CONFIG)] == [
        "InvalidTarget"
    ]
    no_image = RenderConfig(waiter_image="")
    assert [e.reason for e in render_errors(policy, golden_deployment("tcp-defaults"), no_image)] == ["InvalidConfig"]


# --- template mode ----------------------------------------------------------------------------------


def test_template_mode() -> None:
    policy = golden_policy("template-mode")
    assert template_name(policy) == "support-tier"
    owner = owner_reference(policy)
    assert owner == {
        "apiVersion": "depgate.io/v1alpha1",
        "kind": "DependencyPolicy",
        "name": "support-tier",
        "uid": "7b1c6f2e-3d4a-4b8e-9f00-5a6b7c8d9e0f",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    out = rendered_template(policy, CONFIG, owner)
    assert out["metadata"]["ownerReferences"] == [owner]
    assert out["metadata"]["labels"] == {"tier": "support"}
    assert out["metadata"]["annotations"] == {ANNOTATION: "support-tier"}
    names = [c["name"] for c in out["spec"]["template"]["spec"]["initContainers"]]
    assert names == ["depgate-app-tier", "depgate-app-tier-endpoints", "depgate-counter-config"]
    assert out["spec"]["replicas"] == 1
    assert rendered_template(policy, CONFIG, None)["metadata"].get("ownerReferences") is None


def test_template_name_defaults_to_the_policy_name() -> None:
    doc = load_all(GOLDEN / "template-mode" / "policy.yaml")[0]
    del doc["spec"]["template"]["metadata"]["name"]
    del doc["metadata"]["uid"]
    policy = parse_policy(doc)
    assert template_name(policy) == "support-tier"
    assert owner_reference(policy) is None
    assert base_from_template(policy)["metadata"]["name"] == "support-tier"
    with pytest.raises(ValueError, match=r"no spec\.template"):
        base_from_template(golden_policy("tcp-defaults"))


# --- the CLI ----------------------------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = render_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_golden_output(capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for f in case_files("selector-mode") for a in ("-f", f)]
    code, out, err = run([*args, "--waiter-image", "depgate/depgate:0.1.0"], capsys)
    assert (code, err) == (0, "")
    assert out == (GOLDEN / "selector-mode" / "expected.yaml").read_text()


def test_cli_default_image_from_env(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPGATE_WAITER_IMAGE", "mirror.local/depgate:9")
    code, out, _ = run(["-f", case_files("dns")[0], "-f", case_files("dns")[1]], capsys)
    assert code == 0 and "image: mirror.local/depgate:9" in out
    monkeypatch.delenv("DEPGATE_WAITER_IMAGE")
    code, out, _ = run(["-f", case_files("dns")[0], "-f", case_files("dns")[1]], capsys)
    assert code == 0 and "image: depgate/depgate:0.1.0" in out


def test_cli_json_stdin_and_lists(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    policy, dep = case_files("tcp-defaults")
    listed = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(Path(dep).read_text())]}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(listed)))
    code, out, _ = run(["-f", policy, "-f", "-", "-o", "json"], capsys)
    assert code == 0
    assert json.loads(out) == yaml.safe_load((GOLDEN / "tcp-defaults" / "expected.yaml").read_text())
    args = [a for f in case_files("selector-mode") for a in ("-f", f)]
    code, out, _ = run([*args, "-o", "json"], capsys)
    assert code == 0 and [d["metadata"]["name"] for d in json.loads(out)["items"]] == ["frontend", "backend"]


def test_cli_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["-f", str(EXAMPLES)], capsys)
    assert (code, err) == (0, "")
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(out)] == ["app-tier", "support-tier"]


def test_cli_one_multi_document_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    both = tmp_path / "all.yaml"
    both.write_text("\n---\n".join(Path(f).read_text() for f in case_files("http-full")))
    code, out, _ = run(["-f", str(both)], capsys)
    assert code == 0 and out == (GOLDEN / "http-full" / "expected.yaml").read_text()


def test_cli_invalid_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = load_all(GOLDEN / "existing-init-before" / "policy.yaml")[0]
    doc["spec"]["preconditions"][1] = {"name": "db", "tcp": {"host": "db", "port": 70000}}
    bad = tmp_path / "policy.yaml"
    bad.write_text(yaml.safe_dump(doc))
    code, out, err = run(["-f", str(bad), "-f", case_files("existing-init-before")[1]], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("error: spec.preconditions[1].tcp.port: must be between 1 and 65535 (got 70000)")
    assert str(bad) in err


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-target", "error: spec.workloadRef.name: Deployment 'web' is not in the given files"),
        ("no-policy", "error: no DependencyPolicy in the given files"),
        ("bad-yaml", "not valid YAML"),
        ("no-file", "No such file"),
        ("from-container", "error: spec.preconditions[0].command.fromContainer:"),
        ("double-claim", "is targeted by both DependencyPolicy web and web2"),
    ],
)
def test_cli_errors(setup: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy, dep = case_files("tcp-defaults")
    files = {"missing-target": [policy], "no-policy": [dep], "no-file": [str(tmp_path / "nope.yaml")]}.get(setup)
    if setup == "bad-yaml":
        (tmp_path / "bad.yaml").write_text("a: [")
        files = [str(tmp_path / "bad.yaml")]
    if setup == "from-container":
        bad = load_all(GOLDEN / "command-from-container" / "deployment.yaml")[0]
        bad["spec"]["template"]["spec"]["containers"][0]["name"] = "api"
        (tmp_path / "d.yaml").write_text(yaml.safe_dump(bad))
        files = [case_files("command-from-container")[0], str(tmp_path / "d.yaml")]
    if setup == "double-claim":
        second = load_all(Path(policy))[0]
        second["metadata"]["name"] = "web2"
        (tmp_path / "p2.yaml").write_text(yaml.safe_dump(second))
        files = [policy, str(tmp_path / "p2.yaml"), dep]
    assert files is not None
    code, out, err = run([a for f in files for a in ("-f", f)], capsys)
    if setup == "double-claim":  # the first policy's Deployment is printed; the second is the error
        assert code == 1 and out == (GOLDEN / "tcp-defaults" / "expected.yaml").read_text()
    else:
        assert (code, out) == (1, "")
    assert message in err


def test_cli_renders_the_other_policies_when_one_target_is_missing(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    """Issue 16, item 8: one policy whose target is not in the files no longer hides the others'."""
    policy, dep = case_files("tcp-defaults")
    lost = load_all(Path(policy))[0]
    lost["metadata"]["name"] = "lost"
    lost["spec"]["workloadRef"] = {"kind": "StatefulSet", "name": "gone"}
    (tmp_path / "lost.yaml").write_text(yaml.safe_dump(lost))
    code, out, err = run(["-f", policy, "-f", str(tmp_path / "lost.yaml"), "-f", dep], capsys)
    assert code == 1 and out == (GOLDEN / "tcp-defaults" / "expected.yaml").read_text()
    assert err == ("error: spec.workloadRef.name: StatefulSet 'gone' is not in the given files "
                   f"(DependencyPolicy lost, {tmp_path / 'lost.yaml'} document 1)\n")


def test_cli_selector_matching_nothing_warns(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["-f", case_files("selector-mode")[0], "-f", case_files("tcp-defaults")[1]], capsys)
    assert (code, out) == (0, "")
    assert err == "warning: DependencyPolicy needs-postgres: spec.selector matches none of the given Deployments\n"


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2 and "-f" in err
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "--waiter-image" in out


def test_yaml_output_quotes_yaml11_booleans() -> None:
    assert render_cli.dump([{"a": "y", "b": "no", "c": "n"}], "yaml") == "a: 'y'\nb: 'no'\nc: 'n'\n"


# --- the examples -----------------------------------------------------------------------------------


def test_every_example_renders() -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    assert files
    objs, warnings = render_cli.render_documents(render_cli.load_documents(files), CONFIG)
    assert warnings == []
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs] == [
        ("microservices", "app-tier"),
        ("microservices", "support-tier"),
    ]
    app = objs[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in app["initContainers"]] == [
        "depgate-redis-port",
        "depgate-data-tier",
        "depgate-redis-ping",
        "depgate-await-redis",
    ]
    lesson = app["initContainers"][-1]
    assert lesson["image"] == "lrakai/microservices:server-v1"
    assert lesson["command"] == ["npm", "run", "await-redis"]
    assert {"name": "REDIS_URL", "value": "redis://data-tier:6379"} in lesson["env"]
    support = objs[1]["spec"]["template"]["spec"]
    assert "--url=http://app-tier:8080/" in support["initContainers"][0]["args"]


# --- properties ---------------------------------------------------------------------------------------

NAMES = st.lists(
    st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True), min_size=1, max_size=6, unique=True
)
SHA = "ab" * 32


def body(kind: str, with_ca: bool) -> dict[str, Any]:
    return {
        "tcp": {"tcp": {"host": "db", "port": 5432}},
        "redis": {"redis": {"host": "cache", "passwordSecretRef": {"name": "s", "key": "k"}}},
        "http": {"http": {"url": "https://api/", **({"caConfigMap": {"name": "ca", "key": "c"}} if with_ca else {})}},
        "dns": {"dns": {"name": "example.com"}},
        "service": {"service": {"name": "api"}},
        "job": {"job": {"name": "migrate"}},
        "download": {"download": {"url": "https://f/x", "sha256": SHA, "path": "x"}},
        "image": {"command": {"image": "busybox", "command": ["true"]}},
        "from": {"command": {"fromContainer": "app", "args": ["--check"], "env": [{"name": "A", "value": "2"}]}},
    }[kind]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    names = draw(NAMES)
    kinds = st.sampled_from(["tcp", "redis", "http", "dns", "service", "job", "download", "image", "from"])
    preconditions = [{"name": n, **body(draw(kinds), draw(st.booleans()))} for n in names]
    policy = {
        "apiVersion": "depgate.io/v1alpha1",
        "kind": "DependencyPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {
            "workloadRef": {"name": "d"},
            "placement": draw(st.sampled_from(["BeforeExisting", "AfterExisting"])),
            "preconditions": preconditions,
        },
    }
    theirs = draw(st.lists(st.sampled_from(["setup", "migrate", "warm", "proxy"]), unique=True, max_size=3))
    pod: dict[str, Any] = {
        "containers": [
            {
                "name": "app",
                "image": "app:1",
                "env": [{"name": "A", "value": "1"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            },
            *([{"name": "side", "image": "side:1"}] if draw(st.booleans()) else []),
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }
    if theirs:
        pod["initContainers"] = [{"name": n, "image": "busybox"} for n in theirs]
    if draw(st.booleans()):
        pod["automountServiceAccountToken"] = False
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {"template": {"spec": pod}},
    }
    return policy, deployment


def names_of(items: list[dict[str, Any]] | None) -> list[str]:
    return [i["name"] for i in items or []]


@settings(max_examples=60, deadline=None)
@given(scenario())
def test_render_properties(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    raw_policy, deployment = case
    policy = parse_policy(raw_policy)
    before = copy.deepcopy(deployment)
    out = rendered(policy, deployment, CONFIG)
    assert deployment == before  # never mutates its input
    assert json.dumps(rendered(policy, copy.deepcopy(deployment), CONFIG)) == json.dumps(out)  # deterministic
    assert rendered(policy, out, CONFIG) == out  # idempotent

    pod = out["spec"]["template"]["spec"]
    inits = names_of(pod["initContainers"])
    ours = [f"depgate-{p['name']}" for p in raw_policy["spec"]["preconditions"]]
    theirs = names_of(before["spec"]["template"]["spec"].get("initContainers"))
    assert len(inits) == len(set(inits))  # never duplicates names
    assert len(names_of(pod.get("volumes"))) == len(set(names_of(pod.get("volumes"))))
    for c in pod["containers"] + pod["initContainers"]:
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert len(paths) == len(set(paths))
    # declared order kept, theirs kept, placement respected
    assert inits == (ours + theirs if policy.placement == "BeforeExisting" else theirs + ours)
    # the user's containers only gain our mount
    for mine, orig in zip(pod["containers"], before["spec"]["template"]["spec"]["containers"], strict=True):
        assert {k: v for k, v in mine.items() if k != "volumeMounts"} == {
            k: v for k, v in orig.items() if k != "volumeMounts"
        }
        assert [m for m in mine.get("volumeMounts", []) if not is_ours(m["name"])] == orig.get("volumeMounts", [])

    # server-side apply of the body, then placement_patch, yields the rendered order
    body = apply_body(policy, deployment, CONFIG)
    assert body["spec"]["template"]["spec"]["initContainers"] == [
        c for c in pod["initContainers"] if is_ours(c["name"])
    ]
    merged = ssa_merged_order(theirs, ours)
    by_name = {c["name"]: c for c in pod["initContainers"]}
    live = with_init_order(out, [by_name[n] for n in merged])
    patch = placement_patch(policy, live)
    final = patch[-1]["value"] if patch else live["spec"]["template"]["spec"]["initContainers"]
    assert names_of(final) == inits


def test_from_container_copies_the_image_pull_policy_with_the_image() -> None:
    """An app image the node has and never pulls (imagePullPolicy Never, a `:latest` tag): the init container
    running it must not be pulled either (a real kubelet: Init:ErrImagePull; tests/e2e/test_seed.py)."""
    policy, dep = golden_policy("command-from-container"), golden_deployment("command-from-container")
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    await_redis, seed = init_containers(policy, dep, CONFIG)
    assert await_redis["imagePullPolicy"] == seed["imagePullPolicy"] == "Never"  # both run the app's image
    del dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"]
    assert "imagePullPolicy" not in init_containers(policy, dep, CONFIG)[0]


def test_the_default_pull_policy_is_the_api_servers() -> None:
    from depgate.render import default_pull_policy

    assert default_pull_policy("redis") == default_pull_policy("redis:latest") == "Always"
    assert default_pull_policy("localhost:5000/app") == "Always"  # a registry's port is no tag
    assert default_pull_policy("localhost:5000/app:v1") == default_pull_policy("app@sha256:ab") == "IfNotPresent"
    policy, dep = golden_policy("command-from-container"), golden_deployment("command-from-container")
    assert "imagePullPolicy" not in init_containers(policy, dep, CONFIG)[0]  # IfNotPresent for a tag: the default
