"""depgate.authority (pure): who a policy's author is, what rights it needs, the signed record."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from depgate import authority, spec, webhook
from depgate.constants import AUTHOR_ANNOTATION, AUTHOR_SIGNATURE_ANNOTATION

REPO = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
ALICE = authority.Author("alice", "u-1", ("team-b", "system:authenticated"), {"scopes": ("a",)})
MALLORY = authority.Author("mallory", groups=("system:authenticated",))
OPERATOR = "system:serviceaccount:depgate-system:depgate"


def obj(spec_: dict, *, generation: int = 1, annotations: dict | None = None) -> dict:
    meta = {"name": "p", "namespace": "team-b", "generation": generation}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": meta, "spec": spec_}


SPEC = {"workloadRef": {"name": "payments"}, "preconditions": [{"name": "db", "tcp": {"host": "db", "port": 5432}}]}


def signed(spec_: dict, author: authority.Author, generation: int = 1) -> dict:
    text = author.to_json()
    sig = authority.signature(KEY, "team-b", "p", generation, text)
    return obj(spec_, generation=generation, annotations={AUTHOR_ANNOTATION: text, AUTHOR_SIGNATURE_ANNOTATION: sig})


def test_the_author_round_trips_through_its_annotation():
    assert authority.Author.from_json(ALICE.to_json()) == ALICE
    assert authority.Author.from_user_info({"username": "bob"}).to_json() == '{"groups":[],"username":"bob"}'
    assert authority.Author.from_json("not json") is None
    assert authority.Author.from_json('{"username": ""}') is None


def test_verify_accepts_only_the_signature_of_this_generation_and_key():
    good = signed(SPEC, ALICE)
    assert authority.verify(KEY, good).author == ALICE
    assert authority.verify(b"x" * 32, good).author is None  # another key
    bumped = copy.deepcopy(good)
    bumped["metadata"]["generation"] = 2  # the spec changed without the webhook
    assert "does not verify for generation 2" in authority.verify(KEY, bumped).problem
    forged = copy.deepcopy(good)
    forged["metadata"]["annotations"][AUTHOR_ANNOTATION] = MALLORY.to_json()
    assert authority.verify(KEY, forged).author is None
    assert "no author recorded" in authority.verify(KEY, obj(SPEC)).problem


def test_the_gates_remembered_answers_follow_every_signed_field(monkeypatch):
    gate = webhook.Gate(None, KEY, OPERATOR)  # type: ignore[arg-type]
    calls = []
    real = authority.verify
    monkeypatch.setattr(authority, "verify", lambda key, o: calls.append(1) or real(key, o))
    good = signed(SPEC, ALICE)
    assert gate.trusted(good) and gate.trusted(copy.deepcopy(good))
    assert len(calls) == 1  # the second copy is answered from memory
    # Each field the signature covers changes the answer, never a stale one from memory.
    bumped = copy.deepcopy(good)
    bumped["metadata"]["generation"] = 2
    forged = copy.deepcopy(good)
    forged["metadata"]["annotations"][AUTHOR_ANNOTATION] = MALLORY.to_json()
    moved = copy.deepcopy(good)
    moved["metadata"]["namespace"] = "team-c"
    renamed = copy.deepcopy(good)
    renamed["metadata"]["name"] = "q"
    unsigned = copy.deepcopy(good)
    del unsigned["metadata"]["annotations"][AUTHOR_SIGNATURE_ANNOTATION]
    for bad in (bumped, forged, moved, renamed, unsigned):
        assert not gate.trusted(bad)
    assert gate.trusted(good) and len(calls) == 6
    # Bounded: past MAX_VERIFIED the oldest answer is dropped, and asked again when it comes back.
    monkeypatch.setattr(webhook, "MAX_VERIFIED", 3)
    for g in (3, 4, 5):
        gate.trusted(signed(SPEC, ALICE, generation=g))
    assert len(gate._verified) == 3
    gate.trusted(good)
    assert len(calls) == 10


def test_create_records_the_creator_for_generation_one():
    out = authority.authorship(KEY, "CREATE", None, obj(SPEC, generation=0), ALICE, OPERATOR)
    assert out.new_author == ALICE
    after = obj(SPEC, generation=1, annotations=dict(out.annotations))
    assert authority.verify(KEY, after).author == ALICE


def test_a_spec_change_makes_the_changer_the_author_for_the_next_generation():
    old = signed(SPEC, ALICE)
    new = copy.deepcopy(old)
    new["spec"]["preconditions"][0]["tcp"]["port"] = 1
    out = authority.authorship(KEY, "UPDATE", old, new, MALLORY, OPERATOR)
    assert out.new_author == MALLORY
    after = copy.deepcopy(new)
    after["metadata"].update(generation=2, annotations=dict(out.annotations))
    assert authority.verify(KEY, after).author == MALLORY


def test_a_metadata_only_update_keeps_the_author_and_undoes_a_forgery():
    old = signed(SPEC, ALICE)
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"team": "b"}
    new["metadata"]["annotations"][AUTHOR_ANNOTATION] = MALLORY.to_json()
    out = authority.authorship(KEY, "UPDATE", old, new, MALLORY, OPERATOR)
    assert out.new_author is None
    assert out.annotations == old["metadata"]["annotations"]


def test_touching_an_unverified_policy_makes_the_toucher_its_author_but_never_the_operator():
    old = obj(SPEC, generation=3)
    out = authority.authorship(KEY, "UPDATE", old, copy.deepcopy(old), ALICE, OPERATOR)
    assert out.new_author == ALICE
    assert authority.verify(KEY, obj(SPEC, generation=3, annotations=dict(out.annotations))).author == ALICE
    by_operator = authority.authorship(KEY, "UPDATE", old, copy.deepcopy(old),
                                       authority.Author(OPERATOR), OPERATOR)
    assert by_operator.new_author is None
    assert by_operator.annotations == {AUTHOR_ANNOTATION: None, AUTHOR_SIGNATURE_ANNOTATION: None}


def test_admitted_author_is_none_only_when_spec_and_author_are_unchanged():
    old = signed(SPEC, ALICE)
    assert authority.admitted_author(old, copy.deepcopy(old)) is None
    changed = copy.deepcopy(old)
    changed["spec"]["placement"] = "AfterExisting"
    assert authority.admitted_author(old, changed) == ALICE.to_json()
    assert authority.admitted_author(None, old) == ALICE.to_json()


def parse(spec_: dict) -> spec.Policy:
    return spec.parse_policy(obj(spec_))


def rights(spec_: dict, plurals=lambda v, k: {"Widget": "widgets"}.get(k)) -> list[tuple[str, str, str, str, str]]:
    return [(a.field, a.verb, a.group, a.resource, a.name) for a in authority.required(parse(spec_), "team-b", plurals)]


def test_required_names_each_right_with_the_field_that_needs_it():
    preconditions = [
        {"name": "cache", "redis": {"host": "r", "passwordSecretRef": {"name": "db", "key": "pw"}}},
        {"name": "creds", "secret": {"name": "db", "keys": ["pw"]}},  # the same right: reviewed once
        {"name": "cfg", "configMap": {"name": "app", "keys": ["a"]}},
        {"name": "svc", "service": {"name": "api"}},
        {"name": "mig", "job": {"name": "migrate"}},
        {"name": "ss", "workload": {"kind": "StatefulSet", "name": "pg"}},
        {"name": "w", "resource": {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w1"}},
    ]
    got = rights({"workloadRef": {"name": "payments"}, "preconditions": preconditions})
    assert got == [
        ("spec.workloadRef", "patch", "apps", "deployments", "payments"),
        ("spec.preconditions[0].redis.passwordSecretRef", "get", "", "secrets", "db"),
        ("spec.preconditions[2].configMap", "get", "", "configmaps", "app"),
        ("spec.preconditions[3].service", "get", "", "services", "api"),
        ("spec.preconditions[3].service", "list", "discovery.k8s.io", "endpointslices", ""),
        ("spec.preconditions[4].job", "get", "batch", "jobs", "migrate"),
        ("spec.preconditions[5].workload", "get", "apps", "statefulsets", "pg"),
        ("spec.preconditions[6].resource", "get", "example.com", "widgets", "w1"),
    ]


def test_a_selector_needs_patch_on_every_deployment_and_a_template_create():
    pre = [{"name": "db", "tcp": {"host": "db", "port": 1}}]
    assert rights({"selector": {"matchLabels": {"a": "b"}}, "preconditions": pre}) == [
        ("spec.selector", "patch", "apps", "deployments", "")]
    template = {"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
        "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    assert rights({"template": template, "preconditions": pre}) == [
        ("spec.template", "create", "apps", "deployments", ""),
        ("spec.template", "patch", "apps", "deployments", "web")]


def test_the_right_follows_the_target_kind_every_kind_a_selector_names():
    """Gating a StatefulSet or a Job is changing its pod template: the author must be allowed to patch
    that kind, not Deployments."""
    pre = [{"name": "db", "tcp": {"host": "db", "port": 1}}]
    assert rights({"workloadRef": {"kind": "StatefulSet", "name": "pg"}, "preconditions": pre}) == [
        ("spec.workloadRef", "patch", "apps", "statefulsets", "pg")]
    assert rights({"workloadRef": {"kind": "Job", "name": "migrate"}, "preconditions": pre}) == [
        ("spec.workloadRef", "patch", "batch", "jobs", "migrate")]
    assert rights({"selector": {"matchLabels": {"a": "b"}, "kinds": ["CronJob", "DaemonSet"]},
                   "preconditions": pre}) == [
        ("spec.selector", "patch", "batch", "cronjobs", ""), ("spec.selector", "patch", "apps", "daemonsets", "")]


def test_a_kind_not_served_yet_needs_no_right_until_it_is():
    pre = [{"name": "w", "resource": {"apiVersion": "nope.io/v1", "kind": "Nope", "name": "x"}}]
    unserved: list[str] = []
    got = authority.required(parse({"workloadRef": {"name": "a"}, "preconditions": pre}), "team-b",
                             lambda v, k: None, unserved)
    assert [(a.field, a.verb) for a in got] == [("spec.workloadRef", "patch")]
    assert unserved == ["spec.preconditions[0].resource: the API server serves no kind Nope in nope.io/v1 (yet)"]
    served = authority.required(parse({"workloadRef": {"name": "a"}, "preconditions": pre}), "team-b",
                                lambda v, k: "nopes")
    assert [(a.field, a.resource) for a in served][-1] == ("spec.preconditions[0].resource", "nopes")


def test_the_review_and_the_refusal_say_who_what_and_where():
    access = authority.Access("spec.workloadRef", "patch", "apps", "deployments", "team-b", "payments")
    body = authority.review_body(ALICE, access)
    assert body["spec"] == {"user": "alice", "uid": "u-1", "groups": ["team-b", "system:authenticated"],
                            "extra": {"scopes": ["a"]},
                            "resourceAttributes": {"namespace": "team-b", "verb": "patch", "group": "apps",
                                                   "resource": "deployments", "name": "payments"}}
    text = authority.refusal(ALICE, [authority.Denied(access)])
    assert text.startswith("spec.workloadRef: alice may not patch deployments.apps 'payments' in namespace team-b")


def test_largest_field_follows_the_bulk():
    big = {"spec": {"a": "x", "template": {"env": [{"v": "y" * 1000}, {"v": "z" * 10}]}}}
    path, size = authority.largest_field(big)
    assert path == "spec.template.env[0].v" and size > 1000
    assert authority.largest_field({"a": 1, "b": 2})[0] == "(the whole object)"


def test_the_installs_webhook_configurations_are_the_operators():
    docs = [d for d in yaml.safe_load_all((REPO / "manifests/base/webhook.yaml").read_text()) if d]
    shipped = {d["kind"]: d for d in docs if d["kind"].endswith("WebhookConfiguration")}

    def client(path: str) -> dict:
        return {"service": {"name": "depgate-webhook", "namespace": "depgate-system", "path": f"/{path}", "port": 443}}

    for want in webhook.configurations(client, webhook.service_account_user("depgate-system")):
        assert json.loads(json.dumps(shipped[want["kind"]])) == want, want["kind"]


class FakeKube:
    """depgate.kube.Kube's two calls the Gate makes, answered from a set of allowed rights."""

    def __init__(self, allowed: set[tuple[str, str, str, str]]) -> None:
        self.allowed = allowed
        self.reviews = 0

    def review_access(self, review: dict) -> tuple[bool, str]:
        self.reviews += 1
        a = review["spec"]["resourceAttributes"]
        ok = (review["spec"]["user"], a["verb"], a["resource"], a.get("name", "")) in self.allowed
        return ok, "" if ok else "no RBAC policy matched"

    def plural(self, api_version: str, kind: str) -> str:
        raise LookupError(kind)


def test_the_reconcile_check_uses_the_recorded_author_and_a_lost_right_stops_the_policy_after_the_cache():
    now = [0.0]
    kube = FakeKube({("alice", "patch", "deployments", "payments")})
    gate = webhook.Gate(kube, KEY, OPERATOR, clock=lambda: now[0])  # type: ignore[arg-type]
    policy_obj = signed(SPEC, ALICE)
    policy = spec.parse_policy(policy_obj)
    assert gate.authorize(policy_obj, policy) is None
    assert gate.authorize(policy_obj, policy) is None and kube.reviews == 1  # answered from the cache
    kube.allowed.clear()  # alice's RoleBinding is deleted
    now[0] += webhook.REVIEW_TTL_SECONDS - 1
    assert gate.authorize(policy_obj, policy) is None
    now[0] += 2
    refused = gate.authorize(policy_obj, policy)
    assert refused is not None
    assert refused.startswith("spec.workloadRef: alice may not patch deployments.apps 'payments'")
    assert "no author recorded" in (gate.authorize(obj(SPEC), policy) or "")


def test_admission_refuses_the_requester_lacking_a_right_and_checks_fresh():
    kube = FakeKube({("alice", "patch", "deployments", "payments")})
    gate = webhook.Gate(kube, KEY, OPERATOR)  # type: ignore[arg-type]
    new = obj(SPEC, generation=1)
    for user, ok in (({"username": "alice"}, True), ({"username": "mallory"}, False)):
        annotations = gate.mutate("CREATE", None, new, user)
        admitted = copy.deepcopy(new)
        admitted["metadata"]["annotations"] = dict(annotations)
        warnings: list[str] = []
        refused = gate.admit("CREATE", None, admitted, user, warnings)
        assert (refused is None) == ok, refused
    # a request whose recorded author is someone else (the mutating webhook skipped) is refused
    alice_signed = signed(SPEC, ALICE)
    assert "is not the one making this request" in gate.admit("CREATE", None, alice_signed, {"username": "mallory"}, [])
    # unchanged spec and author: nothing to check
    reviews = kube.reviews
    assert gate.admit("UPDATE", alice_signed, copy.deepcopy(alice_signed), {"username": "mallory"}, []) is None
    assert kube.reviews == reviews


def test_a_namespaces_trusted_policies_are_remembered_until_one_of_its_policies_changes(monkeypatch):
    from depgate import handlers
    from depgate.settings import Settings

    op = handlers.Operator(Settings())
    op.gate = webhook.Gate(None, KEY, OPERATOR)  # type: ignore[arg-type]
    good = signed(SPEC, ALICE)
    ns, name = good["metadata"]["namespace"], good["metadata"]["name"]
    op.wiring.policy_seen((ns, name), good)
    calls = []
    real = webhook.Gate.trusted
    monkeypatch.setattr(webhook.Gate, "trusted", lambda self, o: calls.append(1) or real(self, o))
    assert [p.name for p in op.namespace_policies(ns)] == [name]
    assert [p.name for p in op.namespace_policies(ns)] == [name] and len(calls) == 1  # the second from memory
    edited = copy.deepcopy(good)
    edited["metadata"]["generation"] = 2  # changed without the webhook: its signature no longer verifies
    op.wiring.policy_seen((ns, name), edited)
    assert op.namespace_policies(ns) == [] and len(calls) == 2
    op.wiring.policy_seen((ns, name), signed(SPEC, ALICE, generation=3))
    assert [p.name for p in op.namespace_policies(ns)] == [name]
    other = copy.deepcopy(good)
    other["metadata"]["namespace"] = "team-c"  # signed for team-b: never trusted in another namespace
    op.wiring.policy_seen(("team-c", name), other)
    assert op.namespace_policies("team-c") == []


def test_the_policies_that_may_target_a_workload_are_only_those_whose_author_verifies() -> None:
    from depgate import handlers
    from depgate.settings import Settings

    op = handlers.Operator(Settings())
    op.gate = webhook.Gate(None, KEY, OPERATOR)  # type: ignore[arg-type]
    good = signed(SPEC, ALICE)
    ns, name = good["metadata"]["namespace"], good["metadata"]["name"]
    op.wiring.policy_seen((ns, name), good)
    forged = copy.deepcopy(good)
    forged["metadata"]["name"] = "forged"  # the signature is p's: it does not verify for another name
    op.wiring.policy_seen((ns, "forged"), forged)
    payments = {"kind": "Deployment", "metadata": {"name": "payments", "namespace": ns}}
    assert [p.name for p in op.wiring.rivals_of(ns, [payments])] == ["forged", name]
    assert [p.name for p in op.namespace_policies(ns, [payments])] == [name]
    assert op.namespace_policies(ns, [{"kind": "Deployment", "metadata": {"name": "other"}}]) == []
