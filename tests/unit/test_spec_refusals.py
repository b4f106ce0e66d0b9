"""What depgate.spec refuses so that a policy cannot make depgate escalate (issue 14), each with the
field path the CRD's CEL rules name too: privilege for depgate's own waiters, a shared volume over
system paths, credentials inside URLs or inline credential headers, selectors that match everything
in disguise. tests/integration/test_hostile_schema.py has the API server's side of each."""

from __future__ import annotations

from typing import Any

import pytest

from depgate.spec import (
    BasicAuthRef,
    DownloadTask,
    HTTPCheck,
    HTTPHeader,
    KeyRef,
    SpecError,
    parse_policy,
)

SHA = "a" * 64
TCP = {"name": "t", "tcp": {"host": "db", "port": 5432}}
DOWNLOAD = {"name": "dl", "download": {"url": "https://files/m.bin", "sha256": SHA, "path": "m.bin"}}


def doc(*preconditions: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"workloadRef": {"name": "app"}, **spec}
    body = {k: v for k, v in body.items() if v is not None}
    body["preconditions"] = list(preconditions) or [TCP]
    return {"apiVersion": "depgate.io/v1alpha1", "kind": "DependencyPolicy",
            "metadata": {"name": "p", "namespace": "team-b"}, "spec": body}


def refused(obj: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_policy(obj)
    return info.value


def sc(**fields: Any) -> dict[str, Any]:
    return doc(defaults={"securityContext": fields})


def http(**fields: Any) -> dict[str, Any]:
    return doc({"name": "h", "http": {"url": "https://api/healthz", **fields}})


def mount(path: str) -> dict[str, Any]:
    return doc(DOWNLOAD, sharedVolume={"mountPath": path})


def selector(**sel: Any) -> dict[str, Any]:
    return doc(workloadRef=None, selector=sel)


AT = "spec.defaults.securityContext"
REFUSED: dict[str, tuple[dict[str, Any], str, str]] = {
    # depgate's own waiters: no privilege, no root, no added capability
    "privileged": (sc(privileged=True), f"{AT}.privileged", "must not be true"),
    "privilege escalation": (sc(allowPrivilegeEscalation=True), f"{AT}.allowPrivilegeEscalation", "must not be"),
    "root user": (sc(runAsUser=0), f"{AT}.runAsUser", "must not be 0"),
    "runAsNonRoot false": (sc(runAsNonRoot=False), f"{AT}.runAsNonRoot", "must not be false"),
    "added capability": (sc(capabilities={"add": ["NET_ADMIN"], "drop": ["ALL"]}), f"{AT}.capabilities.add",
                         "must be empty"),
    "unmasked proc": (sc(procMount="Unmasked"), f"{AT}.procMount", "must not be \"Unmasked\""),
    "host process": (sc(windowsOptions={"hostProcess": True}), f"{AT}.windowsOptions.hostProcess", "host process"),
    "seccomp unconfined": (sc(seccompProfile={"type": "Unconfined"}), f"{AT}.seccompProfile.type", "seccomp"),
    "apparmor unconfined": (sc(appArmorProfile={"type": "Unconfined"}), f"{AT}.appArmorProfile.type", "AppArmor"),
    # the shared volume, mounted in every app container
    "mount over /": (mount("/"), "spec.sharedVolume.mountPath", "system directory"),
    "mount over the SA token": (mount("/var/run/secrets/kubernetes.io/serviceaccount"),
                                "spec.sharedVolume.mountPath", "ServiceAccount token"),
    "mount above the SA token": (mount("/var/run"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /var": (mount("/var"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /run": (mount("/run"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /run/secrets/x": (mount("/run/secrets/x"), "spec.sharedVolume.mountPath", "system directory"),
    "mount over the CA bundle": (mount("/etc/ssl/certs"), "spec.sharedVolume.mountPath", "CA bundle"),
    "mount at /etc": (mount("/etc"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /proc": (mount("/proc"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /sys/fs": (mount("/sys/fs"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /dev": (mount("/dev"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /bin": (mount("/bin"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /sbin": (mount("/sbin"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /lib": (mount("/lib"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /lib64/x": (mount("/lib64/x"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /usr/local/bin": (mount("/usr/local/bin"), "spec.sharedVolume.mountPath", "system directory"),
    "mount at /boot": (mount("/boot"), "spec.sharedVolume.mountPath", "system directory"),
    "trailing slash": (mount("/etc/"), "spec.sharedVolume.mountPath", "no trailing '/'"),
    "double slash": (mount("//etc"), "spec.sharedVolume.mountPath", "no '//'"),
    "dot segment": (mount("/./etc"), "spec.sharedVolume.mountPath", "no '.' or '..' segment"),
    "dotdot": (mount("/data/../etc"), "spec.sharedVolume.mountPath", "'..'"),
    "control character": (mount("/data\n"), "spec.sharedVolume.mountPath", "control characters"),
    # credentials in URLs and inline credential headers
    "http url userinfo": (http(url="https://user:secret@api/healthz"), "spec.preconditions[0].http.url",
                          "must not contain credentials"),
    "http url user only": (http(url="http://token@api/"), "spec.preconditions[0].http.url", "basicAuthSecretRef"),
    "download url userinfo": (
        doc({"name": "dl", "download": {"url": "https://u:p@files/m", "sha256": SHA, "path": "m"}}),
        "spec.preconditions[0].download.url", "must not contain credentials"),
    "inline Authorization": (http(headers=[{"name": "Authorization", "value": "Bearer x"}]),
                             "spec.preconditions[0].http.headers[0].value", "valueFrom.secretKeyRef"),
    "inline cookie": (http(headers=[{"name": "X", "value": "1"}, {"name": "cookie", "value": "s=1"}]),
                      "spec.preconditions[0].http.headers[1].value", "must not be given inline"),
    "inline Proxy-Authorization": (http(headers=[{"name": "Proxy-Authorization", "value": "Basic x"}]),
                                   "spec.preconditions[0].http.headers[0].value", "must not be given inline"),
    "header with value and valueFrom": (
        http(headers=[{"name": "X", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        "spec.preconditions[0].http.headers[0]", "exactly one of value or valueFrom"),
    "header with neither": (http(headers=[{"name": "X"}]), "spec.preconditions[0].http.headers[0]",
                            "exactly one of value or valueFrom"),
    "header secretKeyRef without key": (
        http(headers=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
        "spec.preconditions[0].http.headers[0].valueFrom.secretKeyRef.key", "required"),
    "header valueFrom configMapKeyRef": (
        http(headers=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "s", "key": "k"}}}]),
        "spec.preconditions[0].http.headers[0].valueFrom.configMapKeyRef", "unknown field"),
    "basic auth and an Authorization header": (
        http(basicAuthSecretRef={"name": "creds"},
             headers=[{"name": "authorization", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        "spec.preconditions[0].http.headers[0].name", "cannot both be set"),
    "basic auth bad key": (http(basicAuthSecretRef={"name": "creds", "passwordKey": "a/b"}),
                           "spec.preconditions[0].http.basicAuthSecretRef.passwordKey", "letters, digits"),
    "basic auth without a name": (http(basicAuthSecretRef={"usernameKey": "u"}),
                                  "spec.preconditions[0].http.basicAuthSecretRef.name", "required"),
    # selectors that match everything in disguise
    "only DoesNotExist": (selector(matchExpressions=[{"key": "no-such-label", "operator": "DoesNotExist"}]),
                          "spec.selector", "In or Exists requirement"),
    "only NotIn": (selector(matchExpressions=[{"key": "team", "operator": "NotIn", "values": ["a"]},
                                              {"key": "x", "operator": "DoesNotExist"}]),
                   "spec.selector", "In or Exists requirement"),
    "empty matchLabels and only NotIn": (
        selector(matchLabels={}, matchExpressions=[{"key": "t", "operator": "NotIn", "values": ["a"]}]),
        "spec.selector", "In or Exists requirement"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_refused_naming_the_field(case: str) -> None:
    obj, path, fragment = REFUSED[case]
    err = refused(obj)
    assert err.field_path == path, str(err)
    assert fragment in err.message, str(err)


def test_a_refused_url_is_not_echoed() -> None:
    assert "secret" not in str(refused(http(url="https://user:secret@api/healthz")))


ACCEPTED: dict[str, dict[str, Any]] = {
    "restricted securityContext": sc(runAsNonRoot=True, runAsUser=65532, allowPrivilegeEscalation=False,
                                     privileged=False, capabilities={"drop": ["ALL"], "add": []},
                                     seccompProfile={"type": "RuntimeDefault"}, procMount="Default"),
    "a securityContext with runAsUser 1": sc(runAsUser=1),
    "a command may still set its own securityContext": doc(
        {"name": "c", "command": {"image": "busybox", "command": ["true"], "securityContext": {"runAsUser": 0}}}),
    "mount at /data": mount("/data"),
    "mount at /library": mount("/library"),
    "mount at /etcd": mount("/etcd"),
    "mount at /var/lib/app": mount("/var/lib/app"),
    "mount at /runner/cache": mount("/runner/cache"),
    "mount at /usrdata": mount("/usrdata"),
    "mount at /depgate/shared (the default)": mount("/depgate/shared"),
    "@ in the path of a URL": http(url="https://api/users/@me?x=a@b"),
    "a plain header": http(headers=[{"name": "X-Probe", "value": "depgate"}]),
    "an Authorization header from a Secret": http(
        headers=[{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}]),
    "selector with matchLabels and NotIn": selector(
        matchLabels={"app": "web"}, matchExpressions=[{"key": "env", "operator": "NotIn", "values": ["dev"]}]),
    "selector with Exists and DoesNotExist": selector(
        matchExpressions=[{"key": "tier", "operator": "Exists"}, {"key": "canary", "operator": "DoesNotExist"}]),
    "selector with In": selector(matchExpressions=[{"key": "tier", "operator": "In", "values": ["web"]}]),
}


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepted(case: str) -> None:
    parse_policy(ACCEPTED[case])


def test_secret_backed_basic_auth_and_headers_parse() -> None:
    p = parse_policy(doc(
        {"name": "h", "http": {
            "url": "https://api/healthz",
            "basicAuthSecretRef": {"name": "api-creds"},
            "headers": [{"name": "X-Probe", "value": "depgate"},
                        {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "api-key", "key": "key"}}}]}},
        {"name": "dl", "download": {"url": "https://files/m", "sha256": SHA, "path": "m",
                                    "basicAuthSecretRef": {"name": "files", "usernameKey": "u", "passwordKey": "p"}}},
    ))
    h, dl = (pre.body for pre in p.preconditions)
    assert isinstance(h, HTTPCheck) and isinstance(dl, DownloadTask)
    assert h.basic_auth_secret_ref == BasicAuthRef("api-creds", "username", "password")
    assert h.headers == (HTTPHeader("X-Probe", "depgate"),
                         HTTPHeader("X-Api-Key", value_from=KeyRef("api-key", "key")))
    assert dl.basic_auth_secret_ref == BasicAuthRef("files", "u", "p")


def test_a_policy_stored_before_the_crd_refused_it_is_explained_in_status() -> None:
    """The operator parses every policy: one the API server admitted under an older CRD is Stalled,
    reason InvalidSpec, naming the field, and nothing is applied."""
    from depgate import plan

    applied, stalled = plan.invalid_spec(refused(sc(privileged=True)))
    assert (applied.ok, stalled.reason) == (False, "InvalidSpec")
    assert stalled.message.startswith("spec.defaults.securityContext.privileged: must not be true")
