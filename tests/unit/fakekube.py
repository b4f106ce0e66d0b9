"""An in-memory API server behind the interface of depgate.kube.Kube, for unit tests of the Reconciler.

Just enough of the real one: objects as plain dicts with uid, resourceVersion (one counter for all
writes) and generation; server-side apply merging the body into the live object, list maps keyed
as Kubernetes keys them (init containers, volumes and mounts; in the order render.ssa_merged_order
models, unless `merge_order` says otherwise), conditional on metadata.resourceVersion when the body
names one (a mismatch raises kube.Changed, a missing object kube.Gone); fields a manager stops
applying removed unless another manager also owns them (the user, for what `put` wrote; forced
applies take over fields whose value they change); JSON patches (test, add, replace); the status
subresource; Events. What the real server adds (defaults, admission, validation) it does not: tests
that need a refusal inject it (`fail`), and what a controller or a person changes meanwhile is `edit`.

`writes` lists every write depgate made (apply, json_patch, status), `events` every Event.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from depgate import render, spec
from depgate.kube import Changed, Gone

Obj = dict[str, Any]
Key = tuple[str, str, str | None, str]  # (apiVersion, kind, namespace, name)
Path = tuple[Any, ...]  # dict keys, and (key field, value) for an item of a list map

DEPGATE = "depgate"
USER = "user"
# list maps: the field that keys their items (every other list is atomic: replaced whole)
LIST_KEYS = {"initContainers": "name", "containers": "name", "volumes": "name", "volumeMounts": "mountPath",
             "env": "name", "ports": "containerPort"}
IDENTITY = ("name", "namespace", "resourceVersion", "uid", "generation")  # metadata no manager owns


@dataclass
class Injected:
    method: str
    error: Exception
    times: int
    when: Callable[..., bool]


@dataclass
class FakeKube:
    # the order of a list map after a merge: (live keys, applied keys) -> keys
    merge_order: Callable[[list[str], list[str]], list[str]] = render.ssa_merged_order
    objects: dict[Key, Obj] = field(default_factory=dict)
    managed: dict[Key, dict[str, set[Path]]] = field(default_factory=dict)
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, kind, name) of depgate's writes
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    reads: int = 0
    _injected: list[Injected] = field(default_factory=list)
    _before: list[tuple[str, Callable[..., None]]] = field(default_factory=list)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    # ------------------------------------------------------------------ test controls

    def put(self, obj: Mapping[str, Any]) -> Obj:
        """Create or replace an object as a person would (every field theirs; the status stays,
        as with a status subresource, unless `obj` brings one)."""
        obj = copy.deepcopy(dict(obj))
        md = obj.setdefault("metadata", {})
        key = _key(obj)
        old = self.objects.get(key)
        if old is not None and "status" in old:
            obj.setdefault("status", old["status"])
        md.setdefault("uid", (old or {}).get("metadata", {}).get("uid") or f"uid-{md['name']}")
        md["generation"] = int((old or {}).get("metadata", {}).get("generation") or 0) + 1
        self._store(key, obj)
        self.managed.setdefault(key, {})[USER] = _paths(obj)
        return copy.deepcopy(obj)

    def edit(self, api_version: str, kind: str, namespace: str | None, name: str,
             change: Callable[[Obj], None]) -> None:
        """Another writer changes the object (a controller's status, a person's label): a new version."""
        key = (api_version, kind, namespace, name)
        change(self.objects[key])
        self._store(key, self.objects[key])

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.objects.pop((api_version, kind, namespace, name), None)
        self.managed.pop((api_version, kind, namespace, name), None)

    def fail(self, method: str, error: Exception, *, times: int = 1,
             when: Callable[..., bool] = lambda *a, **kw: True) -> None:
        """The next `times` calls of `method` whose arguments `when` accepts raise `error`."""
        self._injected.append(Injected(method, error, times, when))

    def before(self, method: str, action: Callable[..., None]) -> None:
        """Run `action` with the call's arguments before every later call of `method` (say, a
        Deployment changing meanwhile)."""
        self._before.append((method, action))

    def stored(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        """The object as stored, without counting a read or running any hook."""
        obj = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    # ------------------------------------------------------------------ the Kube interface

    def get(self, api_version: str, kind: str, namespace: str | None, name: str, *,
            timeout: float | None = None) -> Obj | None:
        self._enter("get", api_version, kind, namespace, name)
        self.reads += 1
        return self.stored(api_version, kind, namespace, name)

    def items(self, api_version: str, kind: str, namespace: str | None, *,
              label_selector: str | None = None) -> list[Obj]:
        self._enter("items", api_version, kind, namespace, label_selector=label_selector)
        self.reads += 1
        wanted = dict(term.split("=", 1) for term in label_selector.split(",")) if label_selector else {}
        return [copy.deepcopy(o) for (av, k, ns, _), o in sorted(self.objects.items(), key=lambda kv: kv[0][3])
                if (av, k, ns) == (api_version, kind, namespace)
                and all((o["metadata"].get("labels") or {}).get(lk) == lv for lk, lv in wanted.items())]

    def apply(self, body: Mapping[str, Any]) -> Obj:
        self._enter("apply", body)
        key, md = _key(body), body["metadata"]
        live = self.objects.get(key)
        if md.get("resourceVersion") is not None:
            if live is None:
                raise Gone(f"{body['kind']} {md['name']} is gone")
            if live["metadata"]["resourceVersion"] != md["resourceVersion"]:
                raise Changed(f"{body['kind']} {md['name']} changed meanwhile")
        if live is None:
            live = {"apiVersion": body["apiVersion"], "kind": body["kind"],
                    "metadata": {"name": md["name"], "namespace": md.get("namespace"), "uid": f"uid-{md['name']}",
                                 "generation": 0}}
        new_paths = _paths(body)
        owners = self.managed.setdefault(key, {})
        before = copy.deepcopy(live)
        for path in new_paths:  # forced: another manager loses a field whose value this apply changes
            if isinstance(path[-1], tuple):
                continue  # an item of a list map is shared by whoever names it
            for manager, paths in owners.items():
                if manager != DEPGATE and path in paths and _at(before, path) != _at(body, path):
                    paths.discard(path)
        merged = _merge(copy.deepcopy(live), body, self.merge_order)
        others = set().union(*(p for m, p in owners.items() if m != DEPGATE))
        for path in sorted(owners.get(DEPGATE, set()) - new_paths, key=len, reverse=True):
            if not any(o[:len(path)] == path for o in others):
                _remove(merged, path)
        owners[DEPGATE] = new_paths
        if _spec_changed(before, merged):
            merged["metadata"]["generation"] = int(merged["metadata"].get("generation") or 0) + 1
        self._store(key, merged)
        self.writes.append(("apply", body["kind"], md["name"]))
        return copy.deepcopy(merged)

    def json_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                   ops: list[dict[str, Any]]) -> Obj | None:
        self._enter("json_patch", api_version, kind, namespace, name, ops)
        key = (api_version, kind, namespace, name)
        if key not in self.objects:
            return None
        obj = copy.deepcopy(self.objects[key])
        for op in ops:
            parts = [p for p in op["path"].split("/") if p]
            parent = obj
            for p in parts[:-1]:
                parent = parent[int(p)] if isinstance(parent, list) else parent[p]
            if op["op"] == "test":
                if parent.get(parts[-1]) != op["value"]:
                    raise Changed(f"{kind} {name}: the test of {op['path']} failed")
            elif op["op"] in ("add", "replace"):
                parent[parts[-1]] = copy.deepcopy(op["value"])
            else:
                raise NotImplementedError(op["op"])
        self._store(key, obj)
        self.writes.append(("json_patch", kind, name))
        return copy.deepcopy(obj)

    def replace_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> Obj | None:
        self._enter("replace_status", namespace, name, status)
        key = (spec.API_VERSION, spec.KIND, namespace, name)
        if key not in self.objects:
            return None
        self.objects[key]["status"] = copy.deepcopy(dict(status))
        self._store(key, self.objects[key])
        self.writes.append(("status", spec.KIND, name))
        return copy.deepcopy(self.objects[key])

    def event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self._enter("event", involved, type_, reason, message)
        self.events.append((type_, reason, message))

    # ------------------------------------------------------------------ inside

    def _enter(self, method: str, *args: Any, **kwargs: Any) -> None:
        for name, action in list(self._before):
            if name == method:
                action(*args, **kwargs)
        for inj in self._injected:
            if inj.method == method and inj.times > 0 and inj.when(*args, **kwargs):
                inj.times -= 1
                raise inj.error

    def _store(self, key: Key, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = obj


def _key(obj: Mapping[str, Any]) -> Key:
    md = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], md.get("namespace"), md["name"])


def _paths(obj: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    """The fields an object (or apply body) sets, as paths; metadata's identity is nobody's."""
    out: set[Path] = set()
    for k, v in obj.items():
        if prefix == () and k in ("apiVersion", "kind", "status"):
            continue
        if prefix == ("metadata",) and k in IDENTITY:
            continue
        path = (*prefix, k)
        if isinstance(v, Mapping) and v:
            out |= _paths(v, path)
        elif isinstance(v, list) and k in LIST_KEYS:
            for item in v:
                item_path = (*path, (LIST_KEYS[k], item[LIST_KEYS[k]]))
                out.add(item_path)
                out |= {p for p in _paths(item, item_path) if p != (*item_path, LIST_KEYS[k])}
        else:
            out.add(path)
    return out


def _step(node: Any, part: Any) -> Any:
    if isinstance(part, tuple):
        field_name, value = part
        return next((i for i in node or [] if isinstance(i, Mapping) and i.get(field_name) == value), None)
    return node.get(part) if isinstance(node, Mapping) else None


def _at(obj: Any, path: Path) -> Any:
    for part in path:
        obj = _step(obj, part)
    return obj


def _merge(live: Obj, body: Mapping[str, Any],
           merge_order: Callable[[list[str], list[str]], list[str]]) -> Obj:
    for k, v in body.items():
        if isinstance(v, Mapping) and v and isinstance(live.get(k), dict):
            _merge(live[k], v, merge_order)
        elif isinstance(v, list) and k in LIST_KEYS and isinstance(live.get(k), list):
            key = LIST_KEYS[k]
            have = {i[key]: i for i in live[k]}
            given = {i[key]: i for i in v}
            order = merge_order([str(i[key]) for i in live[k]], [str(i[key]) for i in v])
            by_str = {str(n): n for n in [*have, *given]}
            merged = []
            for s in order:
                n = by_str[s]
                if n in have and n in given:
                    merged.append(_merge(have[n], given[n], merge_order))
                else:
                    merged.append(copy.deepcopy(have.get(n) or given[n]))
            live[k] = merged
        else:
            live[k] = copy.deepcopy(v)
    return live


def _remove(obj: Obj, path: Path) -> None:
    """Remove the field at `path`, then every map or list it leaves empty."""
    nodes: list[Any] = [obj]
    for part in path[:-1]:
        nxt = _step(nodes[-1], part)
        if nxt is None:
            return
        nodes.append(nxt)
    parent, last = nodes[-1], path[-1]
    if isinstance(last, tuple):
        parent[:] = [i for i in parent if not (isinstance(i, Mapping) and i.get(last[0]) == last[1])]
    elif isinstance(parent, dict):
        parent.pop(last, None)
    for depth in range(len(nodes) - 1, 0, -1):  # prune what became empty, innermost first
        node, holder, part = nodes[depth], nodes[depth - 1], path[depth - 1]
        if node:
            break
        if isinstance(part, tuple):
            holder[:] = [i for i in holder if i is not node]
        else:
            holder.pop(part, None)


def _spec_changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    return before.get("spec") != after.get("spec")
