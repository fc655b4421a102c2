"""Certificates from ``pki`` checked by independent implementations: pkilint (RFC 5280
lints) and ``openssl verify`` (path validation, including URI name constraints).

Uses the wall clock, because openssl does.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pki.ca import Authority, certificate_pem, create_intermediate, create_root
from pki.clock import SystemClock
from pki.keys import KeyType, PrivateKey, generate_private_key
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import X509SvidParams, issue_x509_svid
from tests.unit.pki_helpers import raw_leaf

pytestmark = pytest.mark.integration

TD = TrustDomain("example.org")
SVID_ID = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
LEAF_KEY_TYPES = [KeyType.EC_P256, KeyType.ED25519, KeyType.RSA_2048]


def _tool(name: str) -> str:
    # Prefer the console script next to this interpreter (the project venv).
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


@dataclass(frozen=True)
class Hierarchy:
    root: x509.Certificate
    root_key: PrivateKey
    intermediate: x509.Certificate
    intermediate_key: PrivateKey

    @property
    def authority(self) -> Authority:
        return Authority(self.intermediate, self.intermediate_key, (), self.root)


def _hierarchy(trust_domain: TrustDomain, key_type: KeyType = KeyType.EC_P384) -> Hierarchy:
    clock = SystemClock()
    root_key = generate_private_key(key_type)
    root = create_root(trust_domain, root_key, clock, timedelta(days=365))
    inter_key = generate_private_key(KeyType.EC_P256)
    inter = create_intermediate(
        trust_domain,
        inter_key,
        Authority(root, root_key, (), root),
        clock,
        timedelta(days=30),
    )
    return Hierarchy(root, root_key, inter, inter_key)


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return _hierarchy(TD)


def _write(directory: Path, name: str, *certs: x509.Certificate) -> Path:
    path = directory / name
    path.write_text("".join(certificate_pem(c) for c in certs))
    return path


def _svid(hierarchy: Hierarchy, key_type: KeyType) -> x509.Certificate:
    params = X509SvidParams(
        spiffe_id=SVID_ID,
        public_key=generate_private_key(key_type).public_key(),
        ttl=timedelta(hours=1),
        dns_names=("web.example.org",),
        crl_url="http://crl.example.org/intermediate.crl",
        ip_addresses=(ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("fd00::7")),
    )
    return issue_x509_svid(hierarchy.authority, params, SystemClock())


def _is_known_spiffe_uri_false_positive(result: dict[str, object], finding: dict[str, str]) -> bool:
    """pkilint 0.13 checks URI syntax with ``validators.url``, which only knows the schemes
    ftp, ftps, git, http, https, rtsp, sftp, ssh and telnet, so every ``spiffe://`` URI is an
    "invalid URI".  RFC 5280 §4.2.1.6 only requires an RFC 3986 URI, which a SPIFFE ID is,
    and X509-SVID §2 requires exactly this URI SAN, so the certificate cannot be "fixed".
    Only that exact finding, for a value that parses as a SPIFFE ID, is excused.
    """
    if result.get("validator") != "GeneralNameUriSyntaxValidator":
        return False
    if finding.get("code") != "pkix.invalid_uri_syntax":
        return False
    message = finding.get("message") or ""
    prefix = 'Invalid URI syntax: "'
    if not (message.startswith(prefix) and message.endswith('"')):
        return False
    SpiffeId.parse(message[len(prefix) : -1])  # raises if it is not really a SPIFFE ID
    return True


def _lint(*args: str) -> list[tuple[str, str, str, str]]:
    """Run a pkilint CLI with JSON output; return (severity, validator, code, message)."""
    proc = subprocess.run(
        [*args[:1], "lint", "-f", "JSON", "-s", "NOTICE", *args[1:]],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    findings: list[tuple[str, str, str, str]] = []
    for result in report["results"]:
        for finding in result["finding_descriptions"]:
            if _is_known_spiffe_uri_false_positive(result, finding):
                continue
            findings.append(
                (
                    finding["severity"],
                    result["validator"],
                    finding["code"],
                    finding.get("message") or "",
                )
            )
    for finding in findings:
        print("pkilint:", *finding)  # warnings are allowed, but visible with -s
    return findings


def _assert_no_errors(findings: list[tuple[str, str, str, str]]) -> None:
    errors = [f for f in findings if f[0] in ("ERROR", "FATAL")]
    assert errors == []


def _openssl_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("openssl"), "verify", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# --------------------------------------------------------------------------- pkilint


def test_pkilint_root_and_intermediate(hierarchy: Hierarchy, tmp_path: Path) -> None:
    lint = _tool("lint_pkix_cert")
    root = _write(tmp_path, "root.pem", hierarchy.root)
    inter = _write(tmp_path, "intermediate.pem", hierarchy.intermediate)
    _assert_no_errors(_lint(lint, str(root)))
    _assert_no_errors(_lint(lint, str(inter)))


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.ED25519, KeyType.RSA_2048])
def test_pkilint_root_key_types(key_type: KeyType, tmp_path: Path) -> None:
    root_key = generate_private_key(key_type)
    root = create_root(TD, root_key, SystemClock(), timedelta(days=1))
    _assert_no_errors(_lint(_tool("lint_pkix_cert"), str(_write(tmp_path, "root.pem", root))))


@pytest.mark.parametrize("key_type", LEAF_KEY_TYPES)
def test_pkilint_x509_svid(hierarchy: Hierarchy, tmp_path: Path, key_type: KeyType) -> None:
    svid = _write(tmp_path, "svid.pem", _svid(hierarchy, key_type))
    _assert_no_errors(_lint(_tool("lint_pkix_cert"), str(svid)))


def test_pkilint_ml_dsa_65_trust_domain(tmp_path: Path) -> None:
    """Root, intermediate and X509-SVID all on ML-DSA-65 (RFC 9881)."""
    clock = SystemClock()
    root_key, inter_key = (generate_private_key(KeyType.ML_DSA_65) for _ in range(2))
    root = create_root(TD, root_key, clock, timedelta(days=365))
    inter = create_intermediate(
        TD, inter_key, Authority(root, root_key, (), root), clock, timedelta(days=30)
    )
    hierarchy = Hierarchy(root, root_key, inter, inter_key)
    lint = _tool("lint_pkix_cert")
    for name, cert in (
        ("root.pem", root),
        ("intermediate.pem", inter),
        ("svid.pem", _svid(hierarchy, KeyType.ML_DSA_65)),
    ):
        _assert_no_errors(_lint(lint, str(_write(tmp_path, name, cert))))
    # What breaks with Debian's OpenSSL 3.0 (README, Post-quantum): it cannot even decode
    # the ML-DSA public key, so `openssl verify` (and every TLS stack on it) refuses the
    # chain; OpenSSL 3.5 verifies it.
    chain = _write(tmp_path, "chain.pem", root)
    leaf = _write(tmp_path, "leaf.pem", inter)
    verified = _openssl_verify("-CAfile", str(chain), str(leaf))
    if ssl.OPENSSL_VERSION_INFO < (3, 5):
        assert verified.returncode != 0 and "decode error" in verified.stderr
    else:
        assert verified.returncode == 0, verified.stderr


def test_pkilint_signer_signee_chain(hierarchy: Hierarchy, tmp_path: Path) -> None:
    lint = _tool("lint_pkix_signer_signee_cert_chain")
    root = _write(tmp_path, "root.pem", hierarchy.root)
    inter = _write(tmp_path, "intermediate.pem", hierarchy.intermediate)
    _assert_no_errors(_lint(lint, str(root), str(inter)))
    for key_type in LEAF_KEY_TYPES:
        svid = _write(tmp_path, f"svid-{key_type}.pem", _svid(hierarchy, key_type))
        _assert_no_errors(_lint(lint, str(inter), str(svid)))


def test_pkilint_reports_real_errors(hierarchy: Hierarchy, tmp_path: Path) -> None:
    # Guard against a lint run that silently checks nothing: a non-conforming leaf (empty
    # subject with a non-critical SAN, RFC 5280 §4.1.2.6) must produce an error.
    bad = raw_leaf(
        hierarchy.intermediate,
        hierarchy.intermediate_key,
        SystemClock(),
        san_critical=False,
    )
    findings = _lint(_tool("lint_pkix_cert"), str(_write(tmp_path, "bad.pem", bad)))
    assert any(f[0] == "ERROR" for f in findings)


# --------------------------------------------------------------------------- openssl


@pytest.mark.parametrize("key_type", LEAF_KEY_TYPES)
@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_verifies_svid(
    hierarchy: Hierarchy, tmp_path: Path, key_type: KeyType, purpose: str
) -> None:
    root = _write(tmp_path, "root.pem", hierarchy.root)
    inter = _write(tmp_path, "intermediate.pem", hierarchy.intermediate)
    svid = _write(tmp_path, "svid.pem", _svid(hierarchy, key_type))
    proc = _openssl_verify(
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        str(root),
        "-untrusted",
        str(inter),
        str(svid),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"{svid}: OK"


def test_openssl_plain_verify_command(hierarchy: Hierarchy, tmp_path: Path) -> None:
    # Exactly the command operators are told to run.
    root = _write(tmp_path, "root.pem", hierarchy.root)
    inter = _write(tmp_path, "intermediate.pem", hierarchy.intermediate)
    svid = _write(tmp_path, "svid.pem", _svid(hierarchy, KeyType.EC_P256))
    proc = _openssl_verify("-CAfile", str(root), "-untrusted", str(inter), str(svid))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_openssl_checks_dns_and_ip_sans(hierarchy: Hierarchy, tmp_path: Path) -> None:
    # DNS and IP SANs stay usable by plain TLS clients: the intermediate's URI-only name
    # constraints leave those name types unconstrained (RFC 5280 §4.2.1.10).
    root = _write(tmp_path, "root.pem", hierarchy.root)
    inter = _write(tmp_path, "intermediate.pem", hierarchy.intermediate)
    svid = _write(tmp_path, "svid.pem", _svid(hierarchy, KeyType.EC_P256))
    chain = ("-CAfile", str(root), "-untrusted", str(inter))
    ok = _openssl_verify(*chain, "-verify_hostname", "web.example.org", str(svid))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ok = _openssl_verify(*chain, "-verify_ip", "10.0.0.7", str(svid))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = _openssl_verify(*chain, "-verify_hostname", "db.example.org", str(svid))
    assert wrong.returncode != 0
    assert "hostname mismatch" in wrong.stdout + wrong.stderr


def test_openssl_refuses_svid_outside_the_intermediates_name_constraints(
    tmp_path: Path,
) -> None:
    # An intermediate constrained to other.org signs a leaf claiming example.org; the leaf
    # is well-formed, so only the URI name constraint (RFC 5280 §4.2.1.10) can stop it.
    other = _hierarchy(TrustDomain("other.org"))
    evil = raw_leaf(
        other.intermediate,
        other.intermediate_key,
        SystemClock(),
        uris=("spiffe://example.org/ns/prod/sa/web",),
    )
    root = _write(tmp_path, "root.pem", other.root)
    inter = _write(tmp_path, "intermediate.pem", other.intermediate)
    leaf = _write(tmp_path, "evil.pem", evil)
    proc = _openssl_verify("-CAfile", str(root), "-untrusted", str(inter), str(leaf))
    assert proc.returncode != 0
    assert "permitted subtree violation" in proc.stdout + proc.stderr

    # Control: the same intermediate may sign its own trust domain.
    good = raw_leaf(
        other.intermediate,
        other.intermediate_key,
        SystemClock(),
        uris=("spiffe://other.org/ns/prod/sa/web",),
    )
    leaf = _write(tmp_path, "good.pem", good)
    proc = _openssl_verify("-CAfile", str(root), "-untrusted", str(inter), str(leaf))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_openssl_refuses_svid_from_another_root(hierarchy: Hierarchy, tmp_path: Path) -> None:
    stranger = _hierarchy(TD)
    root = _write(tmp_path, "root.pem", stranger.root)
    inter = _write(tmp_path, "intermediate.pem", hierarchy.intermediate)
    svid = _write(tmp_path, "svid.pem", _svid(hierarchy, KeyType.EC_P256))
    proc = _openssl_verify("-CAfile", str(root), "-untrusted", str(inter), str(svid))
    assert proc.returncode != 0
