"""`kubectl depgate` (depgate.kubectl_plugin): the text it prints, from objects shaped as the API returns them.
Through the real kubectl's plugin mechanism on a real plane: tests/integration/test_kubectl_plugin.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from depgate.gates import GATE, held_message
from depgate.kubectl_plugin import (
    KIND_WORDS,
    Cluster,
    Why,
    _why,
    age,
    explain,
    graph_argv,
    held,
    jobs_of_cron_job,
    parser,
    pods_of_workload,
    selector_string,
    status_rows,
    table,
)

NOW = datetime(2026, 12, 1, 13, 0, 0, tzinfo=UTC)
REFUSED = "Timeout: Refused: connect to data-tier:6379: connection refused after 30s"


def pod(*statuses: dict[str, Any], inits: tuple[str, ...] = ("depgate-redis-port", "depgate-dns")) -> dict[str, Any]:
    return {
        "metadata": {"name": "app-1", "namespace": "apps"},
        "spec": {"initContainers": [{"name": n, "image": "depgate/depgate:test"} for n in inits],
                 "containers": [{"name": "server", "image": "node:20"}]},
        "status": {"phase": "Pending", "conditions": [{"type": "Initialized", "status": "False"}],
                   "initContainerStatuses": list(statuses)},
    }


CRASHING = {"name": "depgate-redis-port", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 124, "reason": "Error", "message": REFUSED}}}
WAITING = {"name": "depgate-dns", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}
POLICY = {
    "metadata": {"name": "app", "namespace": "apps"},
    "status": {
        "targets": ["app"], "blocking": ["redis-port"],
        "pods": {"total": 2, "initializing": 2, "ready": 0},
        "conditions": [{"type": "Ready", "status": "False", "reason": "PreconditionsBlocking"}],
        "preconditions": [
            {"name": "redis-port", "type": "tcp", "state": "Blocking", "reason": "Timeout",
             "message": "Refused: connect to data-tier:6379: connection refused after 30s", "blockedPods": 2,
             "since": "2026-12-01T12:56:48Z"},
            {"name": "dns", "type": "dns", "state": "Pending", "reason": "NotReached",
             "message": "no pod has reached init container depgate-dns yet", "blockedPods": 0,
             "since": "2026-12-01T12:50:00Z"},
        ],
    },
}


def test_why_names_the_container_policy_precondition_state_since_and_the_logs():
    text = explain(Why(pod(CRASHING, WAITING), "app", POLICY, "line 1\nline 2\nline 3\n", None), NOW, tail=2)
    assert text.splitlines()[0] == "pod apps/app-1 is Init:0/2, on init container depgate-redis-port (1 of 2)"
    assert "  policy:        apps/app (gates deploy/app)" in text
    assert "  precondition:  redis-port (tcp)" in text
    assert "  state:         Blocking since 2026-12-01T12:56:48Z (3m12s ago)" in text
    assert "  reason:        Timeout" in text
    assert "  message:       Refused: connect to data-tier:6379: connection refused after 30s" in text
    assert "  in this pod:   waiting (CrashLoopBackOff); restarted 3 times; last exit 124\n" in text
    assert "  then:          depgate-dns" in text
    assert text.endswith("logs of depgate-redis-port (last 2 lines):\n  line 2\n  line 3\n")


def test_why_on_the_second_container_and_logs_unavailable_said_plainly():
    passed = {"name": "depgate-redis-port", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    running = {"name": "depgate-dns", "state": {"running": {"startedAt": "2026-12-01T12:59:00Z"}}}
    text = explain(Why(pod(passed, running), "app", POLICY, None, "the API server answered 500: no kubelet"), NOW)
    assert text.startswith("pod apps/app-1 is Init:1/2, on init container depgate-dns (2 of 2)\n")
    assert "  precondition:  dns (dns)" in text and "  state:         Pending since" in text
    assert "  in this pod:   running since 2026-12-01T12:59:00Z" in text
    assert "then:" not in text
    assert text.endswith("logs of depgate-dns: unavailable (the API server answered 500: no kubelet)\n")


def test_why_for_a_pod_past_depgate_or_on_someone_elses_init_container_or_without_a_policy():
    done = {"state": {"terminated": {"exitCode": 0}}}
    passed = pod({**done, "name": "depgate-redis-port"}, {**done, "name": "depgate-dns"})
    passed["status"]["conditions"] = [{"type": "Initialized", "status": "True"}]
    assert explain(Why(passed, "app", POLICY, None, None), NOW).startswith(
        "pod apps/app-1 has passed all its init containers (2/2), the 2 of depgate included\n")
    assert not held(passed)
    theirs = pod({"name": "migrate", "state": {"running": {}}}, inits=("migrate", "depgate-dns"))
    assert "on init container migrate (1 of 2), which is not depgate's" in explain(Why(theirs, "app", POLICY, None,
                                                                                       None), NOW)
    assert not held(theirs)
    orphan = explain(Why(pod(CRASHING, WAITING), "app", None, None, "x"), NOW)
    assert "policy:        none found (no DependencyPolicy claims Deployment app)" in orphan
    assert "state:" not in orphan and "  precondition:  redis-port\n" in orphan
    assert f"last exit 124: {REFUSED}\n" in orphan  # no status said it: the pod's own words
    assert held(pod(CRASHING, WAITING))
    plain = pod(inits=())
    assert explain(Why(plain, "web", None, None, None), NOW) == (
        "pod apps/app-1 has no depgate init containers (Deployment web is not gated)\n")


def test_status_table_across_namespaces():
    ready = {"metadata": {"name": "web", "namespace": "a"},
             "status": {"targets": ["web"], "preconditions": [{"name": "db", "state": "Satisfied"}],
                        "pods": {"total": 1, "initializing": 0, "ready": 1},
                        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}}
    fresh = {"metadata": {"name": "new", "namespace": "b"}}
    text = table(status_rows([POLICY, ready, fresh], NOW))
    lines = text.splitlines()
    assert lines[0].split() == ["NAMESPACE", "POLICY", "TARGETS", "READY", "BLOCKING", "BLOCKED-FOR", "PODS", "REASON"]
    assert lines[1].split() == ["a", "web", "deploy/web", "True", "-", "-", "1/1", "ready,", "0", "in", "init", "-"]
    assert lines[2].split() == ["apps", "app", "deploy/app", "False", "redis-port", "3m12s", "0/2", "ready,", "2", "in",
                                "init", "PreconditionsBlocking"]
    assert lines[3].split() == ["b", "new", "-", "-", "-", "-", "-", "-"]
    column = lines[0].index("POLICY")
    assert all(line[column - 3:column] == "   " and line[column] != " " for line in lines[1:])  # aligned
    per = table(status_rows([POLICY], NOW, preconditions=True)).splitlines()
    assert per[1].split() == ["apps", "app", "redis-port", "tcp", "Blocking", "3m12s", "2", "Timeout"]
    assert per[2].split() == ["apps", "app", "dns", "dns", "Pending", "10m", "0", "NotReached"]


def test_ages_and_selectors():
    assert [age(NOW - timedelta(seconds=s), NOW) for s in (5, 75, 700, 3600, 3660, 90000)] == [
        "5s", "1m15s", "11m", "1h", "1h1m", "1d1h"]
    assert age(None, NOW) == "-"
    assert selector_string({"matchLabels": {"app": "x", "tier": "web"},
                            "matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]},
                                                 {"key": "canary", "operator": "DoesNotExist"}]}) == (
        "app=x,tier=web,env in (a,b),!canary")


def test_what_the_pod_says_is_shown_when_it_tells_more_than_the_status():
    pulling = {"name": "depgate-redis-port", "restartCount": 0,
               "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}
    text = explain(Why(pod(pulling, WAITING), "app", POLICY, None, "x"), NOW)
    assert "  pod says:      ImagePullBackOff: Back-off pulling image" in text
    same = explain(Why(pod(CRASHING, WAITING), "app", POLICY, None, "x"), NOW)  # the status says it already
    assert "pod says:" not in same


def test_kubectls_flags_go_before_or_after_the_command():
    from depgate.kubectl_plugin import parser

    before = parser().parse_args(["-n", "apps", "--context", "c", "why", "pod/x"])
    after = parser().parse_args(["why", "pod/x", "-n", "apps", "--context", "c"])
    both = parser().parse_args(["-n", "one", "status", "-n", "two"])
    for args in (before, after):
        assert (args.namespace, args.context, args.kubeconfig, args.target) == ("apps", "c", None, "pod/x")
    assert both.namespace == "two"
    assert parser().parse_args(["status"]).namespace is None


# --------------------------------------------------------------------------- every gated kind (issue 20)


def owned(p: dict[str, Any], kind: str, name: str, **labels: str) -> dict[str, Any]:
    """The pod `p` as a controller of `kind` named `name` makes it (uid-less ownerReference)."""
    out = {**p, "metadata": {**p["metadata"], "ownerReferences": [
        {"apiVersion": "v1", "kind": kind, "name": name, "controller": True}], "labels": labels}}
    return out


def named(p: dict[str, Any], name: str) -> dict[str, Any]:
    return {**p, "metadata": {**p["metadata"], "name": name}}


class FakeCluster(Cluster):
    """Cluster's logic (workloads_of, policy_of) over objects in memory instead of the API server."""

    def __init__(self, workloads: dict[tuple[str, str], dict[str, Any]], policies: list[dict[str, Any]],
                 pods: list[dict[str, Any]]) -> None:
        self._workloads, self._policies, self._pods = workloads, policies, pods

    def workload(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return self._workloads.get((kind, name))

    def policy(self, ns: str, name: str) -> dict[str, Any] | None:
        return next((p for p in self._policies if p["metadata"]["name"] == name), None)

    def policies(self, ns: str | None) -> list[dict[str, Any]]:
        return self._policies

    def pod(self, ns: str, name: str) -> dict[str, Any]:
        return next(p for p in self._pods if p["metadata"]["name"] == name)

    def pods(self, ns: str, selector: Any) -> list[dict[str, Any]]:
        return self._pods  # every pod of the namespace: why must keep only the workload's own

    def jobs(self, ns: str) -> list[dict[str, Any]]:
        return [w for (kind, _), w in self._workloads.items() if kind == "Job"]

    def logs(self, pod: Any, container: str, tail: int) -> tuple[str | None, str | None]:
        return None, "no kubelet"


def gated_by(name: str, *targets: dict[str, str]) -> dict[str, Any]:
    return {**POLICY, "metadata": {"name": name, "namespace": "apps"},
            "status": {**POLICY["status"], "targets": list(targets)}}


def test_kubectls_words_for_every_gated_kind():
    for word, kind in {"deploy": "Deployment", "deployments.apps": "Deployment", "sts": "StatefulSet",
                       "statefulset": "StatefulSet", "ds": "DaemonSet", "daemonsets": "DaemonSet", "job": "Job",
                       "jobs.batch": "Job", "cj": "CronJob", "cronjob": "CronJob", "cronjobs.batch": "CronJob"}.items():
        assert KIND_WORDS[word] == kind, word
    assert "pod" not in KIND_WORDS and "svc" not in KIND_WORDS


def test_a_workloads_pods_are_its_own_and_a_cron_jobs_are_its_jobs():
    base = pod(CRASHING, WAITING)
    sts = named(owned(base, "StatefulSet", "db"), "db-0")
    ds = named(owned(base, "DaemonSet", "agent"), "agent-x7")
    job = named(owned(base, "Job", "nightly-29000"), "nightly-29000-abc")
    other_job = named(owned(base, "Job", "migrate"), "migrate-q")
    dep = named(owned(base, "ReplicaSet", "web-5d8f", **{"pod-template-hash": "5d8f"}), "web-5d8f-1")
    pods = [sts, ds, job, other_job, dep]
    assert pods_of_workload(("StatefulSet", "db"), pods) == [sts]
    assert pods_of_workload(("DaemonSet", "agent"), pods) == [ds]
    assert pods_of_workload(("Job", "migrate"), pods) == [other_job]
    assert pods_of_workload(("Deployment", "web"), pods) == [dep]
    assert pods_of_workload(("CronJob", "nightly"), pods, ["nightly-29000"]) == [job]
    cron = {"metadata": {"name": "nightly", "uid": "u1"}}
    jobs = [{"metadata": {"name": n, "ownerReferences": [{"kind": "CronJob", "name": "nightly", "uid": uid,
                                                          "controller": True}]}}
            for n, uid in (("nightly-2", "u1"), ("nightly-1", "u1"), ("nightly-9", "old-uid"))]
    assert [j["metadata"]["name"] for j in jobs_of_cron_job(cron, jobs)] == ["nightly-1", "nightly-2"]


def test_why_sts_ds_job_and_cj_name_the_policy_and_precondition_of_each_held_pod():
    base = pod(CRASHING, WAITING)
    sts = named(owned(base, "StatefulSet", "db"), "db-0")
    ds = named(owned(base, "DaemonSet", "agent"), "agent-x7")
    cron_pod = named(owned(base, "Job", "nightly-29000"), "nightly-29000-abc")
    job_pod = named(owned(base, "Job", "migrate"), "migrate-q")
    running = named(owned(pod(), "StatefulSet", "db"), "db-1")  # no depgate init containers: not explained
    workloads = {
        ("StatefulSet", "db"): {"metadata": {"name": "db", "annotations": {"depgate.io/policy": "data"}}},
        ("DaemonSet", "agent"): {"metadata": {"name": "agent"}},  # no claim annotation: status.targets says
        ("CronJob", "nightly"): {"metadata": {"name": "nightly", "uid": "u1"}},
        ("Job", "nightly-29000"): {"metadata": {"name": "nightly-29000", "ownerReferences": [
            {"kind": "CronJob", "name": "nightly", "uid": "u1", "controller": True}]}},
        ("Job", "migrate"): {"metadata": {"name": "migrate", "annotations": {"depgate.io/policy": "once"}}},
    }
    policies = [gated_by("data", {"kind": "StatefulSet", "name": "db"}),
                gated_by("agents", {"kind": "DaemonSet", "name": "agent"}),
                gated_by("batch", {"kind": "CronJob", "name": "nightly"}),
                gated_by("once", {"kind": "Job", "name": "migrate"})]
    cluster = FakeCluster(workloads, policies, [sts, ds, cron_pod, job_pod, running])

    def why(target: str) -> str:
        text, code = _why(cluster, "apps", target, 10, NOW)
        assert code == 0, text
        return text

    sts_text = why("sts/db")
    assert sts_text.startswith("statefulset apps/db: gated by policy apps/data; 2 pods, 1 held in depgate's "
                               "init containers\n"), sts_text
    assert "pod apps/db-0 is Init:0/2, on init container depgate-redis-port (1 of 2)" in sts_text
    assert "  policy:        apps/data (gates sts/db)\n" in sts_text and "db-1" not in sts_text
    assert "  precondition:  redis-port (tcp)\n  state:         Blocking since" in sts_text
    assert "  policy:        apps/agents (gates ds/agent)\n" in why("ds/agent")
    cj = why("cj/nightly")
    assert cj.startswith("cronjob apps/nightly: gated by policy apps/batch; 1 job, 1 pod, 1 held"), cj
    assert "pod apps/nightly-29000-abc is Init:0/2" in cj and "  policy:        apps/batch (gates cj/nightly)\n" in cj
    assert "  policy:        apps/once (gates job/migrate)\n" in why("job/migrate")
    assert why("job/nightly-29000").startswith("job apps/nightly-29000: gated by policy apps/batch; 1 pod, 1 held")
    # a pod of a CronJob's Job: the Job claims nothing, its CronJob's policy gates it
    pod_text = why("pod/nightly-29000-abc")
    assert "  policy:        apps/batch (gates cj/nightly)\n" in pod_text
    assert "  precondition:  redis-port (tcp)\n" in pod_text
    assert why("pod/db-0") == why("sts/db").split("\n\n", 1)[1]
    unknown, code = _why(cluster, "apps", "svc/db", 10, NOW)
    assert code == 2 and "pod/, deploy/, sts/, ds/, job/ or cj/NAME, not svc/" in unknown


def test_why_a_pod_held_at_the_scheduling_gate_says_so_and_why_it_stays():
    gated = {**pod(inits=()), "spec": {"containers": [{"name": "m"}], "schedulingGates": [{"name": GATE}]}}
    once = gated_by("once", {"kind": "Job", "name": "migrate"})
    text = explain(Why(gated, ("Job", "migrate"), once, None, None), NOW)
    assert text.startswith(f"pod apps/app-1 is held at depgate's scheduling gate {GATE}, without depgate's init")
    assert "  policy:        apps/once (gates job/migrate)\n" in text
    assert f"  why:           {held_message('once', 'Job', 'migrate', template_mutable=False)}\n" in text
    orphan = explain(Why(gated, ("StatefulSet", "db"), None, None, None), NOW)
    assert "none found (no DependencyPolicy claims StatefulSet db): depgate lifts the gate" in orphan
    plain = explain(Why(pod(inits=()), ("DaemonSet", "agent"), None, None, None), NOW)
    assert plain == "pod apps/app-1 has no depgate init containers (DaemonSet agent is not gated)\n"


def test_kubectl_depgate_graph_passes_its_flags_to_depgate_graph():
    def argv(*words: str) -> list[str]:
        return graph_argv(parser().parse_args(list(words)))

    assert argv("graph") == ["-o", "text"]
    assert argv("-n", "apps", "graph", "-o", "svg") == ["-o", "svg", "-n", "apps"]
    assert argv("graph", "-A", "--kubeconfig", "/k", "--context", "c") == [
        "-o", "text", "-A", "--kubeconfig", "/k", "--context", "c"]
    assert argv("graph", "-f", "a.yaml", "-f", "dir", "-o", "mermaid") == ["-o", "mermaid", "-f", "a.yaml", "-f", "dir"]
