"""Which copy of a policy does the worker trust: the one its own status write returned, or the one
the watch delivered last? (The lost update after an API server outage came from trusting a stale
watch copy; tests/chaos/test_apiserver_outage.py reproduces it end to end.)"""

from __future__ import annotations

from typing import Any

from depgate.plan import fresher


def copy(rv: Any, uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "resourceVersion": rv}}


def test_a_higher_resource_version_of_the_same_object_is_fresher() -> None:
    assert fresher(copy("120"), copy("99"))
    assert not fresher(copy("99"), copy("120"))


def test_the_same_version_is_not_fresher() -> None:
    assert not fresher(copy("120"), copy("120"))


def test_versions_compare_as_numbers_not_strings() -> None:
    assert fresher(copy("1000"), copy("999"))  # "1000" < "999" as strings


def test_a_recreated_object_is_never_shadowed_by_the_old_ones_copy() -> None:
    assert not fresher(copy("500", uid="old"), copy("10", uid="new"))


def test_opaque_or_missing_versions_trust_the_watch() -> None:
    assert not fresher(copy("abc"), copy("10"))
    assert not fresher(copy(None), copy("10"))
    assert not fresher(None, copy("10"))
