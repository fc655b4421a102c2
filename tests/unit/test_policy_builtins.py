"""Builtins added to the embedded engine, checked against OPA's documented behaviour."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import jwt
import pytest

from pki.ca import certificate_pem
from pki.keys import KeyType, public_key_pem
from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError
from tests.unit.pki_helpers import T0, TestCA, cached_key

MODULE = """
package b
import rego.v1

decoded := io.jwt.decode(input.token)
es256 := io.jwt.verify_es256(input.token, input.key)
rs256 := io.jwt.verify_rs256(input.token, input.key)
ps256 := io.jwt.verify_ps256(input.token, input.key)
eddsa := io.jwt.verify_eddsa(input.token, input.key)
decode_verify := io.jwt.decode_verify(input.token, input.constraints)
certs := crypto.x509.parse_certificates(input.certs)
chain := crypto.x509.parse_and_verify_certificates(input.certs)
sha := crypto.sha256("abc")
"""


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    return EmbeddedEngine({"b.rego": MODULE})


def ask(engine: EmbeddedEngine, rule: str, **input: Any) -> Any:
    return engine.query(f"data.b.{rule}", json.dumps(input)).value


def token(key_type: KeyType, alg: str, **claims: Any) -> tuple[str, str]:
    key = cached_key(key_type)
    payload = {"sub": "spiffe://example.org/web", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm=alg), public_key_pem(key.public_key())


@pytest.mark.parametrize(
    ("key_type", "alg", "rule"),
    [
        (KeyType.EC_P256, "ES256", "es256"),
        (KeyType.RSA_2048, "RS256", "rs256"),
        (KeyType.RSA_2048, "PS256", "ps256"),
        (KeyType.ED25519, "EdDSA", "eddsa"),
    ],
)
def test_verify_accepts_the_right_key_only(
    engine: EmbeddedEngine, key_type: KeyType, alg: str, rule: str
) -> None:
    signed, pem = token(key_type, alg)
    assert ask(engine, rule, token=signed, key=pem) is True
    other = public_key_pem(cached_key(key_type, slot=1).public_key())
    assert ask(engine, rule, token=signed, key=other) is False
    # OPA: verify_es256 with an RS256 token is false, not an error.
    assert ask(engine, "es256" if rule != "es256" else "rs256", token=signed, key=pem) is False


def test_verify_accepts_jwks_and_certificates(engine: EmbeddedEngine) -> None:
    from pki.bundle import public_key_to_jwk

    signed, _ = token(KeyType.EC_P256, "ES256")
    jwk = public_key_to_jwk(cached_key(KeyType.EC_P256).public_key())
    assert ask(engine, "es256", token=signed, key=json.dumps({"keys": [jwk]})) is True
    assert ask(engine, "es256", token=signed, key=json.dumps(jwk)) is True


def test_hmac_and_none_tokens_never_verify(engine: EmbeddedEngine) -> None:
    hs = jwt.encode({"sub": "x"}, "secret-key-of-32-bytes-or-more!!", algorithm="HS256")
    _, pem = token(KeyType.EC_P256, "ES256")
    assert ask(engine, "es256", token=hs, key=pem) is False
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none")
    assert ask(engine, "es256", token=unsigned, key=pem) is False
    # A shared secret is refused loudly, never answered `false` where OPA would verify.
    constraints = {"secret": "secret-key-of-32-bytes-or-more!!"}
    with pytest.raises(PolicyEvaluationError, match="HMAC secrets are not accepted") as info:
        ask(engine, "decode_verify", token=hs, constraints=constraints)
    assert info.value.opa_code == "eval_builtin_error"


def test_decode_returns_header_payload_and_hex_signature(engine: EmbeddedEngine) -> None:
    signed, _ = token(KeyType.EC_P256, "ES256", aud="api")
    header, payload, signature = ask(engine, "decoded", token=signed)
    assert header == {"alg": "ES256", "typ": "JWT"}
    assert payload["aud"] == "api"
    assert len(signature) == 128 and int(signature, 16) >= 0


def test_decode_verify_checks_claims(engine: EmbeddedEngine) -> None:
    signed, pem = token(KeyType.EC_P256, "ES256", aud="api", iss="trustd")
    ok = ask(engine, "decode_verify", token=signed, constraints={"cert": pem, "aud": "api"})
    assert ok[0] is True and ok[2]["iss"] == "trustd"
    for constraints in (
        {"cert": pem},  # the token has an audience, the constraints none
        {"cert": pem, "aud": "other"},
        {"cert": pem, "aud": "api", "iss": "someone-else"},
        {"cert": pem, "aud": "api", "alg": "RS256"},
        {"cert": pem, "aud": "api", "time": (int(time.time()) + 3600) * 10**9},  # expired
    ):
        assert ask(engine, "decode_verify", token=signed, constraints=constraints) == [
            False,
            {},
            {},
        ]


def test_x509_parse_and_verify() -> None:
    ca = TestCA()
    leaf = ca.issue("/web")
    assert ca.intermediate is not None
    certs = certificate_pem(ca.root) + certificate_pem(ca.intermediate) + certificate_pem(leaf)
    now = int(T0.timestamp() * 10**9)
    from policy.builtins import parse_and_verify_certificates, parse_certificates

    parsed = parse_certificates(certificate_pem(leaf))
    assert parsed[0]["URIStrings"] == ["spiffe://example.org/web"]
    assert parsed[0]["IsCA"] is False
    valid, chain = parse_and_verify_certificates(certs, now)
    # Root first in, the verified chain leaf first out (as OPA returns Go's chain).
    assert valid is True and [c["IsCA"] for c in chain] == [False, True, True]
    assert chain[0]["URIStrings"] == ["spiffe://example.org/web"]
    assert chain[2]["EmailAddresses"] is None  # an empty list is Go's nil slice: null
    # Leaf first (the wrong order for OPA) or a missing intermediate does not verify.
    wrong = certificate_pem(leaf) + certificate_pem(ca.intermediate) + certificate_pem(ca.root)
    assert parse_and_verify_certificates(wrong, now) == [False, []]
    gap = certificate_pem(ca.root) + certificate_pem(leaf)
    assert parse_and_verify_certificates(gap, now) == [False, []]
    # After the leaf expires.
    later = now + 30 * 86400 * 10**9
    assert parse_and_verify_certificates(certs, later) == [False, []]


def test_x509_builtins_in_rego(engine: EmbeddedEngine) -> None:
    ca = TestCA()
    pem = certificate_pem(ca.issue("/db"))
    assert ask(engine, "certs", certs=pem)[0]["URIStrings"] == ["spiffe://example.org/db"]
    assert ask(engine, "sha") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# -- builtins OPA has and the engine lacks ------------------------------------------------

EXTRA = """
package x
import rego.v1

hmac := [crypto.hmac.md5("m", "k"), crypto.hmac.sha1("m", "k"), crypto.hmac.sha512("m", "k")]
flat := array.flatten(input.nested)
merged := net.cidr_merge(input.cidrs)
intersects := net.cidr_intersects(input.a, input.b)
matches := net.cidr_contains_matches(input.cidrs, input.ips)
looked := net.lookup_ip_addr(input.name)
rendered := strings.render_template(input.template, input.vars)
signed := io.jwt.encode_sign_raw(input.header, input.payload, input.jwk)
encoded := io.jwt.encode_sign(input.header, input.payload, input.jwk)
keys := crypto.parse_private_keys(input.pem)
pair := crypto.x509.parse_keypair(input.cert, input.key)
csr := crypto.x509.parse_certificate_request(input.csr)
"""


@pytest.fixture(scope="module")
def extra() -> EmbeddedEngine:
    return EmbeddedEngine({"x.rego": EXTRA})


def run(engine: EmbeddedEngine, rule: str, **input: Any) -> Any:
    return engine.query(f"data.x.{rule}", json.dumps(input)).value


def test_hmac_digests(extra: EmbeddedEngine) -> None:
    import hmac

    expected = [hmac.new(b"k", b"m", name).hexdigest() for name in ("md5", "sha1", "sha512")]
    assert run(extra, "hmac") == expected


def test_array_flatten_removes_one_level(extra: EmbeddedEngine) -> None:
    assert run(extra, "flat", nested=[[[1], [2, 3, []]], [[4, 5]], 6]) == [
        [1],
        [2, 3, []],
        [4, 5],
        6,
    ]


def test_cidr_builtins(extra: EmbeddedEngine) -> None:
    cidrs = ["192.0.2.112/30", "192.0.2.116/31", "192.0.2.118/31", "fe80::1/120", "10.1.2.3"]
    # Sets come back sorted; a bare IPv4 address takes its classful mask, as OPA does.
    assert run(extra, "merged", cidrs=cidrs) == ["10.0.0.0/8", "192.0.2.112/29", "fe80::/120"]
    with pytest.raises(PolicyEvaluationError, match="needs prefix length") as info:
        run(extra, "merged", cidrs=["fe80::1"])
    assert info.value.opa_code == "eval_builtin_error"
    assert run(extra, "intersects", a="192.168.1.0/25", b="192.168.1.64/25") is True
    assert run(extra, "intersects", a="192.168.1.0/24", b="192.168.2.0/24") is False
    pairs = run(extra, "matches", cidrs=["1.1.2.0/24", "1.1.1.0/24"], ips=["1.1.1.1", "1.1.2.1"])
    assert pairs == [[0, 1], [1, 0]]
    assert run(extra, "looked", name="10.0.0.1") == ["10.0.0.1"]
    with pytest.raises(PolicyEvaluationError, match="address literals"):
        run(extra, "looked", name="example.org")


@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        ("{{.test}}", {"test": "hello world"}, "hello world"),
        ("{{.n}}/{{.a.b}}", {"n": 2023, "a": {"b": True}}, "2023/true"),
        (
            "{{range $i, $name := .names}}{{if $i}},{{end}}hello {{$name}}{{end}}",
            {"names": ["rohan", "john doe"]},
            "hello rohan,hello john doe",
        ),
        ("{{if .x}}yes{{else}}no{{end}}", {"x": False}, "no"),
        ("test {{.foo}} {{.baz}}", {"baz": 1}, "test <undefined> 1"),
    ],
)
def test_render_template(
    extra: EmbeddedEngine, template: str, variables: dict[str, Any], expected: str
) -> None:
    assert run(extra, "rendered", template=template, vars=variables) == expected


def test_render_template_refuses_what_it_does_not_implement(extra: EmbeddedEngine) -> None:
    with pytest.raises(PolicyEvaluationError, match="unsupported action"):
        run(extra, "rendered", template="{{printf .x}}", vars={"x": 1})


# RFC 7515 Appendix A.1: the HS256 example, header and payload bytes as printed there.
A1_HEADER = '{"typ":"JWT",\r\n "alg":"HS256"}'
A1_PAYLOAD = '{"iss":"joe",\r\n "exp":1300819380,\r\n "http://example.com/is_root":true}'
A1_KEY = {
    "kty": "oct",
    "k": "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
}
A1_SIGNATURE = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"


def test_encode_sign_raw_reproduces_rfc7515_a1(extra: EmbeddedEngine) -> None:
    signed = run(extra, "signed", header=A1_HEADER, payload=A1_PAYLOAD, jwk=json.dumps(A1_KEY))
    assert signed.split(".")[2] == A1_SIGNATURE


def test_encode_sign_serialises_like_go_and_signs_asymmetric_keys(extra: EmbeddedEngine) -> None:
    from pki.bundle import public_key_to_jwk

    header = {"typ": "JWT", "alg": "HS256"}
    signed = run(extra, "encoded", header=header, payload={"b": 1.0, "a": "x"}, jwk=A1_KEY)
    assert jwt.get_unverified_header(signed) == header
    # Keys sorted and compact, integral numbers as integers (Go's json.Marshal).
    assert signed.split(".")[1] == "eyJhIjoieCIsImIiOjF9"
    key = cached_key(KeyType.EC_P256)
    private = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    es = run(extra, "encoded", header={"alg": "ES256"}, payload={"sub": "w"}, jwk=private)
    public = json.dumps(public_key_to_jwk(key.public_key()))
    assert ask_verify(es, public) is True
    with pytest.raises(PolicyEvaluationError, match="unknown signature algorithm"):
        run(extra, "encoded", header={"alg": "none"}, payload={}, jwk=A1_KEY)


def ask_verify(token: str, key: str) -> bool:
    engine = EmbeddedEngine({"v.rego": "package v\nok := io.jwt.verify_es256(input.t, input.k)\n"})
    return bool(engine.query("data.v.ok", json.dumps({"t": token, "k": key})).value)


def test_private_keys_keypairs_and_requests(extra: EmbeddedEngine) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    ca = TestCA()
    leaf_key = cached_key(KeyType.EC_P256)
    leaf = ca.issue("/web", key=leaf_key)
    pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    keys = run(extra, "keys", pem=pem)
    assert len(keys) == 1 and keys[0]["Curve"] == {"Name": "secp256r1"}
    assert run(extra, "keys", pem="nope") == []
    assert run(extra, "keys", pem="") is None
    pair = run(extra, "pair", cert=certificate_pem(leaf), key=pem)
    assert len(pair["Certificate"]) == 1 and pair["PrivateKey"]["Curve"]["Name"] == "secp256r1"
    other = certificate_pem(ca.root)
    with pytest.raises(PolicyEvaluationError, match="does not match"):
        run(extra, "pair", cert=other, key=pem)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.com")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.com")]), False)
        .sign(leaf_key, hashes.SHA256())
    )
    text = request.public_bytes(serialization.Encoding.PEM).decode()
    parsed = run(extra, "csr", csr=text)
    assert parsed["Subject"]["CommonName"] == "example.com"
    assert parsed["DNSNames"] == ["example.com"]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("a.a.[0-9]+z", ".b.b2359825792*594823z", True),
        ("[a-z]+", "[0-9]*", False),
        ("a*", "b*", True),  # both match the empty string
        ("[^a]", "a", False),
        ("ab+", "a", False),
        ("\\.x", "[.]x", True),
    ],
)
def test_globs_match(first: str, second: str, expected: bool) -> None:
    engine = EmbeddedEngine({"g.rego": "package g\nm := regex.globs_match(input.a, input.b)\n"})
    assert engine.query("data.g.m", json.dumps({"a": first, "b": second})).value is expected


def test_globs_match_refuses_syntax_it_does_not_implement() -> None:
    from policy.builtins import BuiltinError, globs_match

    with pytest.raises(BuiltinError, match="unsupported syntax"):
        globs_match("a|b", "a")


def test_malformed_tokens_and_keys_are_errors_not_false(engine: EmbeddedEngine) -> None:
    signed, pem = token(KeyType.EC_P256, "ES256")
    for bad_token, key in (("a.b", pem), (signed, "not a key"), (signed, pem + "EXTRA")):
        with pytest.raises(PolicyEvaluationError) as info:
            ask(engine, "es256", token=bad_token, key=key)
        assert info.value.opa_code == "eval_builtin_error"
    # A well-formed token and key that do not match stay a plain `false`.
    other = public_key_pem(cached_key(KeyType.EC_P384).public_key())
    assert ask(engine, "es256", token=signed, key=other) is False


def test_jwe_and_non_json_jwt_payloads_are_refused(extra: EmbeddedEngine) -> None:
    jwe = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImVuYyI6ImJsYWgifQ.e30.AA"
    engine = EmbeddedEngine({"d.rego": "package d\nx := io.jwt.decode(input.t)\n"})
    with pytest.raises(PolicyEvaluationError, match="JWE"):
        engine.query("data.d.x", json.dumps({"t": jwe}))
    with pytest.raises(PolicyEvaluationError, match="payload is not JSON"):
        run(extra, "signed", header=A1_HEADER, payload="e", jwk=json.dumps(A1_KEY))
    plain = '{"typ":"text/plain","alg":"HS256"}'
    signed = run(extra, "signed", header=plain, payload="e", jwk=json.dumps(A1_KEY))
    assert signed.split(".")[1] == "ZQ"


def test_encode_sign_marshals_sets_in_rego_order(extra: EmbeddedEngine) -> None:
    import base64

    source = (
        'package s\nt := io.jwt.encode_sign({"alg": "HS256"}, {"aud": {"saul", "bob"}}, input.k)\n'
    )
    signed = EmbeddedEngine({"s.rego": source}).query("data.s.t", json.dumps({"k": A1_KEY})).value
    payload = base64.urlsafe_b64decode(signed.split(".")[1] + "==")
    assert json.loads(payload) == {"aud": ["bob", "saul"]}


def test_aws_sign_req_adds_sigv4_headers() -> None:
    engine = EmbeddedEngine(
        {"a.rego": "package a\nr := providers.aws.sign_req(input.req, input.cfg, input.t)\n"}
    )
    cfg = {
        "aws_access_key": "AKID",
        "aws_secret_access_key": "secret",
        "aws_service": "s3",
        "aws_region": "eu-west-1",
    }
    req = {"method": "get", "url": "https://bucket.example.com/k?b=1", "headers": {"foo": "bar"}}
    t = 1451311705 * 10**9

    def sign(**overrides: Any) -> dict[str, Any]:
        document = {"req": req, "cfg": cfg, "t": t, **overrides}
        return dict(engine.query("data.a.r", json.dumps(document)).value)

    signed = sign()
    headers = signed["headers"]
    assert headers["host"] == "bucket.example.com" and headers["x-amz-date"] == "20151228T140825Z"
    assert headers["x-amz-content-sha256"] == hashlib.sha256(b"").hexdigest()
    assert headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKID/20151228/eu-west-1/s3/aws4_request,"
        "SignedHeaders=foo;host;x-amz-content-sha256;x-amz-date,Signature="
    )
    assert signed["method"] == "get" and signed["url"] == req["url"]
    # Every signed part changes the signature.
    other = sign(req={**req, "headers": {"foo": "baz"}})["headers"]["Authorization"]
    assert other != headers["Authorization"]
    unsigned = sign(cfg={**cfg, "disable_payload_signing": True})["headers"]
    assert unsigned["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    token = sign(cfg={**cfg, "aws_session_token": "tok"})["headers"]
    assert (
        token["x-amz-security-token"] == "tok" and "x-amz-security-token" in token["Authorization"]
    )
    with pytest.raises(PolicyEvaluationError) as info:
        sign(t=-1)
    assert info.value.opa_code == "eval_type_error"


def test_parse_certificates_reads_a_base64_der_chain() -> None:
    # OPA (Go's x509.ParseCertificates): base64 of concatenated DER certificates.
    import base64

    from cryptography.hazmat.primitives import serialization

    from policy.builtins import BuiltinError, parse_certificates

    ca = TestCA()
    leaf = ca.issue("/web")
    assert ca.intermediate is not None
    der = b"".join(
        c.public_bytes(serialization.Encoding.DER) for c in (leaf, ca.intermediate, ca.root)
    )
    parsed = parse_certificates(base64.b64encode(der).decode())
    assert [c["IsCA"] for c in parsed] == [False, True, True]
    assert parsed[0]["URIStrings"] == ["spiffe://example.org/web"]
    with pytest.raises(BuiltinError, match="truncated"):
        parse_certificates(base64.b64encode(der[:-10]).decode())


def test_parse_rsa_private_key_is_a_jwk() -> None:
    from cryptography.hazmat.primitives import serialization

    from pki.bundle import public_key_to_jwk
    from policy.builtins import BuiltinError, parse_rsa_private_key

    key = cached_key(KeyType.RSA_2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    jwk = parse_rsa_private_key(pem)
    assert set(jwk) == {"kty", "n", "e", "d", "p", "q", "dp", "dq", "qi"}
    assert {k: jwk[k] for k in ("kty", "n", "e")} == public_key_to_jwk(key.public_key())
    # The JWK's private parameters are the key's own (RFC 7518 §6.3.2).
    assert (
        jwk["d"]
        == jwt.utils.base64url_encode(
            key.private_numbers().d.to_bytes(256, "big").lstrip(b"\0")
        ).decode()
    )
    with pytest.raises(BuiltinError):
        parse_rsa_private_key("invalid")
    ec_pem = cached_key(KeyType.EC_P256).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BuiltinError, match="not an RSA"):
        parse_rsa_private_key(ec_pem.decode())


def test_decode_verify_follows_nested_tokens(engine: EmbeddedEngine) -> None:
    # RFC 7519 §5.2 and OPA: every level verifies with the constraints, the innermost
    # header and claims are the answer.
    key = cached_key(KeyType.RSA_2048)
    pem = public_key_pem(key.public_key())
    inner = jwt.encode({"iss": "xxx"}, key, algorithm="RS256")
    outer = jwt.api_jws.PyJWS().encode(
        json.dumps(inner).encode(), key, algorithm="RS256", headers={"cty": "JWT"}
    )
    answer = ask(engine, "decode_verify", token=outer, constraints={"cert": pem})
    assert answer == [True, {"alg": "RS256", "typ": "JWT"}, {"iss": "xxx"}]
    assert ask(engine, "decoded", token=outer)[1] == {"iss": "xxx"}
    # An inner token signed by another key fails the whole token.
    stranger = jwt.encode({"iss": "xxx"}, cached_key(KeyType.EC_P256), algorithm="ES256")
    forged = jwt.api_jws.PyJWS().encode(
        json.dumps(stranger).encode(), key, algorithm="RS256", headers={"cty": "JWT"}
    )
    assert ask(engine, "decode_verify", token=forged, constraints={"cert": pem}) == [
        False,
        {},
        {},
    ]
