"""The operator's settings: one frozen object, built once from `depgate run`'s flags and passed in.

Every tunable is a field here and a flag of `depgate run`, and its default is written once, in the
field below: the flags, their help and their checks are built from these fields (`parse`). A few
defaults come from the environment first (`env`: the manifests and the dev plane set them).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from depgate.constants import (
    DEFAULT_OPERATOR_NAMESPACE,
    OPERATOR_NAMESPACE_ENV,
    REQUEST_TIMEOUT_SECONDS,
    WAITER_IMAGE_ENV,
)
from depgate.render import DEFAULT_WAITER_IMAGE


class SettingsError(ValueError):
    """A setting out of its range."""


# ---------------------------------------------------------------------- the kinds of value


def _seconds(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"must be a number of seconds above 0, not {value}")


def _seconds_or_zero(value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise SettingsError(f"must be a number of seconds, 0 or more, not {value}")


def _count(value: int) -> None:
    if value < 1:
        raise SettingsError(f"must be at least 1, not {value}")


def _port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise SettingsError(f"must be a TCP port (1-65535) or 0 (off), not {value}")


def _authority_mode(value: str) -> None:
    if value not in ("enforce", "off"):
        raise SettingsError(f"must be enforce or off, not {value!r}")


def _text(value: str) -> None:
    if not value.strip():
        raise SettingsError("must not be empty")


@dataclass(frozen=True)
class Flag:
    """How a field is given on the command line."""

    names: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] = str
    check: Callable[[Any], None] | None = None
    env: str | None = None  # the environment variable that gives the default, when set
    metavar: str | None = None


def _flag(default: Any, *names: str, help: str, parse: Callable[[str], Any] = str,
          check: Callable[[Any], None] | None = None, env: str | None = None, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"flag": Flag(names, help, parse, check, env, metavar)})


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = _flag(
        (), "-n", "--namespace", metavar="NAMESPACE",
        help="watch only this namespace (repeatable; default: all namespaces)")
    kubeconfig: str | None = _flag(
        None, "--kubeconfig", check=_text, metavar="PATH", env="KUBECONFIG",
        help="path to a kubeconfig (default: $KUBECONFIG, then the in-cluster config)")
    waiter_image: str = _flag(
        DEFAULT_WAITER_IMAGE, "--waiter-image", check=_text, metavar="IMAGE", env=WAITER_IMAGE_ENV,
        help="the image of the init containers depgate renders (pin it: tag@digest) "
             f"[env {WAITER_IMAGE_ENV}, default %(default)s]")
    metrics_port: int = _flag(
        0, "--metrics-port", parse=int, check=_port, metavar="PORT", env="DEPGATE_METRICS_PORT",
        help="serve Prometheus metrics on this port (0: off) [env DEPGATE_METRICS_PORT]")
    health_port: int = _flag(
        0, "--health-port", parse=int, check=_port, metavar="PORT", env="DEPGATE_HEALTH_PORT",
        help="serve Kopf's liveness endpoint /healthz on this port (0: off) [env DEPGATE_HEALTH_PORT]")
    resync_seconds: float = _flag(
        300.0, "--resync-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="reconcile every policy at least this often, even without events (default %(default)g)")
    coalesce_seconds: float = _flag(
        0.05, "--coalesce-seconds", parse=float, check=_seconds_or_zero, metavar="SECONDS",
        help="a policy that reconciled less than a second ago waits this long before the next reconcile, "
             "so that a burst of events costs one (default %(default)g)")
    cycle_debounce_seconds: float = _flag(
        0.25, "--cycle-debounce-seconds", parse=float, check=_seconds_or_zero, metavar="SECONDS",
        help="recompute the dependency cycles this long after the graph of policies changed, so that a "
             "burst of changes costs one recompute (default %(default)g)")
    max_backoff_seconds: float = _flag(
        60.0, "--max-backoff-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="after failed reconciles a policy waits 1 s, then twice as long after each further failure, "
             "at most this long (default %(default)g)")
    watch_inactivity_seconds: float = _flag(
        70.0, "--watch-inactivity-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="restart a watch that delivered nothing, not even a bookmark (the API server sends one "
             "about every 60 s), for this long (default %(default)g)")
    echo_seconds: float = _flag(
        120.0, "--echo-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="a status write the policies watch has not delivered back within this long fails the "
             "liveness probe (/healthz) until it does (default %(default)g)")
    request_timeout_seconds: float = _flag(
        REQUEST_TIMEOUT_SECONDS, "--request-timeout-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="an API request (depgate's reads and writes, a custom watch's list, Kopf's finalizer writes; not "
             "the watches) fails after this long, so that one on a connection that went silent is retried "
             "instead of hanging (default %(default)g)")
    max_custom_watches: int = _flag(
        64, "--max-custom-watches", parse=int, check=_count, metavar="N",
        help="watch custom resources (`resource` preconditions) of at most this many kinds per namespace "
             "at once, one shared watch each; a precondition over it says TooManyWatches (default %(default)g)")
    max_custom_kinds_per_policy: int = _flag(
        8, "--max-custom-kinds-per-policy", parse=int, check=_count, metavar="N",
        help="watch at most this many kinds of custom resource for one policy; its other `resource` "
             "preconditions say TooManyWatches (default %(default)g)")
    authority: str = _flag(
        "enforce", "--authority", check=_authority_mode, metavar="MODE", env="DEPGATE_AUTHORITY",
        help="enforce: a policy takes effect only as far as its author could have done it directly "
             "(checked at admission by depgate's webhook and again at each reconcile; docs/operations.md, "
             "Threat model); off: trust every policy [env DEPGATE_AUTHORITY, default %(default)s]")
    operator_namespace: str = _flag(
        "", "--operator-namespace", metavar="NAMESPACE", env=OPERATOR_NAMESPACE_ENV,
        help="the namespace depgate runs in, where its webhook Secret lives (default: the in-cluster "
             f"ServiceAccount's namespace, else {DEFAULT_OPERATOR_NAMESPACE}) [env {OPERATOR_NAMESPACE_ENV}]")
    webhook_port: int = _flag(
        9443, "--webhook-port", parse=int, check=_port, metavar="PORT",
        help="serve the admission webhook (HTTPS) on this port (0: off) (default %(default)s)")
    webhook_url: str = _flag(
        "", "--webhook-url", metavar="URL", env="DEPGATE_WEBHOOK_URL",
        help="where the API server reaches this process's webhook, e.g. https://10.0.0.5:9443 (default: "
             "in a cluster, the Service --webhook-service; outside, https://127.0.0.1:PORT, for a local plane) "
             "[env DEPGATE_WEBHOOK_URL]")
    webhook_service: str = _flag(
        "depgate-webhook", "--webhook-service", check=_text, metavar="NAME",
        help="in a cluster, the Service in front of the webhook, in --operator-namespace (default %(default)s)")
    protected_namespaces: tuple[str, ...] = _flag(
        (), "--protected-namespaces", metavar="NS,NS",
        parse=lambda text: tuple(n.strip() for n in text.split(",") if n.strip()),
        help="namespaces where a policy changes nothing and says so in status, comma-separated (default: the "
             "operator's namespace, --operator-namespace, and kube-system; a list given replaces both)")
    gate_grace_seconds: float = _flag(
        5.0, "--gate-grace-seconds", parse=float, check=_seconds_or_zero, metavar="SECONDS",
        help="in a namespace labelled depgate.io/gate=enabled, a pod held at depgate's scheduling gate whose "
             "workload no policy gates is let go this long after depgate first sees it: the time a policy "
             "applied after its workload has to arrive (docs/operations.md, Workload first) (default %(default)g)")
    leader_election: bool = _flag(
        True, "--leader-election", env="DEPGATE_LEADER_ELECTION",
        help="run as one of several replicas: only the holder of the Lease --lease-name in --operator-namespace "
             "writes; the others serve the webhooks and stand by (docs/operations.md, High availability); "
             "--no-leader-election: this process writes at once, alone (one replica only) [default on]")
    lease_name: str = _flag(
        "depgate-leader", "--lease-name", check=_text, metavar="NAME",
        help="the Lease the replicas elect their leader on (with --shard: NAME-SHARD) (default %(default)s)")
    lease_seconds: float = _flag(
        15.0, "--lease-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="a standby takes the Lease over when its holder has not renewed it for this long (default %(default)g)")
    renew_deadline_seconds: float = _flag(
        10.0, "--renew-deadline-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="the leader stops writing when it has not renewed the Lease for this long; below --lease-seconds "
             "(default %(default)g)")
    retry_period_seconds: float = _flag(
        2.0, "--retry-period-seconds", parse=float, check=_seconds, metavar="SECONDS",
        help="how often the leader renews the Lease and a standby tries it (default %(default)g)")
    shard: str = _flag(
        "", "--shard", metavar="KEY", env="DEPGATE_SHARD",
        help="handle only the policies labelled sharding.depgate.io/key=KEY, with a Lease of its own (default: "
             "the policies without that label) [env DEPGATE_SHARD]")
    verbose: bool = _flag(False, "-v", "--verbose", help="debug logging")

    def resolved_operator_namespace(self, token_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount") -> str:
        """--operator-namespace, else the in-cluster ServiceAccount's namespace, else the default."""
        if self.operator_namespace:
            return self.operator_namespace
        try:
            with open(os.path.join(token_dir, "namespace")) as fh:
                return fh.read().strip() or DEFAULT_OPERATOR_NAMESPACE
        except OSError:
            return DEFAULT_OPERATOR_NAMESPACE

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise SettingsError(f"--retry-period-seconds ({self.retry_period_seconds:g}) < --renew-deadline-seconds "
                                f"({self.renew_deadline_seconds:g}) < --lease-seconds ({self.lease_seconds:g}) must "
                                "hold: the leader must stop writing before another replica may take over")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check = flag_of(f).check
            if check is not None and value is not None:
                try:
                    check(value)
                except SettingsError as e:
                    raise SettingsError(f"{flag_of(f).names[-1]}: {e}") from None


def flag_of(f: dataclasses.Field[Any]) -> Flag:
    flag: Flag = f.metadata["flag"]
    return flag


def _argument_type(flag: Flag) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = flag.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if flag.parse is int else ' number'}: {text!r}") \
                from None
        if flag.check is not None:
            try:
                flag.check(value)
            except SettingsError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return value

    return convert


def parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """`depgate run`'s flags, one per field of Settings."""
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="depgate run", description="the operator process (Kopf) against the "
                                "current kubeconfig or the in-cluster config")
    for f in dataclasses.fields(Settings):
        flag = flag_of(f)
        if f.type in ("bool", bool) and f.default is True:  # on unless --no-...; its env var can say false
            on = env.get(flag.env, "").strip().lower() not in ("false", "0", "no", "off") if flag.env else True
            p.add_argument(*flag.names, dest=f.name, action=argparse.BooleanOptionalAction, default=on,
                           help=flag.help)
        elif f.type in ("bool", bool):
            p.add_argument(*flag.names, dest=f.name, action="store_true", help=flag.help)
        elif f.name == "namespaces":
            p.add_argument(*flag.names, dest=f.name, action="append", default=[], metavar=flag.metavar,
                           help=flag.help)
        else:
            # argparse converts (and checks) a default given as text, as if it were on the command line
            default = env.get(flag.env) if flag.env and env.get(flag.env) else f.default
            p.add_argument(*flag.names, dest=f.name, type=_argument_type(flag), default=default,
                           metavar=flag.metavar, help=flag.help)
    return p


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """The Settings of `depgate run ARGV` (exits with a usage error, status 2, on a bad value)."""
    p = parser(environ)
    args = vars(p.parse_args(list(argv)))
    args["namespaces"] = tuple(args["namespaces"])
    try:
        return Settings(**args)
    except SettingsError as e:  # a rule between flags (the lease's times)
        p.error(str(e))
