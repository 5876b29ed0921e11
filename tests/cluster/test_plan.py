"""`Plan.of`: what a node serves for names held elsewhere, from one registry read."""

from __future__ import annotations

from muxtunnel.cluster import ClaimKey, Exclusive, Grouped, Member, Owner
from muxtunnel.server._cluster_plan import CLIENT_GROUP, Plan

ADDRESSES = {"a": "10.0.0.1:7836", "b": "10.0.0.2:7836", "c": "10.0.0.3:7836"}


def grouped(group: str, *members: tuple[str, str]) -> Grouped:
    return Grouped(group, tuple(Member(Owner(n, h), 5.0) for n, h in members), 5.0)


def test_names_of_one_session_one_client_and_one_group() -> None:
    holdings = [
        (ClaimKey.service("solo"), Exclusive(Owner("a", "1/solo"), 5.0)),
        (ClaimKey.port("tcp", 2000), Exclusive(Owner("a", "1/solo"), 5.0)),
        (ClaimKey.service("both"), grouped(CLIENT_GROUP + "x", ("a", "2/both"), ("b", "7/both"))),
        (ClaimKey.port("tcp", 3000), grouped(CLIENT_GROUP + "x", ("a", "2/both"), ("b", "7/both"))),
        (ClaimKey.service("web"), grouped("web", ("a", "3/w1"), ("b", "8/w2"), ("b", "9/w3"))),
        (ClaimKey.http("web.example", "/"), grouped("web", ("a", "3/w1"), ("b", "8/w2"))),
    ]
    at_c = Plan.of(holdings, "c", ADDRESSES)
    assert at_c.holders == {"solo": "a", "both": "a"}
    assert at_c.group_nodes == {"web": {"a": 1, "b": 2}}
    assert set(at_c.wanted) == {
        ClaimKey.port("tcp", 2000),
        ClaimKey.port("tcp", 3000),
        ClaimKey.http("web.example", "/"),
    }
    both = at_c.wanted[ClaimKey.port("tcp", 3000)]
    assert both.service == "both"  # the service's own name, not the client's pseudo-group
    assert [n for n, _ in both.nodes] == ["a", "b"]
    assert at_c.wanted[ClaimKey.http("web.example", "/")].service == "web"
    # B holds "both" and is a member of "web" itself: it serves them; A's solo is mirrored.
    at_b = Plan.of(holdings, "b", ADDRESSES)
    assert set(at_b.wanted) == {ClaimKey.port("tcp", 2000)}


def test_a_node_without_an_address_is_left_out() -> None:
    holdings = [
        (ClaimKey.port("tcp", 3000), grouped(CLIENT_GROUP + "x", ("a", "2/s"), ("z", "1/s")))
    ]
    remote = Plan.of(holdings, "c", ADDRESSES).wanted[ClaimKey.port("tcp", 3000)]
    assert [n for n, _ in remote.nodes] == ["a"]
    gone = [(ClaimKey.port("tcp", 4000), Exclusive(Owner("z", "1/s"), 5.0))]
    assert Plan.of(gone, "c", ADDRESSES).wanted == {}


def test_a_groups_unhealthy_members_get_no_visitors_from_other_nodes() -> None:
    """Only healthy members count (their node's slots, a port's nodes); none healthy: all."""
    sick_a = Member(Owner("a", "3/w1"), 5.0, healthy=False)
    b = Member(Owner("b", "8/w2"), 5.0)
    sick_b = Member(Owner("b", "9/w3"), 5.0, healthy=False)
    pool = Grouped("web", (sick_a, b, sick_b), 5.0)
    holdings = [(ClaimKey.service("web"), pool), (ClaimKey.port("tcp", 3000), pool)]
    at_c = Plan.of(holdings, "c", ADDRESSES)
    assert at_c.group_nodes == {"web": {"b": 1}}
    assert [n for n, _ in at_c.wanted[ClaimKey.port("tcp", 3000)].nodes] == ["b"]
    assert Plan.of(holdings, "a", ADDRESSES).group_nodes == {"web": {"b": 1}}
    all_sick = Grouped("web", (sick_a, sick_b), 5.0)
    holdings = [(ClaimKey.service("web"), all_sick), (ClaimKey.port("tcp", 3000), all_sick)]
    at_c = Plan.of(holdings, "c", ADDRESSES)
    assert at_c.group_nodes == {"web": {"a": 1, "b": 1}}
    assert [n for n, _ in at_c.wanted[ClaimKey.port("tcp", 3000)].nodes] == ["a", "b"]
