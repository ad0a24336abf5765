"""Which profile owns which node, and where each profile's agents may run.

Several profiles may select the same node. The one with the higher
``priority`` owns it; on equal priority the name that sorts first owns it
(so the result never depends on watch order) and both profiles get a
``Conflict`` condition naming the other. Profiles being deleted still own
their nodes until their agents have restored them; invalid profiles still
own theirs (their agents hold the last values rather than handing the node
to a lower profile mid-flight).

The same rule is written into each DaemonSet as node affinity, so that the
scheduler keeps agents of an outranked profile off contested nodes even
for nodes that join later, without the operator watching Nodes: the
profile's ``matchLabels`` become the pod's ``nodeSelector`` and every
outranking profile that could overlap adds "NOT its selector", expanded
into OR-ed ``nodeSelectorTerms``.

Pure functions over :class:`~trackgate.operator.profile.Profile`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trackgate.operator.errors import ProfileError
from trackgate.operator.profile import Profile

# Most nodeSelectorTerms one DaemonSet gets: excluding k outranking
# profiles of n labels each takes up to n**k terms; 64 covers three
# overlapping two-label pools and keeps the pod spec small.
MAX_AFFINITY_TERMS = 64


def outranks(a: Profile, b: Profile) -> bool:
    """Whether ``a`` wins a node that both ``a`` and ``b`` select."""
    return (a.priority, _reverse(a.name)) > (b.priority, _reverse(b.name))


def _reverse(name: str) -> tuple[int, ...]:
    # Negated code points: the name that sorts first compares greatest.
    return tuple(-ord(c) for c in name) + (0,)


def may_overlap(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether some label set can satisfy both matchLabels selectors."""
    return all(b[k] == v for k, v in a.items() if k in b)


def owner_of(profiles: Iterable[Profile], labels: Mapping[str, str]) -> Profile | None:
    """The profile that owns a node with ``labels``, or ``None``."""
    best: Profile | None = None
    for profile in profiles:
        if profile.selects_node(labels) and (best is None or outranks(profile, best)):
            best = profile
    return best


@dataclass(frozen=True)
class Placement:
    """Outcome of arbitration over the current nodes, for one profile."""

    selected: tuple[str, ...] = ()  # nodes its selector matches
    owned: tuple[str, ...] = ()  # nodes it wins
    ties: Mapping[str, int] = field(default_factory=dict)  # profile -> nodes
    shadowed_by: Mapping[str, int] = field(default_factory=dict)  # higher wins


def place(
    profiles: Sequence[Profile], nodes: Mapping[str, Mapping[str, str]]
) -> dict[str, Placement]:
    """Arbitrate every node among ``profiles``; one Placement per profile."""
    selected: dict[str, list[str]] = {p.name: [] for p in profiles}
    owned: dict[str, list[str]] = {p.name: [] for p in profiles}
    ties: dict[str, Counter[str]] = {p.name: Counter() for p in profiles}
    shadowed: dict[str, Counter[str]] = {p.name: Counter() for p in profiles}

    for node, labels in sorted(nodes.items()):
        matching = [p for p in profiles if p.selects_node(labels)]
        if not matching:
            continue
        winner = owner_of(matching, labels)
        assert winner is not None
        owned[winner.name].append(node)
        for profile in matching:
            selected[profile.name].append(node)
            for other in matching:
                if other is profile:
                    continue
                if other.priority == profile.priority == winner.priority:
                    ties[profile.name][other.name] += 1
                elif other is winner:
                    shadowed[profile.name][other.name] += 1

    return {
        p.name: Placement(
            selected=tuple(selected[p.name]),
            owned=tuple(owned[p.name]),
            ties=dict(sorted(ties[p.name].items())),
            shadowed_by=dict(sorted(shadowed[p.name].items())),
        )
        for p in profiles
    }


def node_affinity(
    profile: Profile, profiles: Iterable[Profile]
) -> list[dict[str, Any]] | None:
    """``nodeSelectorTerms`` that keep ``profile``'s agents off nodes it loses.

    Returns ``[]`` when nothing outranks it anywhere (no affinity needed)
    and ``None`` when an outranking profile selects every node it selects
    (no DaemonSet at all).

    Raises:
        ProfileError: the exclusions need more than
            :data:`MAX_AFFINITY_TERMS` terms.
    """
    exclusions: list[list[tuple[str, str]]] = []
    for other in profiles:
        if other.name == profile.name or not outranks(other, profile):
            continue
        if not may_overlap(profile.node_selector, other.node_selector):
            continue
        # Labels the profile already pins to the same value cannot tell the
        # two apart; the remaining ones can.
        distinguishing = [
            (k, v)
            for k, v in sorted(other.node_selector.items())
            if profile.node_selector.get(k) != v
        ]
        if not distinguishing:
            return None
        exclusions.append(distinguishing)

    if not exclusions:
        return []
    count = 1
    for choices in exclusions:
        count *= len(choices)
    if count > MAX_AFFINITY_TERMS:
        raise ProfileError(
            f"keeping profile {profile.name} off the nodes of the {len(exclusions)} "
            f"profiles that outrank it needs {count} node selector terms (at most "
            f"{MAX_AFFINITY_TERMS}); give the node pools distinct labels"
        )
    terms = []
    for combination in itertools.product(*exclusions):
        unique = sorted(set(combination))
        terms.append(
            {
                "matchExpressions": [
                    {"key": k, "operator": "NotIn", "values": [v]} for k, v in unique
                ]
            }
        )
    return terms
