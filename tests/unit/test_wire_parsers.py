"""Property tests for the parsers that read untrusted wire input: whatever the input, each
either returns a value or raises its own documented error, and what it returns round-trips
(XFCC, ACME JWS and payloads)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pki.acme.errors import AcmeError, Malformed
from pki.acme.jws import parse_jwk, parse_jws
from pki.acme.messages import (
    AccountUpdate,
    Finalize,
    NewAccount,
    NewOrder,
    Revocation,
    parse_payload,
)
from trustd.xfcc import MalformedXfcc, parse_xfcc

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

# -- XFCC ----------------------------------------------------------------------------------

_KEYS = st.sampled_from(["by", "hash", "cert", "chain", "subject", "uri", "dns"])
_VALUES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=30
).filter(lambda v: v == v.strip())


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(st.lists(st.dictionaries(_KEYS, _VALUES, min_size=1, max_size=4), max_size=3))
def test_xfcc_round_trips_quoted_elements(elements: list[dict[str, str]]) -> None:
    header = ",".join(";".join(f"{k}={_quote(v)}" for k, v in e.items()) for e in elements)
    assert parse_xfcc(header) == elements


@given(st.text(max_size=200))
def test_xfcc_parses_or_refuses_anything(header: str) -> None:
    try:
        elements = parse_xfcc(header)
    except MalformedXfcc:
        return
    assert all(isinstance(e, dict) and e for e in elements)
    assert all(k == k.lower() for e in elements for k in e)


# -- ACME ----------------------------------------------------------------------------------


@given(st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_jws_parses_or_refuses_with_an_acme_error(body: bytes) -> None:
    # Anything else (KeyError, TypeError, binascii.Error, ...) fails the test.
    with contextlib.suppress(AcmeError):
        parse_jws(body)


@given(json_values)
def test_jwk_parses_or_refuses_with_an_acme_error(value: Any) -> None:
    # Anything else (KeyError, TypeError, binascii.Error, ...) fails the test.
    with contextlib.suppress(AcmeError):
        parse_jwk(value)


@given(
    st.sampled_from([NewAccount, AccountUpdate, NewOrder, Finalize, Revocation]),
    st.dictionaries(
        st.sampled_from(
            [
                "contact",
                "termsOfServiceAgreed",
                "onlyReturnExisting",
                "status",
                "identifiers",
                "notBefore",
                "csr",
                "certificate",
                "reason",
                "profile",
                "x",
            ]
        ),
        json_values,
        max_size=5,
    ),
)
def test_payloads_validate_or_are_malformed(model: Any, payload: dict[str, Any]) -> None:
    try:
        parsed = parse_payload(model, payload)
    except Malformed:
        return
    # Flags and reason codes are JSON booleans and integers, never coerced.
    for name in ("terms_of_service_agreed", "only_return_existing"):
        value = getattr(parsed, name, None)
        assert value is None or type(value) is bool
    reason = getattr(parsed, "reason", None)
    assert reason is None or type(reason) is int
