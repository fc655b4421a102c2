"""Drawing the who-may-talk-to-whom graph with Graphviz's `dot` (Debian `graphviz`),
server-side, to an SVG the page embeds inline (no script, no external host: the UI's
Content-Security-Policy stays `default-src 'self'`).

Identities are grouped into nested clusters by their trust domain and path segments
(`spiffe://example.org/ns/web/frontend` sits in `example.org/ns` > `web`), edges are
labelled with what the deciding rules allow, denials drawn red and dashed; every edge links
to its page (its rules and its decisions), every identity to the graph filtered by it.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from pki.errors import TrustdError
from trustd.domain.flows import OverlayEdge, Usage
from trustd.domain.ui import Edge

# `dot` lays out a few hundred nodes in well under a second; a layout that takes longer
# than this is not worth waiting for on a page load.
DOT_TIMEOUT_SECONDS = 10.0
# Graphviz resolves fonts through fontconfig; DejaVu ships with Debian's graphviz.
FONT = "DejaVu Sans"
ALLOW_COLOUR = "#067647"
DENY_COLOUR = "#b42318"
UNUSED_COLOUR = "#667085"
# Longer last segments (generated names) are cut, the whole SPIFFE ID in the tooltip.
LABEL_LENGTH = 32


class GraphNotDrawn(TrustdError):
    """`dot` is missing, failed or took too long; the page still lists the edges."""

    title = "Graph not drawn"


def _quoted(text: str) -> str:
    """A DOT double-quoted string (DOT language: `\\"` and `\\\\` are the escapes; a
    backslash would otherwise start a Graphviz escape such as `\\N`)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def segments(spiffe_id: str) -> list[str]:
    """The trust domain and path segments of a SPIFFE ID (SPIFFE-ID §2)."""
    rest = spiffe_id.removeprefix("spiffe://")
    return [part for part in rest.split("/") if part]


@dataclass
class _Cluster:
    name: str
    # The SPIFFE ID prefix the cluster groups (`spiffe://example.org/ns/web`).
    path: str = ""
    children: dict[str, _Cluster] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)


def _tree(identities: Sequence[str]) -> _Cluster:
    root = _Cluster("", "spiffe:/")
    for identity in identities:
        parts = segments(identity)
        where = root
        for part in parts[:-1]:
            where = where.children.setdefault(part, _Cluster(part, f"{where.path}/{part}"))
        where.members.append(identity)
    return root


def _collapsed(cluster: _Cluster) -> _Cluster:
    """Merge a cluster holding nothing but one sub-cluster into it (`example.org` > `ns` >
    `web` with nothing at `ns` reads `example.org/ns` > `web`): one box per level that
    groups something."""
    children = {k: _collapsed(c) for k, c in cluster.children.items()}
    if not cluster.members and len(children) == 1:
        (child,) = children.values()
        joined = f"{cluster.name}/{child.name}" if cluster.name else child.name
        return _Cluster(joined, child.path, child.children, child.members)
    return _Cluster(cluster.name, cluster.path, children, cluster.members)


def edge_href(edge: Edge) -> str:
    return "/ui/graph/edge?" + urlencode({"source": edge.source, "destination": edge.destination})


def edge_label(edge: Edge) -> str:
    """What the edge allows (one line per allow rule), or which deny rule forbids it."""
    if edge.allowed:
        lines = [rule.grants for rule in edge.rules] or ["allowed"]
    else:
        lines = [f"denied by {rule.name}" for rule in edge.rules] or ["denied"]
    return "\n".join(lines)


def _drawn_identities(
    identities: Sequence[str], focus: str | None
) -> tuple[list[str], dict[str, str]]:
    """The DOT lines of the graph's header and its clustered identities, and the node name
    of each identity."""
    numbers = {identity: f"n{i}" for i, identity in enumerate(identities)}
    root = _collapsed(_tree(identities))
    out = [
        "digraph trustd {",
        f"  graph [rankdir=LR, fontname={_quoted(FONT)}, fontsize=11, nodesep=0.35, "
        f'ranksep=0.9, bgcolor="transparent", labelloc=t, labeljust=l, '
        f"label={_quoted(root.name)}];",
        f'  node [shape=box, style="rounded,filled", fillcolor="#eef4ff", color="#2457c5", '
        f'fontname={_quoted(FONT)}, fontsize=10, height=0.3, margin="0.15,0.05"];',
        f"  edge [fontname={_quoted(FONT)}, fontsize=9, arrowsize=0.7];",
    ]
    counter = iter(range(1_000_000))

    def emit(cluster: _Cluster, depth: int) -> None:
        pad = "  " * (depth + 1)
        for identity in cluster.members:
            label = segments(identity)[-1] if segments(identity) else identity
            if len(label) > LABEL_LENGTH:
                label = label[: LABEL_LENGTH - 1] + "…"
            attrs = [
                f"label={_quoted(label)}",
                f"tooltip={_quoted(identity)}",
                f"URL={_quoted('/ui/graph?' + urlencode({'identity': identity}))}",
                f"id={_quoted(numbers[identity])}",
            ]
            if identity == focus:
                attrs.append('fillcolor="#fff4cc", penwidth=2')
            out.append(f"{pad}{numbers[identity]} [{', '.join(attrs)}];")
        for child in cluster.children.values():
            out.append(f"{pad}subgraph cluster_{next(counter)} {{")
            out.append(
                f"{pad}  label={_quoted(child.name)}; tooltip={_quoted(child.path)}; labeljust=l; "
                f'style="rounded,filled"; fillcolor="#f8fafc"; color="#98a2b3"; '
                f'fontcolor="#475467";'
            )
            emit(child, depth + 1)
            out.append(f"{pad}}}")

    emit(root, 0)
    return out, numbers


def dot_source(identities: Sequence[str], edges: Sequence[Edge], focus: str | None = None) -> str:
    """The graph in the DOT language."""
    out, numbers = _drawn_identities(identities, focus)
    drawn: set[tuple[str, str]] = set()
    for i, edge in enumerate(edges):
        if edge.source not in numbers or edge.destination not in numbers:
            continue
        colour = ALLOW_COLOUR if edge.allowed else DENY_COLOUR
        attrs = [
            f"label={_quoted(edge_label(edge))}",
            f"color={_quoted(colour)}",
            f"fontcolor={_quoted(colour)}",
            # `&` written as the entity: the SVG is parsed as part of the HTML page.
            f"URL={_quoted(edge_href(edge).replace('&', '&amp;'))}",
            f"tooltip={_quoted(f'{edge.source} → {edge.destination}: ' + '; '.join(edge.reasons))}",
            f"id={_quoted(f'edge{i}')}",
            f"class={_quoted('allow' if edge.allowed else 'deny')}",
        ]
        if not edge.allowed:
            attrs.append("style=dashed")
        # The way back of a pair drawn both ways does not rank its ends: dot would put them
        # side by side and lay both labels on one spot.
        if (edge.destination, edge.source) in drawn:
            attrs.append("constraint=false")
        drawn.add((edge.source, edge.destination))
        out.append(f"  {numbers[edge.source]} -> {numbers[edge.destination]} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def traffic_href(source: str, destination: str) -> str:
    """The flows list of one pair."""
    return "/ui/flows?" + urlencode({"source": source, "destination": destination})


# How the traffic overlay draws each kind of edge.
_USAGE_STYLE = {
    Usage.SEEN: (ALLOW_COLOUR, "solid", "allowed, seen"),
    Usage.UNUSED: (UNUSED_COLOUR, "dashed", "allowed, unused: least-privilege candidate"),
    Usage.DENIED: (DENY_COLOUR, "bold", "denied attempts"),
}


def traffic_label(edge: OverlayEdge) -> str:
    """The edge's label: what was seen on it and what decides it."""
    if edge.usage is Usage.UNUSED:
        return f"unused\n{edge.decided_by}"
    seen = f"{edge.count} events"
    if edge.usage is Usage.DENIED:
        return f"denied: {seen}\n{edge.decided_by}"
    return f"{seen}\n{edge.decided_by}"


def traffic_dot_source(
    identities: Sequence[str], edges: Sequence[OverlayEdge], focus: str | None = None
) -> str:
    """The graph from traffic in the DOT language: allowed-and-seen edges solid,
    allowed-but-unused dashed, denied attempts red; each links to the pair's flows."""
    out, numbers = _drawn_identities(identities, focus)
    drawn: set[tuple[str, str]] = set()
    for i, edge in enumerate(edges):
        if edge.source not in numbers or edge.destination not in numbers:
            continue
        colour, style, meaning = _USAGE_STYLE[edge.usage]
        tooltip = f"{edge.source} → {edge.destination}: {meaning}; {edge.decided_by}"
        attrs = [
            f"label={_quoted(traffic_label(edge))}",
            f"color={_quoted(colour)}",
            f"fontcolor={_quoted(colour)}",
            f"style={style}",
            f"URL={_quoted(traffic_href(edge.source, edge.destination).replace('&', '&amp;'))}",
            f"tooltip={_quoted(tooltip)}",
            f"id={_quoted(f'traffic{i}')}",
            f"class={_quoted(edge.usage.value)}",
        ]
        if (edge.destination, edge.source) in drawn:
            attrs.append("constraint=false")
        drawn.add((edge.source, edge.destination))
        out.append(f"  {numbers[edge.source]} -> {numbers[edge.destination]} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


@functools.lru_cache(maxsize=32)
def render_svg(source: str) -> str:
    """`dot -Tsvg` of `source`, as an inline `<svg>` element (no XML prologue, doctype or
    comments). Cached by source: the graph only changes with the policy or the entries.

    Raises:
        GraphNotDrawn: `dot` is not installed, failed, or ran past `DOT_TIMEOUT_SECONDS`.
    """
    dot = shutil.which("dot")
    if dot is None:
        raise GraphNotDrawn("Graphviz's dot is not installed (Debian: apt-get install graphviz)")
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell; DOT on stdin
            [dot, "-Tsvg"],
            input=source.encode(),
            capture_output=True,
            timeout=DOT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GraphNotDrawn(f"dot took longer than {DOT_TIMEOUT_SECONDS:g} s") from None
    if done.returncode != 0:
        raise GraphNotDrawn(f"dot failed: {done.stderr.decode(errors='replace')[:300]}")
    svg = _COMMENT.sub("", _PROLOGUE.sub("", done.stdout.decode()))
    return svg.strip()
