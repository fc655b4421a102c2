"""Envoy's x-forwarded-client-cert grammar: quoted values, escapes, several hops."""

from __future__ import annotations

import pytest

from trustd.xfcc import MalformedXfcc, parse_xfcc


@pytest.mark.parametrize(
    ("header", "elements"),
    [
        (
            "By=spiffe://a/x;Hash=ab12;URI=spiffe://a/y",
            [{"by": "spiffe://a/x", "hash": "ab12", "uri": "spiffe://a/y"}],
        ),
        # Quoted values may hold `,;=`; an escaped quote stays in the value.
        (
            'Subject="CN=a,O=b;c";uri="spiffe://a/y";DNS="x\\"y"',
            [{"subject": "CN=a,O=b;c", "uri": "spiffe://a/y", "dns": 'x"y'}],
        ),
        # Two hops, nearest the client first; a repeated key keeps its first value.
        (
            "URI=spiffe://a/1;URI=spiffe://a/2, By=spiffe://a/p;URI=spiffe://a/3",
            [{"uri": "spiffe://a/1"}, {"by": "spiffe://a/p", "uri": "spiffe://a/3"}],
        ),
        ("Cert=-----BEGIN%20CERTIFICATE-----%0A", [{"cert": "-----BEGIN%20CERTIFICATE-----%0A"}]),
        ("", []),
    ],
)
def test_parses(header: str, elements: list[dict[str, str]]) -> None:
    assert parse_xfcc(header) == elements


@pytest.mark.parametrize("header", ['URI="spiffe://a/y', "URI", "=x", "By=a;Hash"])
def test_malformed(header: str) -> None:
    with pytest.raises(MalformedXfcc):
        parse_xfcc(header)
