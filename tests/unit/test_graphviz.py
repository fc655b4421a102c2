"""The graph's drawing: DOT built from the identities and edges, laid out by Graphviz's
`dot` (a real subprocess; the Debian package is in the Makefile's DEB_PACKAGES)."""

from __future__ import annotations

import re

from trustd.domain.ui import Edge, MeshRule
from trustd.web.graphviz import dot_source, edge_label, render_svg, segments

TD = "spiffe://example.org"


def test_clusters_follow_trust_domain_and_path_segments() -> None:
    identities = [f"{TD}/ns/web/frontend", f"{TD}/ns/web/admin", f"{TD}/ns/db/postgres"]
    source = dot_source(identities, [])
    # One cluster per path prefix that groups something; the shared prefix is the label.
    assert 'label="example.org/ns"' in source
    assert source.count("subgraph cluster_") == 2
    assert 'tooltip="spiffe://example.org/ns/web"' in source
    assert segments(f"{TD}/ns/web/frontend") == ["example.org", "ns", "web", "frontend"]


def test_edges_are_labelled_with_what_the_rules_allow() -> None:
    rule = MeshRule("allow", "scrape", (9090,), ("http",), ("GET",), ("/metrics",))
    edge = Edge(f"{TD}/a/x", f"{TD}/b/y", True, ("allowed by rule scrape",), (rule,))
    assert edge_label(edge) == "http GET :9090 /metrics"
    anything = MeshRule("allow", "open")
    assert anything.grants == "any protocol any port"
    denied = Edge(f"{TD}/a/x", f"{TD}/b/y", False, (), (MeshRule("deny", "q"),))
    svg = render_svg(dot_source([edge.source, edge.destination], [edge, denied]))
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert "http GET :9090 /metrics" in texts
    assert "denied by q" in texts
    assert 'stroke-dasharray="5,2"' in svg  # the denial is dashed ...
    assert 'stroke="#b42318"' in svg  # ... and red
    assert svg.startswith("<svg") and "<?xml" not in svg and "<!--" not in svg


def test_names_from_policy_data_cannot_inject_markup() -> None:
    hostile = '</text><script>alert(1)</script>"/><svg onload=alert(1)>'
    rule = MeshRule("allow", hostile, (1,), ("tcp",), (), (hostile,))
    identities = [f"{TD}/ns/a/x&y", f'{TD}/ns/b/"z"']
    edge = Edge(identities[0], identities[1], True, (f"allowed by rule {hostile}",), (rule,))
    svg = render_svg(dot_source(identities, [edge]))
    assert "<script" not in svg
    assert "<svg onload" not in svg
    assert "&lt;script&gt;" in svg
    # Query strings in links are written with the entity, as HTML attributes need.
    assert "&amp;destination=" in svg


def test_the_way_back_of_a_pair_does_not_rank_its_ends() -> None:
    a, b = f"{TD}/ns/m/prometheus", f"{TD}/ns/q/suspect"
    there = Edge(a, b, True, (), (MeshRule("allow", "scrape", (9090,)),))
    back = Edge(b, a, False, (), (MeshRule("deny", "quarantine"),))
    lines = dot_source([a, b], [there, back]).splitlines()
    assert "constraint=false" not in next(line for line in lines if "n0 -> n1" in line)
    assert "constraint=false" in next(line for line in lines if "n1 -> n0" in line)
