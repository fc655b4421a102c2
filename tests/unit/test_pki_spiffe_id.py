"""SPIFFE ID and trust domain parsing (SPIFFE-ID spec §2)."""

from __future__ import annotations

import contextlib
import dataclasses
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pki.errors import InvalidSpiffeId, InvalidTrustDomain, TrustdError
from pki.spiffe_id import MAX_SPIFFE_ID_BYTES, SpiffeId, TrustDomain

TD_ALPHABET = string.ascii_lowercase + string.digits + ".-_"
PATH_ALPHABET = string.ascii_letters + string.digits + ".-_"

trust_domain_names = st.text(TD_ALPHABET, min_size=1, max_size=60)
segments = st.text(PATH_ALPHABET, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, max_size=6).map(lambda segs: "".join("/" + s for s in segs))
spiffe_ids = st.builds(lambda td, path: f"spiffe://{td}{path}", trust_domain_names, paths)


# --------------------------------------------------------------------------- round trips


@given(spiffe_ids)
def test_valid_ids_round_trip(text: str) -> None:
    sid = SpiffeId.parse(text)
    assert str(sid) == text
    assert SpiffeId.parse(str(sid)) == sid
    assert SpiffeId.from_parts(sid.trust_domain, sid.path) == sid


@given(trust_domain_names)
def test_valid_trust_domains_round_trip(name: str) -> None:
    td = TrustDomain.parse(name)
    assert str(td) == name
    assert TrustDomain.parse(td.id_string()) == td
    assert td.id_string() == f"spiffe://{name}"
    assert td.spiffe_id() == SpiffeId.parse(td.id_string())


def test_parse_components() -> None:
    sid = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
    assert sid.trust_domain == TrustDomain("example.org")
    assert sid.path == "/ns/prod/sa/web"
    assert not sid.is_trust_domain_id
    assert SpiffeId.parse("spiffe://example.org").is_trust_domain_id


def test_value_objects_are_frozen() -> None:
    sid = SpiffeId.parse("spiffe://example.org/a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sid.path = "/b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sid.trust_domain.name = "evil.org"  # type: ignore[misc]


def test_constructor_validates_like_parse() -> None:
    with pytest.raises(InvalidSpiffeId, match="trailing"):
        SpiffeId(TrustDomain("example.org"), "/a/")
    with pytest.raises(InvalidTrustDomain, match="lowercase"):
        TrustDomain("Example.org")


def test_path_is_case_sensitive() -> None:
    # SPIFFE-ID §2.4: the path is case-sensitive.
    assert SpiffeId.parse("spiffe://example.org/A") != SpiffeId.parse("spiffe://example.org/a")


def test_membership() -> None:
    sid = SpiffeId.parse("spiffe://example.org/web")
    assert sid.is_member_of(TrustDomain("example.org"))
    assert not sid.is_member_of(TrustDomain("example.com"))
    sid.require_member_of(TrustDomain("example.org"))
    with pytest.raises(InvalidSpiffeId, match=r"not a member of trust domain 'example\.com'"):
        sid.require_member_of(TrustDomain("example.com"))


def test_max_length_boundary() -> None:
    prefix = "spiffe://example.org/"
    exact = prefix + "a" * (MAX_SPIFFE_ID_BYTES - len(prefix))
    assert len(exact) == MAX_SPIFFE_ID_BYTES
    assert str(SpiffeId.parse(exact)) == exact
    with pytest.raises(InvalidSpiffeId, match="longer than 2048 bytes"):
        SpiffeId.parse(exact + "a")
    with pytest.raises(InvalidSpiffeId, match="longer than 2048 bytes"):
        SpiffeId.from_parts("example.org", "/" + "a" * MAX_SPIFFE_ID_BYTES)


def test_trust_domain_max_length_boundary() -> None:
    assert TrustDomain.parse("a" * 255).name == "a" * 255
    with pytest.raises(InvalidTrustDomain, match="longer than 255 bytes"):
        TrustDomain.parse("a" * 256)
    with pytest.raises(InvalidSpiffeId, match="longer than 255 bytes"):
        SpiffeId.parse("spiffe://" + "a" * 256 + "/x")


def test_from_parts_accepts_trust_domain_name() -> None:
    assert SpiffeId.from_parts("example.org", "/x") == SpiffeId.parse("spiffe://example.org/x")
    assert SpiffeId.from_parts("spiffe://example.org", "") == SpiffeId.parse("spiffe://example.org")
    with pytest.raises(InvalidSpiffeId, match="must be empty or start with '/'"):
        SpiffeId.from_parts("example.org", "x")


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("example.org/workload", "scheme must be 'spiffe://'"),
        ("https://example.org/workload", "scheme must be 'spiffe://'"),
        ("spiffe:/example.org/workload", "scheme must be 'spiffe://'"),
        ("SPIFFE://example.org/workload", "scheme must be lowercase"),
        ("Spiffe://example.org/workload", "scheme must be lowercase"),
        ("spiffe://Example.org/workload", "trust domain must be lowercase"),
        ("spiffe://user@example.org/workload", "userinfo"),
        ("spiffe://example.org:443/workload", "port"),
        ("spiffe://example.org/workload?x=1", "query"),
        ("spiffe://example.org?x=1", "query"),
        ("spiffe://example.org/workload#frag", "fragment"),
        ("spiffe:///workload", "trust domain is missing"),
        ("spiffe://", "trust domain is missing"),
        ("spiffe://example.org//workload", "empty segments"),
        ("spiffe://example.org/a/./b", "relative segment '.'"),
        ("spiffe://example.org/a/../b", "relative segment '..'"),
        ("spiffe://example.org/..", "relative segment '..'"),
        ("spiffe://example.org/workload/", "trailing '/'"),
        ("spiffe://example.org/", "trailing '/'"),
        ("spiffe://example.org/a%20b", "percent-encoded"),
        ("spiffe://exa%41mple.org/a", "percent-encoded"),
        ("spiffe://example.org/a b", "characters outside"),
        ("spiffe://example.org/a*b", "characters outside"),
        ("spiffe://example.org/caf\u00e9", "characters outside"),
        ("spiffe://exam!ple.org/a", "characters outside"),
        ("spiffe://[::1]/a", "IPv6"),
    ],
)
def test_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeId) as info:
        SpiffeId.parse(text)
    assert reason in info.value.detail
    # Errors echo the bad input (repr-truncated) so operators can see what was refused.
    assert info.value.fields["value"] == repr(text) or len(repr(text)) > 96
    assert isinstance(info.value, TrustdError)
    assert info.value.title == "Invalid SPIFFE ID"


def test_error_echo_is_truncated() -> None:
    text = "spiffe://example.org/" + "a b" * 1000
    with pytest.raises(InvalidSpiffeId) as info:
        SpiffeId.parse(text)
    assert len(str(info.value)) < 300
    assert str(info.value).endswith("…")


def test_rejects_non_string() -> None:
    with pytest.raises(InvalidSpiffeId, match="must be a string"):
        SpiffeId.parse(b"spiffe://example.org/x")  # type: ignore[arg-type]


@given(trust_domain_names, st.characters(exclude_characters=PATH_ALPHABET + "/?#%"), paths)
def test_rejects_any_bad_path_character(td: str, bad: str, path: str) -> None:
    with pytest.raises(InvalidSpiffeId, match="characters outside"):
        SpiffeId.parse(f"spiffe://{td}{path}/x{bad}y")


@given(
    st.text(TD_ALPHABET, max_size=10),
    st.characters(exclude_characters=TD_ALPHABET + "/?#"),
    st.text(TD_ALPHABET, max_size=10),
)
def test_rejects_any_bad_trust_domain_character(left: str, bad: str, right: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(f"spiffe://{left}{bad}{right}/workload")
    with pytest.raises(InvalidTrustDomain):
        TrustDomain.parse(f"{left}{bad}{right}")


@given(spiffe_ids)
def test_rejects_trailing_slash_everywhere(text: str) -> None:
    with pytest.raises(InvalidSpiffeId, match="trailing"):
        SpiffeId.parse(text + "/")


@given(spiffe_ids, st.sampled_from([".", ".."]))
def test_rejects_dot_segments_everywhere(text: str, dots: str) -> None:
    with pytest.raises(InvalidSpiffeId, match="relative segment"):
        SpiffeId.parse(f"{text}/{dots}/x")


@given(spiffe_ids)
def test_rejects_uppercased_scheme_or_trust_domain(text: str) -> None:
    upper_scheme = "SPIFFE" + text[len("spiffe") :]
    with pytest.raises(InvalidSpiffeId, match="lowercase"):
        SpiffeId.parse(upper_scheme)
    td_end = text.find("/", len("spiffe://"))
    td = text[len("spiffe://") : td_end if td_end >= 0 else None]
    assume(td.upper() != td)
    with pytest.raises(InvalidSpiffeId, match="lowercase"):
        SpiffeId.parse("spiffe://" + td.upper() + text[len("spiffe://") + len(td) :])


@given(spiffe_ids, st.sampled_from(["?", "#"]), st.text(PATH_ALPHABET, max_size=5))
def test_rejects_query_and_fragment_everywhere(text: str, sep: str, tail: str) -> None:
    with pytest.raises(InvalidSpiffeId, match="query" if sep == "?" else "fragment"):
        SpiffeId.parse(text + sep + tail)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Example.org", "lowercase"),
        ("example.org:8080", "port"),
        ("user@example.org", "userinfo"),
        ("spiffe://", "empty"),
        ("SPIFFE://example.org", "scheme must be lowercase"),
        ("https://example.org", "bare name or spiffe://"),
        ("spiffe://example.org/path", "must not have a path"),
        ("spiffe://example.org?q", "must not have a path, query or fragment"),
        ("exa mple.org", "characters outside"),
        ("exa%41mple.org", "percent-encoded"),
    ],
)
def test_trust_domain_rejections(text: str, reason: str) -> None:
    with pytest.raises(InvalidTrustDomain) as info:
        TrustDomain.parse(text)
    assert reason in info.value.detail
    assert info.value.title == "Invalid trust domain"


def test_trust_domain_accepts_ipv4_like_names() -> None:
    # SPIFFE-ID §2.1: dotted quads are not excluded and are not treated specially.
    assert TrustDomain.parse("10.0.0.1").name == "10.0.0.1"
    assert TrustDomain.parse("my_td-1.example").name == "my_td-1.example"


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://example.org/\ud800",
        "spiffe://exa\udfffmple.org/x",
        "spiffe://example.org/a/\udc80b",
        "\ud800spiffe://example.org",
    ],
)
def test_lone_surrogates_are_invalid_ids_not_encoding_errors(text: str) -> None:
    # A lone surrogate has no UTF-8 form; parse promises InvalidSpiffeId for any bad string.
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(text)


@pytest.mark.parametrize("name", ["exa\ud800mple.org", "spiffe://\udfff"])
def test_lone_surrogates_are_invalid_trust_domains(name: str) -> None:
    with pytest.raises(InvalidTrustDomain):
        TrustDomain.parse(name)


@given(st.text(alphabet=st.characters(categories=["Cs", "Ll", "Nd", "Po"]), max_size=40))
def test_parse_raises_only_its_own_error(text: str) -> None:
    with contextlib.suppress(InvalidSpiffeId):
        SpiffeId.parse("spiffe://" + text)
