"""Hypothesis-generated DependencyPolicies, schema-valid and not, applied to a running operator. Each
is either refused by the API server with a message naming a field, or accepted and explained in
its status (observedGeneration caught up, every condition present; InvalidSpec, Conflict,
TargetNotFound, ContainerNotFound... with a message for what the schema cannot see). The operator
never crashes, never retries in a hot loop, and never touches a Deployment no policy targets.
"""

from __future__ import annotations

import collections
import itertools
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from depgate import render, spec, status
from tests.chaos import policies as gen
from tests.chaos import support
from tests.chaos.conftest import sized

NAMES_A_FIELD = re.compile(r"\bspec(\.[A-Za-z]|\[|:)")


def canary_settled(api: support.Api, path: str) -> str:
    """kube-controller-manager writes a new Deployment's status a few times: wait until its
    resourceVersion has held still for 2 s, and return it."""
    seen: list[Any] = [None, 0.0]

    def check() -> list[str]:
        dep = api.get(path) or {}
        rv = dep.get("metadata", {}).get("resourceVersion")
        st_ = dep.get("status") or {}
        if rv != seen[0]:
            seen[:] = [rv, time.monotonic()]
        if st_.get("observedGeneration") != dep.get("metadata", {}).get("generation"):
            return ["status not observed yet"]
        held = time.monotonic() - seen[1]
        return [] if held >= 2 else [f"resourceVersion {rv} held {held:.1f}s"]

    support.poll(check, 60, "the canary's status to settle", interval=0.25)
    return str(seen[0])


def explained(pol: dict[str, Any] | None, name: str) -> list[str]:
    if pol is None:
        return [f"{name}: gone"]
    if not support.caught_up(pol):
        return [f"{name}: observedGeneration {(pol.get('status') or {}).get('observedGeneration')} "
                f"!= generation {pol['metadata']['generation']}"]
    missing = [t for t in status.CONDITION_TYPES if not support.condition(pol, t)]
    return [f"{name}: conditions {missing} missing"] if missing else []


def semantic_problems(pol: dict[str, Any], deps: dict[str, dict[str, Any]]) -> list[str]:
    """The status says what the pure modules say about this policy (the oracle)."""
    name = pol["metadata"]["name"]
    out: list[str] = []
    conds = {t: support.condition(pol, t) for t in status.CONDITION_TYPES}
    for t, c in conds.items():
        if c.get("status") not in ("True", "False", "Unknown") or not c.get("reason"):
            out.append(f"{name}: condition {t} is {c}")
    applied, stalled = conds["Applied"], conds["Stalled"]
    if applied.get("status") == "False" and not applied.get("message"):
        out.append(f"{name}: Applied False without a message")
    if stalled.get("status") == "True" and not stalled.get("message"):
        out.append(f"{name}: Stalled without a message")
    try:
        policy = spec.parse_policy(pol)
    except spec.SpecError as e:  # the schema let it through; the operator must say why it is refused
        if (stalled.get("status"), stalled.get("reason")) != ("True", "InvalidSpec") or \
                e.field_path not in stalled.get("message", ""):
            out.append(f"{name}: spec.parse_policy says {e}, Stalled is {stalled}")
        return out
    if isinstance(policy.target, spec.Template):
        try:
            render.rendered_template(policy, support.CONFIG, render.owner_reference(policy))
        except render.RenderProblem as e:
            if (applied.get("reason"), stalled.get("reason")) != ("InvalidTemplate", "InvalidSpec"):
                out.append(f"{name}: render refuses the template ({e}), Applied is {applied}, Stalled is {stalled}")
    if isinstance(policy.target, spec.WorkloadRef):
        dep = deps.get(policy.target.name)
        if dep is None:
            if applied.get("reason") != "TargetNotFound":
                out.append(f"{name}: targets a missing Deployment, Applied is {applied}")
        else:
            errors = render.render_errors(policy, render.without_ours(dep), support.CONFIG)
            claim = (dep["metadata"].get("annotations") or {}).get(render.ANNOTATION)
            if errors and applied.get("reason") not in (errors[0].reason, "Conflict"):
                out.append(f"{name}: render_errors says {errors[0]}, Applied is {applied}")
            if not errors and claim == name and applied.get("status") != "True":
                out.append(f"{name}: gates {dep['metadata']['name']} but Applied is {applied}")
    return out


@sized()
def test_generated_policies_are_refused_or_explained(sizes, api, namespace, operators, report):
    ns = namespace
    deploys, policies = support.DEPLOY.format(ns=ns), support.DP.format(ns=ns)
    targets = gen.targets(max(12, sizes.examples // 4))  # enough that most policies find one unclaimed
    for i, t in enumerate(targets):
        api.create(deploys, support.deployment(t, labels={"gated": "yes", "tier": "abc"[i % 3], "slot": f"s-{i}"},
                                               init=["own-init"] if i % 2 else [], extra_volume=i % 2 == 0))
    api.create(deploys, support.deployment(gen.CANARY, labels={"role": "canary", "tier": "a"}))
    canary_rv = canary_settled(api, f"{deploys}/{gen.CANARY}")
    ops = operators
    ops.start()

    counter = itertools.count()
    accepted: dict[str, str | None] = {}  # name -> the mutation the server let through (None: none)
    refused: list[tuple[str | None, int]] = []
    applies = [0]

    @settings(max_examples=sizes.examples, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(gen.policy_spec(targets), st.integers(0, 999))
    def apply_one(example: tuple[dict[str, Any], str | None], pick: int) -> None:
        body, mutation = example
        n = next(counter)
        reuse = n % 5 == 4 and accepted  # one in five changes an accepted policy (a new generation)
        name = sorted(accepted)[pick % len(accepted)] if reuse else f"gen-{n}"
        obj = {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy", "metadata": {"name": name},
               "spec": body}
        try:
            api.apply(f"{policies}/{name}", obj, "hypothesis")
        except support.ApiError as e:
            assert 400 <= e.status < 600 and NAMES_A_FIELD.search(e.message), \
                f"refused ({mutation}) without naming a field: {e.status} {e.message}\n{obj}"
            assert mutation is not None, f"a schema-valid policy was refused: {e.status} {e.message}\n{obj}"
            refused.append((mutation, e.status))
            return
        accepted[name] = mutation
        applies[0] += 1

    reconciles0 = ops.current.counter("depgate_reconciles_total")
    t0 = time.monotonic()
    apply_one()
    applied_in = time.monotonic() - t0
    assert accepted and refused, f"the generator made only one kind: {len(accepted)} accepted, {len(refused)} refused"

    def all_explained() -> list[str]:
        live = api.by_name(policies)
        return [p for n in accepted for p in explained(live.get(n), n)]

    took = support.poll(all_explained, sizes.converge_timeout, "every accepted policy explained in its status")
    support.settled(lambda: ops.current.counter("depgate_reconciles_total"), quiet=3.0, timeout=120)
    live, deps = api.by_name(policies), api.by_name(deploys)
    problems = [p for n in accepted for p in semantic_problems(live[n], deps)]
    assert not problems, "\n".join(problems[:30])

    canary = api.request("GET", f"{deploys}/{gen.CANARY}", query=[("showManagedFields", "true")])
    assert canary["metadata"]["resourceVersion"] == canary_rv, \
        f"the canary was written: {support.spec_diff({}, canary['metadata'].get('managedFields'))}"
    assert "depgate" not in {m["manager"] for m in canary["metadata"].get("managedFields") or []}
    assert ops.alive(), f"the operator died:\n{ops.current.log_text()[-4000:]}"
    assert not ops.tracebacks(), "\n".join(ops.tracebacks())

    reconciles = ops.current.counter("depgate_reconciles_total") - reconciles0
    per_policy = reconciles / len(accepted)
    reasons = collections.Counter(
        f"{support.condition(live[n], 'Applied').get('reason')}"
        + (f"/{support.condition(live[n], 'Stalled').get('reason')}"
           if support.condition(live[n], "Stalled").get("status") == "True" else "")
        for n in accepted)
    report(f"{len(refused) + applies[0]} examples in {applied_in:.1f}s: {len(refused)} refused by the API server "
           f"(HTTP {dict(collections.Counter(s for _, s in refused))}), {applies[0]} accepted "
           f"as {len(accepted)} policies ({sum(m is not None for m in accepted.values())} of them mutated), "
           f"all explained {took:.1f}s later")
    report(f"accepted, by Applied reason/Stalled reason: {dict(reasons.most_common())}")
    server_errors = sorted({str(m) for m, s in refused if s >= 500})
    if server_errors:
        report("refused with HTTP 500 ('failed to create typed patch object': server-side apply's answer "
               f"to a wrong type or an unknown field in a list item): {server_errors}")
    report(f"{reconciles:.0f} reconciles, {per_policy:.1f} per accepted policy, then quiet")
    assert per_policy <= 30, f"{per_policy:.1f} reconciles per policy: the operator retries in a loop"


@pytest.mark.chaos
def test_a_template_the_api_server_refuses_or_render_cannot_use_is_explained(api, namespace, operators,
                                                                             report):
    """Until b6908cb such a template made every reconcile raise: warnings in the log, a retry every
    60 s for good, and no status at all (no observedGeneration, no conditions)."""
    policies = support.DP.format(ns=namespace)
    tcp = [{"name": "db", "tcp": {"host": "db", "port": 5432}}]
    pod = {"containers": [{"name": "server", "image": "node:20"}]}
    deployment = {"replicas": 0, "selector": {"matchLabels": {"app": "w"}},
                  "template": {"metadata": {"labels": {"app": "w"}}, "spec": pod}}
    cases = {  # name: (template, preconditions, what the message must name)
        "bad-labels": ({"metadata": {"labels": {"bad key!": "x"}}, "spec": deployment}, tcp, "bad key!"),
        "no-containers": ({"spec": {"replicas": 0}}, tcp, "containers"),
        "missing-container": ({"spec": deployment},
                              [{"name": "await", "command": {"fromContainer": "missing", "command": ["true"]}}],
                              "missing"),
    }
    for name, (tmpl, pres, _) in cases.items():
        api.apply(f"{policies}/{name}", support.policy(name, {"template": tmpl}, pres), "chaos-test")
    ops = operators
    ops.start()
    support.poll(lambda: [p for n in cases for p in explained(api.get(f"{policies}/{n}"), n)],
                 60, "every policy explained in status")
    for name, (_, _, named) in cases.items():
        pol = api.get(f"{policies}/{name}")
        applied, stalled = support.condition(pol, "Applied"), support.condition(pol, "Stalled")
        report(f"{name}: Applied {applied.get('reason')}, Stalled {stalled.get('reason')}: {stalled.get('message')}")
        assert (applied.get("status"), applied.get("reason")) == ("False", "InvalidTemplate"), applied
        assert (stalled.get("status"), stalled.get("reason")) == ("True", "InvalidSpec"), stalled
        assert named in stalled.get("message", ""), f"{name}: the message does not name {named!r}: {stalled}"
    support.settled(lambda: ops.current.counter("depgate_reconciles_total"), quiet=3.0)
    assert not ops.tracebacks(), "\n".join(ops.tracebacks())
