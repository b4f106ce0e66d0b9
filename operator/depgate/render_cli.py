"""`depgate render`: print workloads as the operator would apply them (or, for a Job, as depgate's
admission webhook renders it when it is created), offline.

    depgate render -f policy.yaml -f deployment.yaml [--waiter-image IMG] [-o yaml|json]

Every -f is a file of one or more YAML/JSON documents (`-` is standard input, a directory its
.yaml/.yml/.json files; a `kind: List` is opened). DependencyPolicies are rendered against the
workloads given (Deployments, StatefulSets, DaemonSets, CronJobs, Jobs), through the same functions
the operator uses (depgate.spec, depgate.plan, depgate.render); other kinds are ignored. A policy
whose target is not in the files, or cannot be rendered, is reported (exit 1) and the others are
still printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from depgate import registry
from depgate.constants import APPLIED_HASH_ANNOTATION
from depgate.constants import WAITER_IMAGE_ENV as WAITER_IMAGE_ENV
from depgate.plan import body_hash, selects
from depgate.render import (
    DEFAULT_WAITER_IMAGE,
    RenderConfig,
    apply_body,
    base_from_template,
    owner_reference,
    render_errors,
    rendered,
    rendered_template,
)
from depgate.spec import KIND, Policy, Selector, SpecError, WorkloadRef, parse_policy


class RenderFailure(Exception):
    """What `depgate render` prints after `error: ` before exiting 1."""


@dataclass(frozen=True)
class Document:
    obj: Mapping[str, Any]
    source: str  # "policy.yaml document 2"


def load_documents(paths: Sequence[str], stdin: TextIO | None = None) -> list[Document]:
    docs: list[Document] = []
    expanded: list[str] = []
    for path in paths:  # a directory stands for its .yaml, .yml and .json files, like kubectl -f DIR
        if path != "-" and os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml", ".json")))
            expanded += [os.path.join(path, n) for n in names]
        else:
            expanded.append(path)
    for path in expanded:
        if path == "-":
            text = (stdin or sys.stdin).read()
            label = "<stdin>"
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise RenderFailure(f"{path}: {exc.strerror or exc}") from None
            label = path
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise RenderFailure(f"{label}: not valid YAML: {exc}") from None
        for i, obj in enumerate(loaded, start=1):
            if obj is None:
                continue
            if not isinstance(obj, Mapping):
                raise RenderFailure(f"{label} document {i}: not an object")
            items = obj.get("items") if obj.get("kind") == "List" else [obj]
            for item in items or []:
                if isinstance(item, Mapping):
                    docs.append(Document(item, f"{label} document {i}"))
    return docs


def _is_deployment(obj: Mapping[str, Any]) -> bool:
    """A workload of a kind a policy can target (the name is what it meant when only Deployments could)."""
    kind = registry.WORKLOAD_KINDS.get(str(obj.get("kind")))
    return kind is not None and kind.gated and str(obj.get("apiVersion", kind.api.api_version)) == kind.api.api_version


def _same_namespace(policy: Policy, deployment: Mapping[str, Any]) -> bool:
    ns = (deployment.get("metadata") or {}).get("namespace")
    return policy.namespace is None or ns is None or ns == policy.namespace


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _with_applied_hash(deployment: dict[str, Any], applied: Mapping[str, Any]) -> dict[str, Any]:
    """The annotation the operator's apply carries: the hash of its apply body (depgate.plan), by
    which it knows the Deployment up to date. Printed too, so that applying render's output (or
    `kubectl diff --server-side --field-manager=depgate` of it) changes nothing the operator did."""
    annotations = deployment["metadata"].setdefault("annotations", {})
    annotations[APPLIED_HASH_ANNOTATION] = body_hash(applied)
    return deployment


@dataclass
class Rendered:
    objs: list[dict[str, Any]]
    warnings: list[str]
    errors: list[str]  # per policy: its target is missing, or it cannot be rendered (the others still are)


def render_documents(docs: Iterable[Document], config: RenderConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """Every target workload as the operator would apply it, and warnings. Raises RenderFailure on
    the first policy that cannot be rendered (render_all goes on with the others)."""
    got = render_all(docs, config)
    if got.errors:
        raise RenderFailure(got.errors[0])
    return got.objs, got.warnings


def render_all(docs: Iterable[Document], config: RenderConfig) -> Rendered:
    """Every target workload of every policy in `docs`; a policy that fails is said in `errors` and
    the others are rendered. Raises RenderFailure when nothing can be: a policy that does not parse,
    or no policy at all."""
    docs = list(docs)
    deployments = [d for d in docs if _is_deployment(d.obj)]
    policies: list[tuple[Policy, Document]] = []
    for doc in docs:
        if doc.obj.get("kind") != KIND:
            continue
        try:
            policies.append((parse_policy(doc.obj), doc))
        except SpecError as exc:
            raise RenderFailure(f"{exc.field_path}: {exc.message} ({KIND} {_name(doc.obj)}, {doc.source})") from None
    if not policies:
        raise RenderFailure(f"no {KIND} in the given files")

    got = Rendered([], [], [])
    claimed: dict[tuple[str, str, str], str] = {}
    for policy, doc in policies:
        where = f"({KIND} {policy.name}, {doc.source})"
        if isinstance(policy.target, WorkloadRef):
            ref = policy.target
            targets = [d.obj for d in deployments if _same_namespace(policy, d.obj) and _matches(policy, d.obj)]
            if not targets:
                got.errors.append(f"spec.workloadRef.name: {ref.kind} {ref.name!r} is not in the given files {where}")
                continue
            targets = targets[:1]
        elif isinstance(policy.target, Selector):
            targets = [d.obj for d in deployments if _same_namespace(policy, d.obj) and _matches(policy, d.obj)]
            if not targets:
                kinds = " or ".join(f"{k}s" for k in policy.target.kinds)
                got.warnings.append(f"{KIND} {policy.name}: spec.selector matches none of the given {kinds}")
        else:
            errors = render_errors(policy, base_from_template(policy), config)
            if errors:
                got.errors.append(f"{errors[0]} {where}")
                continue
            owner = owner_reference(policy)
            created = rendered_template(policy, config, owner)
            # the operator's hash covers the ownerReference: known only for a policy read back with its uid
            got.objs.append(_with_applied_hash(created, copy.deepcopy(created)) if owner is not None else created)
            continue
        for target in targets:
            kind = str(target.get("kind") or registry.DEPLOYMENT.kind)
            key = (str((target.get("metadata") or {}).get("namespace") or policy.namespace or ""), kind, _name(target))
            if key in claimed:
                got.errors.append(f"{kind} {key[2]!r} is targeted by both {KIND} {claimed[key]} and {policy.name} "
                                  "(the operator applies the first and reports Conflict on the other)")
                continue
            claimed[key] = policy.name
            errors = render_errors(policy, target, config)
            if errors:
                got.errors.append(f"{errors[0]} {where}")
                continue
            got.objs.append(_with_applied_hash(rendered(policy, target, config), apply_body(policy, target, config)))
    return got


def _matches(policy: Policy, workload: Mapping[str, Any]) -> bool:
    """plan.selects, for a file's object that may name no namespace (it then takes the policy's)."""
    md = dict(workload.get("metadata") or {})
    if policy.namespace and not md.get("namespace"):
        md["namespace"] = policy.namespace
    return selects(policy, {**workload, "kind": workload.get("kind") or registry.DEPLOYMENT.kind, "metadata": md})


class _Dumper(yaml.SafeDumper):
    """Quotes the strings YAML 1.1 readers (kubectl among them) take for booleans: y, n, ..."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if data in ("y", "Y", "n", "N"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'")
    return dumper.represent_str(data)


_Dumper.add_representer(str, _represent_str)


def dump(objs: Sequence[Mapping[str, Any]], output: str) -> str:
    if output == "json":
        if len(objs) == 1:
            return json.dumps(objs[0], indent=2) + "\n"
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}, indent=2) + "\n"
    return "---\n".join(
        yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1_000_000) for obj in objs
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="depgate render",
        description="Print every target workload as the operator would apply it (offline).",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="policies and workloads: a YAML or JSON file (several documents allowed), a directory, "
        "or '-' for stdin; repeatable",
    )
    p.add_argument(
        "--waiter-image",
        default=os.environ.get(WAITER_IMAGE_ENV) or DEFAULT_WAITER_IMAGE,
        help=f"image of the init containers (default: ${WAITER_IMAGE_ENV}, else {DEFAULT_WAITER_IMAGE})",
    )
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = RenderConfig(waiter_image=args.waiter_image)
    try:
        got = render_all(load_documents(args.filename), config)
    except RenderFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for warning in got.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if got.objs:
        sys.stdout.write(dump(got.objs, args.output))
    for error in got.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if got.errors else 0
