"""`trustd svid wit verify`: the offline WIT-SVID check against a bundle file."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from typer.testing import CliRunner

from pki.bundle import TrustBundle
from pki.clock import SystemClock
from pki.keys import KeyType, generate_private_key, key_id, public_key_pem
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.wit_svid import mint_wit_svid, mint_wpt, workload_jwk
from trustd.cli import app

runner = CliRunner()
TD = TrustDomain("example.org")


def _setup(tmp_path: Path, *, wit_keys: bool = True) -> tuple[str, Path, Path, Path]:
    token, bundle, right, wrong, _ = _setup_with_proof(tmp_path, wit_keys=wit_keys)
    return token, bundle, right, wrong


def _setup_with_proof(
    tmp_path: Path, *, wit_keys: bool = True
) -> tuple[str, Path, Path, Path, str]:
    signer = generate_private_key(KeyType.EC_P256)
    kid = key_id(signer.public_key())
    workload = generate_private_key(KeyType.EC_P256)
    svid = mint_wit_svid(
        signer,
        kid,
        SpiffeId.parse("spiffe://example.org/web"),
        workload.public_key(),
        timedelta(minutes=5),
        SystemClock(),
    )
    token = svid.token
    proof = mint_wpt(workload, svid, "https://db.example.org/", SystemClock())
    bundle = TrustBundle(
        trust_domain=TD,
        x509_authorities=(),
        jwt_authorities={} if wit_keys else {kid: signer.public_key()},
        wit_authorities={kid: signer.public_key()} if wit_keys else {},
        sequence=1,
        refresh_hint=60,
    )
    bundle_file = tmp_path / "bundle.json"
    bundle_file.write_text(bundle.to_json())
    # The bound key as PEM, another as a JWK: both forms are read.
    right = tmp_path / "right.pem"
    right.write_text(public_key_pem(workload.public_key()))
    wrong = tmp_path / "wrong.jwk"
    wrong.write_text(json.dumps(workload_jwk(generate_private_key(KeyType.EC_P256).public_key())))
    return token, bundle_file, right, wrong, proof


def _verify(token: str, bundle: Path, *extra: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(
        app,
        ["-o", "json", "svid", "wit", "verify", token, "--bundle", str(bundle), *extra],
        input=stdin,
    )
    return result.exit_code, result.output


def test_verify_accepts_the_token_with_its_key(tmp_path: Path) -> None:
    token, bundle, right, _ = _setup(tmp_path)
    code, out = _verify(token, bundle, "--trust-domain", "example.org", "--key", str(right))
    assert code == 0, out
    document = json.loads(out)
    assert document["spiffe_id"] == "spiffe://example.org/web"
    assert document["key_checked"] is True
    code, out = _verify("-", bundle, "--trust-domain", "example.org", stdin=token + "\n")
    assert code == 0, out
    assert json.loads(out)["key_checked"] is False


def test_verify_refuses_another_key_domain_or_a_bundle_without_wit_keys(tmp_path: Path) -> None:
    token, bundle, _, wrong = _setup(tmp_path)
    code, out = _verify(token, bundle, "--trust-domain", "example.org", "--key", str(wrong))
    assert code == 1
    assert "bound to another key" in out
    code, out = _verify(token, bundle, "--trust-domain", "other.example")
    assert code == 1
    assert "not in trust domain" in out
    (tmp_path / "jwt").mkdir()
    token, jwt_only, _, _ = _setup(tmp_path / "jwt", wit_keys=False)
    code, out = _verify(token, jwt_only, "--trust-domain", "example.org")
    assert code == 1
    assert "no wit-svid key" in out


def test_verify_checks_the_proof_of_possession(tmp_path: Path) -> None:
    token, bundle, _, _, proof = _setup_with_proof(tmp_path)
    args = ("--trust-domain", "example.org", "--proof", proof)
    code, out = _verify(token, bundle, *args, "--audience", "https://db.example.org/")
    assert code == 0, out
    assert json.loads(out)["proof_checked"] is True
    code, out = _verify(token, bundle, *args, "--audience", "https://elsewhere.example/")
    assert code == 1
    assert "not 'https://elsewhere.example/'" in out
    code, out = _verify(token, bundle, "--trust-domain", "example.org", "--proof", proof)
    assert code == 1
    assert "go together" in out
