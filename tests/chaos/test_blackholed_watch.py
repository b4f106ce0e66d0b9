"""A black-holed watch (issue 11): every connection between the operator and the API server stops
carrying bytes mid-run, without closing. The operator must notice within its inactivity bound
(`--watch-inactivity-seconds`), count and say it (depgate_watch_restarts_total{reason="silent"}, a
WARNING line), and converge on changes made during the silence, long before the API server's own
watch timeout (300 s) or the resync (an hour here) could paper over it.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos import support
from tests.chaos.blackhole import proxied_kubeconfig

BOUND = 6.0  # the inactivity bound this test runs the operator with (the default is 70 s)




def settings_state(api: support.Api, path: str) -> tuple[str | None, str | None]:
    pol = api.get(path) or {}
    e = next((e for e in (pol.get("status") or {}).get("preconditions") or [] if e.get("name") == "settings"), {})
    return e.get("state"), e.get("reason")


def gated_app(api: support.Api, ns: str) -> tuple[str, str]:
    """Deployment `app`, gated by policy `p` on key `a` of ConfigMap `cm` (not there yet)."""
    policies, cms = support.DP.format(ns=ns), support.CM.format(ns=ns)
    api.create(support.DEPLOY.format(ns=ns), support.deployment("app"))
    api.apply(f"{policies}/p", support.policy(
        "p", {"workloadRef": {"name": "app"}}, [{"name": "settings", "configMap": {"name": "cm", "keys": ["a"]}}]),
        "chaos-test")
    return policies, cms


def wait_state(api: support.Api, path: str, want: tuple[str, str], timeout: float, what: str) -> float:
    def check() -> list[str]:
        have = settings_state(api, path)
        return [] if have == want else [f"settings is {have}"]

    return support.poll(check, timeout, what)


@pytest.mark.chaos
def test_a_blackholed_watch_is_noticed_and_nothing_is_lost(proxy, api, namespace, operators, tmp_path, report):
    ns = namespace
    policies, cms = gated_app(api, ns)
    operators.kubeconfig = proxied_kubeconfig(operators.kubeconfig, proxy.port, tmp_path)
    op = operators.start("--resync-seconds=3600", f"--watch-inactivity-seconds={BOUND}")

    wait_state(api, f"{policies}/p", ("Blocking", "NotFound"), 60, "Blocking on the missing ConfigMap")
    silent_before = op.counter('depgate_watch_restarts_total{reason="silent"}')

    holed = proxy.blackhole()
    t_hole = time.monotonic()
    assert holed >= 5, f"expected the operator's watches (and more) through the proxy, found {holed} connections"
    # changes the operator cannot hear about on the connections it holds
    api.apply(f"{cms}/cm", support.config_map("cm", {"a": "1"}), "chaos-test")

    took = wait_state(api, f"{policies}/p", ("Satisfied", "KeysPresent"), BOUND + 90,
                      "Satisfied after the ConfigMap appeared during the silence")
    silent = op.counter('depgate_watch_restarts_total{reason="silent"}') - silent_before
    report(f"{holed} connections black-holed; Satisfied {took:.1f}s later (inactivity bound {BOUND:.0f}s); "
           f"{silent:.0f} silent watches restarted")
    assert silent >= 1, "the operator converged, but never counted a silent watch"
    assert "delivered nothing, not even a bookmark" in op.log_text()
    assert time.monotonic() - t_hole < 300, "converged only after the API server's own watch timeout"

    # and it keeps hearing: a change after the silence arrives through the restarted watches
    api.apply(f"{cms}/cm", support.config_map("cm", {"b": "1"}), "chaos-test")
    wait_state(api, f"{policies}/p", ("Blocking", "MissingKeys"), 30, "Blocking again (key a gone)")


@pytest.mark.chaos
def test_a_watch_that_hears_nothing_fails_the_liveness_probe(proxy, api, namespace, operators, tmp_path, report):
    """The case the inactivity bound cannot see (a watch that stays open, bookmarks or not, but
    delivers no change): depgate's own status write not delivered back within --echo-seconds fails
    /healthz, the kubelet's liveness probe, with a WARNING and depgate_watch_stale 1."""
    import urllib.error
    import urllib.request

    from tests.conftest import free_port

    ns = namespace
    policies, cms = gated_app(api, ns)
    health = free_port()
    direct = operators.kubeconfig
    operators.kubeconfig = proxied_kubeconfig(direct, proxy.port, tmp_path)
    # the inactivity bound far away: only the echo check can notice
    op = operators.start("--resync-seconds=3", "--watch-inactivity-seconds=600", "--echo-seconds=5",
                         f"--health-port={health}")

    def healthz() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    wait_state(api, f"{policies}/p", ("Blocking", "NotFound"), 60, "Blocking on the missing ConfigMap")
    support.poll(lambda: [] if healthz() == 200 else ["not healthy yet"], 30, "/healthz 200 while the watch hears")

    proxy.blackhole()
    # a change the operator's black-holed watches never deliver; its 3 s resync reads it on a new
    # connection and writes the status, which the policies watch then never delivers back
    api.apply(f"{cms}/cm", support.config_map("cm", {"a": "1"}), "chaos-test")
    wait_state(api, f"{policies}/p", ("Satisfied", "KeysPresent"), 90, "the resync's status write")
    try:
        took = support.poll(lambda: [] if healthz() == 500 else ["/healthz still 200"], 60,
                            "/healthz to fail once the policies watch stops delivering depgate's writes")
        assert op.counter("depgate_watch_stale") == 1
        assert op.counter("depgate_watch_stale_episodes_total") == 1
        assert "no longer hears the API server" in op.log_text()
        report(f"/healthz failed {took:.1f}s after the status write the watch never delivered (echo bound 5s)")
    finally:  # what the kubelet would do: a new operator, here on a direct connection (it deletes the policy)
        operators.stop()
        operators.kubeconfig = direct
