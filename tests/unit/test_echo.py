"""depgate.echo: a status write not delivered back by the policies watch within the bound is stale."""

from __future__ import annotations

from depgate.echo import Echoes, resource_version


def obj(rv: str | None) -> dict[str, object]:
    return {"metadata": {"resourceVersion": rv}} if rv is not None else {"metadata": {}}


def test_a_write_heard_back_at_its_resource_version_or_later_is_not_stale() -> None:
    e = Echoes(bound=10)
    e.wrote(("ns", "a"), obj("100"), now=0)
    e.wrote(("ns", "b"), obj("105"), now=0)
    e.heard(("ns", "a"), obj("99"))  # an older copy (a lagging watch) is not the echo
    e.heard(("ns", "b"), obj("107"))  # a later change includes ours
    assert e.stale(now=5) == []
    assert e.stale(now=11) == [(("ns", "a"), 100, 11)]
    e.heard(("ns", "a"), obj("100"))
    assert e.stale(now=20) == []


def test_the_oldest_unheard_write_counts_then_the_latest_and_deletion_forgets() -> None:
    e = Echoes(bound=10)
    e.wrote(("ns", "a"), obj("100"), now=0)
    e.wrote(("ns", "a"), obj("120"), now=8)  # still waiting for 100: its clock runs from 0
    assert e.stale(now=11) == [(("ns", "a"), 100, 11)]
    e.heard(("ns", "a"), obj("110"))  # 100 heard; 120 still to come, its clock from 8
    assert e.stale(now=17) == []
    assert e.stale(now=19) == [(("ns", "a"), 120, 11)]
    e.heard(("ns", "a"), obj("120"))
    assert e.stale(now=30) == []
    e.wrote(("ns", "a"), obj("130"), now=30)
    e.forget(("ns", "a"))
    assert e.stale(now=100) == []


def test_opaque_resource_versions_are_never_judged() -> None:
    assert resource_version(obj("abc")) is None and resource_version(obj(None)) is None
    e = Echoes(bound=1)
    e.wrote(("ns", "a"), obj("opaque"), now=0)
    assert e.stale(now=100) == []


def test_the_watchdog_says_once_when_the_watch_goes_deaf_and_once_when_it_hears_again() -> None:
    e = Echoes(bound=10)
    e.wrote(("ns", "a"), obj("100"), now=0)
    first = e.check(now=5)
    assert first.stale == [] and not first.went_deaf and not first.hears_again
    assert e.deaf_for(now=5) is None
    deaf = e.check(now=12)
    assert deaf.went_deaf and deaf.stale == [(("ns", "a"), 100, 12)]
    assert not e.check(now=20).went_deaf  # said once
    assert e.deaf_for(now=20) == 18  # 8 s since the tick that saw it, plus the bound it waited
    e.heard(("ns", "a"), obj("100"))
    assert e.check(now=21).hears_again
    again = e.check(now=22)
    assert not again.hears_again and not again.went_deaf and e.deaf_for(now=22) is None


def test_the_watchdog_ticks_every_5_seconds_or_a_quarter_of_a_shorter_bound() -> None:
    assert Echoes(bound=120).tick_seconds == 5
    assert Echoes(bound=8).tick_seconds == 2
