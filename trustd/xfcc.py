"""Envoy's `x-forwarded-client-cert` header (XFCC), as the proxies in front of trustd and in
front of workloads set it.

Grammar (Envoy HTTP header manipulation, "x-forwarded-client-cert"): elements separated by
`,`, one per proxy hop; each element `key=value` pairs separated by `;`; a value holding
`,`, `;` or `=` is double-quoted, with `"` inside it escaped as `\\"`. Keys are
case-insensitive: By, Hash, Cert (URL-encoded PEM), Chain (URL-encoded PEM chain), Subject,
URI, DNS. A key may repeat (several URI or DNS SANs); the first value is kept here, as a
SPIFFE ID is the only URI SAN an X509-SVID may carry (X509-SVID §2).
"""

from __future__ import annotations


class MalformedXfcc(ValueError):
    """The header does not follow the grammar."""


def parse_xfcc(header: str) -> list[dict[str, str]]:
    """The header's elements, the hop nearest the client first, each as lower-cased key ->
    value (quotes removed).

    Raises:
        MalformedXfcc: an unterminated quote or a pair without `=`.
    """
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    key, value, quoted, escaped = "", "", False, False
    in_value = False

    def close_pair() -> None:
        nonlocal key, value, in_value
        name = key.strip().lower()
        if name or value:
            if not in_value or not name:
                raise MalformedXfcc(f"x-forwarded-client-cert: {key.strip()!r} has no value")
            element.setdefault(name, value.strip())
        key, value, in_value = "", "", False

    for char in header:
        if quoted:
            if escaped:
                value, escaped = value + char, False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            else:
                value += char
        elif char == '"' and in_value and not value.strip():
            quoted = True
        elif char == "=" and not in_value:
            in_value = True
        elif char in ";,":
            close_pair()
            if char == ",":
                elements.append(element)
                element = {}
        elif in_value:
            value += char
        else:
            key += char
    if quoted:
        raise MalformedXfcc("x-forwarded-client-cert: unterminated quoted value")
    close_pair()
    elements.append(element)
    return [e for e in elements if e]
