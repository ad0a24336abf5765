"""Which profile owns which node: priorities, ties, and DaemonSet affinity."""

from __future__ import annotations

import pytest

from trackgate.operator.errors import ProfileError
from trackgate.operator.placement import (
    MAX_AFFINITY_TERMS,
    node_affinity,
    owner_of,
    place,
)
from trackgate.operator.profile import Profile


def _p(name: str, priority: int = 0, **selector: str) -> Profile:
    return Profile(name=name, priority=priority, node_selector=selector)


NODES = {
    "gw-1": {"pool": "gateways", "zone": "a"},
    "gw-2": {"pool": "gateways", "zone": "b"},
    "gen-1": {"pool": "general", "zone": "a"},
}


@pytest.mark.parametrize(
    ("profiles", "labels", "owner"),
    [
        ([_p("gw", pool="gateways")], NODES["gw-1"], "gw"),
        ([_p("gw", pool="gateways")], NODES["gen-1"], None),
        ([_p("all"), _p("gw", 10, pool="gateways")], NODES["gw-1"], "gw"),
        ([_p("all", 20), _p("gw", 10, pool="gateways")], NODES["gw-1"], "all"),
        ([_p("b-tie", 5), _p("a-tie", 5)], NODES["gw-1"], "a-tie"),
        (
            [_p("zone-a", 1, zone="a"), _p("gw", 0, pool="gateways")],
            NODES["gw-2"],
            "gw",
        ),
    ],
)
def test_owner_is_highest_priority_then_first_name(
    profiles: list[Profile], labels: dict[str, str], owner: str | None
) -> None:
    found = owner_of(profiles, labels)

    assert (found.name if found else None) == owner


def test_equal_priority_overlap_is_a_conflict_on_both_sides() -> None:
    profiles = [_p("zone-a", 5, zone="a"), _p("gateways", 5, pool="gateways")]

    spots = place(profiles, NODES)

    assert spots["gateways"].ties == {"zone-a": 1}
    assert spots["zone-a"].ties == {"gateways": 1}
    assert spots["gateways"].owned == ("gw-1", "gw-2")
    assert spots["zone-a"].owned == ("gen-1",)


def test_lower_priority_is_shadowed_not_in_conflict() -> None:
    profiles = [_p("all", 0), _p("gateways", 10, pool="gateways")]

    spots = place(profiles, NODES)

    assert spots["all"].selected == ("gen-1", "gw-1", "gw-2")
    assert spots["all"].owned == ("gen-1",)
    assert spots["all"].shadowed_by == {"gateways": 2}
    assert spots["all"].ties == {}
    assert spots["gateways"].shadowed_by == {}


def test_tie_between_two_losers_is_not_reported() -> None:
    profiles = [_p("x", 1), _p("y", 1), _p("top", 9)]

    spots = place(profiles, NODES)

    assert spots["x"].ties == {} and spots["y"].ties == {}


@pytest.mark.parametrize(
    ("profile", "others", "terms"),
    [
        (_p("gw", pool="gateways"), [], []),
        (_p("gw", 10, pool="gateways"), [_p("all", 0)], []),
        (
            _p("all", 0),
            [_p("gw", 10, pool="gateways")],
            [[("pool", "gateways")]],
        ),
        (
            _p("all", 0),
            [_p("gw", 10, pool="gateways", zone="a")],
            [[("pool", "gateways")], [("zone", "a")]],
        ),
        (
            _p("all", 0),
            [_p("gw", 10, pool="gateways"), _p("za", 10, zone="a")],
            [[("pool", "gateways"), ("zone", "a")]],
        ),
        # Same pool label pinned by both: only the extra label tells them apart.
        (
            _p("gw", 0, pool="gateways"),
            [_p("gw-a", 10, pool="gateways", zone="a")],
            [[("zone", "a")]],
        ),
        # Disjoint pools never exclude each other.
        (_p("gen", 0, pool="general"), [_p("gw", 10, pool="gateways")], []),
        # A tie is broken by name: "a" excludes nothing, "b" excludes "a".
        (_p("b", 5, pool="gateways"), [_p("a", 5)], None),
    ],
)
def test_affinity_keeps_agents_off_nodes_a_higher_profile_owns(
    profile: Profile,
    others: list[Profile],
    terms: list[list[tuple[str, str]]] | None,
) -> None:
    rendered = node_affinity(profile, [profile, *others])

    if terms is None:
        assert rendered is None
        return
    assert rendered is not None
    assert [
        [(e["key"], e["values"][0]) for e in t["matchExpressions"]] for t in rendered
    ] == terms
    assert all(
        e["operator"] == "NotIn" for t in rendered for e in t["matchExpressions"]
    )


def test_affinity_agrees_with_owner_of_on_every_node() -> None:
    profiles = [
        _p("all", 0),
        _p("gw", 10, pool="gateways"),
        _p("gw-a", 20, pool="gateways", zone="a"),
    ]
    for name, labels in NODES.items():
        owner = owner_of(profiles, labels)
        for profile in profiles:
            terms = node_affinity(profile, profiles)
            schedulable = (
                terms is not None
                and profile.selects_node(labels)
                and (not terms or any(_term_matches(t, labels) for t in terms))
            )
            assert schedulable == (owner is profile), (name, profile.name)


def _term_matches(term: dict[str, object], labels: dict[str, str]) -> bool:
    expressions = term["matchExpressions"]
    assert isinstance(expressions, list)
    return all(labels.get(e["key"]) not in e["values"] for e in expressions)


def test_too_many_exclusions_are_refused_with_advice() -> None:
    wide = {f"k{i}": "v" for i in range(3)}
    others = [
        Profile(
            name=f"o{j}",
            priority=10,
            node_selector={f"{k}{j}": v for k, v in wide.items()},
        )
        for j in range(4)
    ]

    with pytest.raises(ProfileError, match=f"at most {MAX_AFFINITY_TERMS}"):
        node_affinity(_p("all"), [_p("all"), *others])
