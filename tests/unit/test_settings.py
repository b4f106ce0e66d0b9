"""depgate.settings: `depgate run`'s flags, each default written once, bad values refused; the
runner hands the settings (the kubeconfig too) to the handlers without touching the environment."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest

from depgate import settings as settings_module
from depgate.settings import Settings, SettingsError, flag_of, parse

ROOT = Path(__file__).resolve().parents[2]

# One value for every field, unlike its default, as typed on the command line.
GIVEN: dict[str, tuple[list[str], Any]] = {
    "namespaces": (["-n", "a", "--namespace=b"], ("a", "b")),
    "kubeconfig": (["--kubeconfig", "/tmp/kc"], "/tmp/kc"),
    "waiter_image": (["--waiter-image=img:1@sha256:ab"], "img:1@sha256:ab"),
    "metrics_port": (["--metrics-port=8080"], 8080),
    "health_port": (["--health-port", "8081"], 8081),
    "resync_seconds": (["--resync-seconds=3"], 3.0),
    "coalesce_seconds": (["--coalesce-seconds=0"], 0.0),
    "cycle_debounce_seconds": (["--cycle-debounce-seconds=1.5"], 1.5),
    "max_backoff_seconds": (["--max-backoff-seconds=600"], 600.0),
    "watch_inactivity_seconds": (["--watch-inactivity-seconds=5"], 5.0),
    "echo_seconds": (["--echo-seconds=5"], 5.0),
    "request_timeout_seconds": (["--request-timeout-seconds=2.5"], 2.5),
    "max_custom_watches": (["--max-custom-watches=2"], 2),
    "max_custom_kinds_per_policy": (["--max-custom-kinds-per-policy=1"], 1),
    "protected_namespaces": (["--protected-namespaces=kube-system, ops"], ("kube-system", "ops")),
    "authority": (["--authority=off"], "off"),
    "operator_namespace": (["--operator-namespace=ops"], "ops"),
    "webhook_port": (["--webhook-port=0"], 0),
    "webhook_url": (["--webhook-url=https://10.0.0.5:9443"], "https://10.0.0.5:9443"),
    "webhook_service": (["--webhook-service=hooks"], "hooks"),
    "gate_grace_seconds": (["--gate-grace-seconds=0.5"], 0.5),
    "leader_election": (["--no-leader-election"], False),
    "lease_name": (["--lease-name=ops-leader"], "ops-leader"),
    "lease_seconds": (["--lease-seconds=20"], 20.0),
    "renew_deadline_seconds": (["--renew-deadline-seconds=12"], 12.0),
    "retry_period_seconds": (["--retry-period-seconds=1"], 1.0),
    "shard": (["--shard=b"], "b"),
    "verbose": (["-v"], True),
}


def test_leader_election_is_on_unless_the_flag_or_the_environment_says_no_and_its_times_must_fence() -> None:
    assert parse([], environ={}).leader_election
    assert not parse([], environ={"DEPGATE_LEADER_ELECTION": "false"}).leader_election
    assert parse(["--leader-election"], environ={"DEPGATE_LEADER_ELECTION": "false"}).leader_election
    assert parse([], environ={"DEPGATE_LEADER_ELECTION": "true"}).leader_election
    for argv in (["--renew-deadline-seconds=15"], ["--retry-period-seconds=10"], ["--lease-seconds=9"]):
        with pytest.raises(SystemExit) as e:
            parse(argv, environ={})
        assert e.value.code == 2, argv


def test_every_setting_is_a_flag_and_the_flags_defaults_are_the_fields() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert set(GIVEN) == set(fields)  # a new field needs a line above
    assert parse([], environ={}) == Settings()
    for f in fields.values():
        assert flag_of(f).names and flag_of(f).help


@pytest.mark.parametrize("name", sorted(GIVEN))
def test_each_flag_sets_its_setting_and_nothing_else(name: str) -> None:
    argv, want = GIVEN[name]
    got = parse(argv, environ={})
    assert getattr(got, name) == want and want != getattr(Settings(), name)
    assert dataclasses.replace(got, **{name: getattr(Settings(), name)}) == Settings()


def test_the_environment_gives_some_defaults_and_a_flag_wins() -> None:
    env = {"DEPGATE_WAITER_IMAGE": "w:2", "DEPGATE_METRICS_PORT": "9090", "DEPGATE_HEALTH_PORT": "9091",
           "KUBECONFIG": "/env/kc"}
    s = parse([], environ=env)
    assert (s.waiter_image, s.metrics_port, s.health_port, s.kubeconfig) == ("w:2", 9090, 9091, "/env/kc")
    s = parse(["--metrics-port=1", "--kubeconfig=/flag/kc", "--waiter-image=w:3"], environ=env)
    assert (s.metrics_port, s.kubeconfig, s.waiter_image) == (1, "/flag/kc", "w:3")
    assert parse([], environ={"KUBECONFIG": ""}).kubeconfig is None  # empty: unset


@pytest.mark.parametrize("argv", [
    ["--resync-seconds=0"], ["--resync-seconds=-1"], ["--resync-seconds=nan"], ["--echo-seconds=inf"],
    ["--watch-inactivity-seconds=soon"], ["--coalesce-seconds=-0.1"], ["--max-backoff-seconds=0"],
    ["--request-timeout-seconds=0"], ["--cycle-debounce-seconds=-1"],
    ["--max-custom-watches=0"], ["--max-custom-kinds-per-policy=-3"], ["--max-custom-watches=1.5"],
    ["--metrics-port=70000"], ["--health-port=-1"], ["--waiter-image="], ["--kubeconfig= "],
    ["--no-such-flag"],
])
def test_bad_values_are_refused_with_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse(argv, environ={})
    assert e.value.code == 2
    flag = argv[0].split("=")[0]
    assert flag in capsys.readouterr().err


def test_a_bad_value_in_the_environment_is_refused_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse([], environ={"DEPGATE_METRICS_PORT": "eighty"})
    assert "--metrics-port" in capsys.readouterr().err


def test_settings_built_in_code_are_checked_and_frozen() -> None:
    with pytest.raises(SettingsError, match="--resync-seconds"):
        Settings(resync_seconds=0)
    with pytest.raises(SettingsError, match="--max-custom-watches"):
        Settings(max_custom_watches=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().resync_seconds = 1  # type: ignore[misc]


def _documented_defaults() -> list[tuple[str, str, str]]:
    """(file, flag, number) for each "`--flag` (default N)", "`--flag` (N s)" or "`--flag`, N s"."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.finditer(r"`(--[a-z-]+)`(?: \((?:default )?|, )(\d+(?:\.\d+)?)\b", path.read_text()):
            found.append((path.name, m.group(1), m.group(2)))
    return found


def test_the_defaults_the_docs_state_are_the_settings_defaults() -> None:
    by_flag = {name: f for f in dataclasses.fields(Settings) for name in flag_of(f).names}
    documented = [d for d in _documented_defaults() if d[1] in by_flag]  # not `depgate wait`'s --timeout
    assert len(documented) >= 6  # the pattern still finds the docs' mentions
    for file, flag, number in documented:
        assert float(number) == by_flag[flag].default, f"{file}: {flag} defaults to {by_flag[flag].default}"


def test_the_runner_installs_the_settings_for_the_handlers_and_leaves_the_environment_alone(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import kopf

    from depgate import handlers, runner

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://10.9.8.7:6443', insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: sekret}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n")
    ran: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kw: ran.update(kw))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    before = dict(os.environ)
    assert runner.main([f"--kubeconfig={kubeconfig}", "-n", "team", "--echo-seconds=7"]) == 0
    assert dict(os.environ) == before
    assert ran["namespaces"] == ["team"] and not ran["clusterwide"]
    op = handlers.current()
    assert op.settings == parse([f"--kubeconfig={kubeconfig}", "-n", "team", "--echo-seconds=7"], environ={})
    assert op.echo.bound == 7

    # Kopf's login reads the same kubeconfig, handed over, not through $KUBECONFIG
    info = handlers.login(settings=kopf.OperatorSettings())
    assert (info.server, info.token, info.insecure) == ("https://10.9.8.7:6443", "sekret", True)
    assert info.scheme in (None, "Bearer")


def test_the_handlers_refuse_to_run_without_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from depgate import handlers

    monkeypatch.setattr(handlers, "_OPERATOR", None)
    with pytest.raises(RuntimeError, match="install"):
        handlers.current()


def test_parse_reads_the_real_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPGATE_WAITER_IMAGE", "from-env:1")
    assert settings_module.parse([]).waiter_image == "from-env:1"
