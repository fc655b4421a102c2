"""The server's half of TPM attestation (pki/tpm.py, trustd/attestation/tpm.py) against
material a real TPM (swtpm) produces: the names it computes are the TPM's, the credential
it makes only that TPM releases, the quotes it accepts are the TPM's and nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pki.ca import load_pem_certificates
from pki.errors import InvalidTpmData
from pki.tpm import Alg, TpmPublic, make_credential, verify_quote
from tests.tpm_support import ManufacturerCa, SwTpm, new_ca, new_tpm
from tests.unit.test_attestor_contexts import MemoryJoinTokens, MemoryReplayGuard
from trustd.agent.errors import TpmError
from trustd.agent.tpm import TpmSession
from trustd.attestation.base import (
    AttestationContext,
    AttestationFailed,
    b64url,
    b64url_decode,
)
from trustd.attestation.tpm import TpmAttestor

pytestmark = [pytest.mark.integration]

PCRS = (0, 1, 7, 16)
MAC_KEY = b"k" * 32


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[ManufacturerCa, ManufacturerCa]:
    root = tmp_path_factory.mktemp("tpm-cas")
    return new_ca(root / "a"), new_ca(root / "b")


@pytest.fixture(scope="module")
def tpms(
    tmp_path_factory: pytest.TempPathFactory, cas: tuple[ManufacturerCa, ManufacturerCa]
) -> Iterator[tuple[SwTpm, SwTpm, SwTpm]]:
    """Two TPMs of manufacturer A, one of manufacturer B."""
    root = tmp_path_factory.mktemp("tpms")
    started = [
        new_tpm(root / "a1", cas[0]),
        new_tpm(root / "a2", cas[0]),
        new_tpm(root / "b1", cas[1]),
    ]
    # A measurement, so that the quoted values are not all zero.
    started[0].extend(16, hashlib.sha256(b"boot loader").digest())
    yield started[0], started[1], started[2]
    for tpm in started:
        tpm.stop()


@pytest.fixture
def tpm_a(tpms: tuple[SwTpm, SwTpm, SwTpm]) -> Iterator[TpmSession]:
    session = TpmSession(tpms[0].tcti)
    yield session
    session.close()


def attestor(ca: ManufacturerCa) -> TpmAttestor:
    return TpmAttestor(load_pem_certificates(ca.bundle.read_bytes()), MAC_KEY)


def context() -> AttestationContext:
    return AttestationContext(MemoryReplayGuard(), MemoryJoinTokens())


def now() -> datetime:
    return datetime.now(UTC)


def test_public_areas_parse_to_the_tpms_names(tpm_a: TpmSession) -> None:
    from tpm2_pytss.types import TPM2B_NAME

    evidence = tpm_a.evidence()
    ek = TpmPublic.parse(b64url_decode(evidence["ek_public"], "ek"))
    ak = TpmPublic.parse(b64url_decode(evidence["ak_public"], "ak"))
    _, ek_name, _ = tpm_a._ctx.read_public(tpm_a._ek)
    _, ak_name, _ = tpm_a._ctx.read_public(tpm_a._ak)
    assert isinstance(ek_name, TPM2B_NAME)
    assert ek.name == bytes(ek_name)
    assert ak.name == bytes(ak_name)
    assert (ek.type, ak.type, ak.scheme, ak.scheme_hash) == (
        Alg.RSA,
        Alg.ECC,
        Alg.ECDSA,
        Alg.SHA256,
    )


def test_only_the_named_ak_in_the_eks_tpm_releases_the_credential(
    tpm_a: TpmSession, tpms: tuple[SwTpm, SwTpm, SwTpm]
) -> None:
    evidence = tpm_a.evidence()
    ek = TpmPublic.parse(b64url_decode(evidence["ek_public"], "ek"))
    ak = TpmPublic.parse(b64url_decode(evidence["ak_public"], "ak"))
    nonce = b"n" * 32
    token = b64url(nonce + b"\0" * 72)

    def offer(name: bytes) -> dict[str, Any]:
        made = make_credential(ek, b"s" * 32, name)
        return {
            "challenge": token,
            "credential_blob": b64url(made.blob),
            "encrypted_secret": b64url(made.secret),
        }

    answer = tpm_a.answer(offer(ak.name), ())
    assert b64url_decode(answer["secret"], "secret") == b"s" * 32
    # A credential for another object's Name: the TPM's integrity check refuses it.
    other = TpmSession(tpms[1].tcti)
    try:
        foreign_ak = TpmPublic.parse(b64url_decode(other.evidence()["ak_public"], "ak"))
        with pytest.raises(TpmError, match="refused"):
            tpm_a.answer(offer(foreign_ak.name), ())
        # And another TPM cannot open a credential made for this EK at all.
        with pytest.raises(TpmError, match="refused"):
            other.answer(offer(foreign_ak.name), ())
    finally:
        other.close()


def test_quotes_verify_only_as_the_tpm_made_them(tpm_a: TpmSession) -> None:
    ak = TpmPublic.parse(b64url_decode(tpm_a.evidence()["ak_public"], "ak"))
    made = tpm_a.quote(b"fresh-nonce", PCRS)
    attest = b64url_decode(made["quote"], "quote")
    signature = b64url_decode(made["signature"], "signature")
    values = {int(i): bytes.fromhex(v) for i, v in made["pcrs"].items()}
    quote = verify_quote(ak, attest, signature, {Alg.SHA256: values})
    assert quote.extra_data == b"fresh-nonce"
    assert quote.selection == ((Alg.SHA256, PCRS),)

    tampered = dict(values)
    tampered[7] = b"\x01" * 32
    with pytest.raises(InvalidTpmData, match="do not match the quoted digest"):
        verify_quote(ak, attest, signature, {Alg.SHA256: tampered})
    with pytest.raises(InvalidTpmData, match="does not cover"):
        verify_quote(ak, attest, signature, {Alg.SHA256: {**values, 3: b"\0" * 32}})
    with pytest.raises(InvalidTpmData, match="no value given"):
        verify_quote(ak, attest, signature, {Alg.SHA256: {0: values[0]}})
    flipped = attest[:-1] + bytes([attest[-1] ^ 1])
    with pytest.raises(InvalidTpmData, match="does not verify"):
        verify_quote(ak, flipped, signature, {Alg.SHA256: values})


def test_a_quote_by_another_tpms_ak_is_refused(
    tpm_a: TpmSession, tpms: tuple[SwTpm, SwTpm, SwTpm]
) -> None:
    ak = TpmPublic.parse(b64url_decode(tpm_a.evidence()["ak_public"], "ak"))
    other = TpmSession(tpms[1].tcti)
    try:
        made = other.quote(b"nonce", PCRS)
    finally:
        other.close()
    values = {int(i): bytes.fromhex(v) for i, v in made["pcrs"].items()}
    with pytest.raises(InvalidTpmData, match="does not verify"):
        verify_quote(
            ak,
            b64url_decode(made["quote"], "quote"),
            b64url_decode(made["signature"], "signature"),
            {Alg.SHA256: values},
        )


def test_attestor_accepts_the_tpms_answer_once(
    tpm_a: TpmSession, cas: tuple[ManufacturerCa, ManufacturerCa]
) -> None:
    verifier = attestor(cas[0])
    evidence = tpm_a.evidence()
    challenge = verifier.challenge(evidence, now())
    answer = tpm_a.answer(asdict(challenge), PCRS)
    shared = context()
    result = verifier.attest(answer, now(), shared)
    values = sorted(str(s) for s in result.selectors)
    assert f"tpm:ek_pubhash:{result.agent_id}" in values
    assert "tpm:ek_cert_issuer:CN=swtpm-localca" in values
    assert {v for v in values if v.startswith("tpm:pcr:")} == {
        f"tpm:pcr:{i}:{answer['pcrs'][str(i)]}" for i in PCRS
    }
    assert answer["pcrs"]["16"] != "00" * 32
    with pytest.raises(AttestationFailed, match="already answered"):
        verifier.attest(answer, now(), shared)


def test_attestor_refusals(
    tpm_a: TpmSession,
    tpms: tuple[SwTpm, SwTpm, SwTpm],
    cas: tuple[ManufacturerCa, ManufacturerCa],
) -> None:
    verifier = attestor(cas[0])
    evidence = tpm_a.evidence()
    first = tpm_a.answer(asdict(verifier.challenge(evidence, now())), PCRS)
    second = tpm_a.answer(asdict(verifier.challenge(evidence, now())), PCRS)

    # Stale: past the challenge's lifetime.
    with pytest.raises(AttestationFailed, match="expired"):
        verifier.attest(first, now() + timedelta(minutes=2), context())
    # Stale nonce: the quote made for the first challenge, answering the second.
    mixed = {**second, **{k: first[k] for k in ("quote", "signature", "pcrs")}}
    with pytest.raises(AttestationFailed, match="another challenge"):
        verifier.attest(mixed, now(), context())
    # PCR values other than the quoted ones.
    lied = {**first, "pcrs": {**first["pcrs"], "0": "ab" * 32}}
    with pytest.raises(AttestationFailed, match="do not match"):
        verifier.attest(lied, now(), context())
    # A secret not released by the TPM: the AK is not bound to the EK.
    with pytest.raises(AttestationFailed, match="not bound to the EK"):
        verifier.attest({**first, "secret": b64url(b"x" * 32)}, now(), context())
    # Another AK than the challenge was made for.
    other = TpmSession(tpms[1].tcti)
    try:
        swapped = {**first, "ak_public": other.evidence()["ak_public"]}
        foreign = other.evidence()
    finally:
        other.close()
    with pytest.raises(AttestationFailed, match="another EK or AK"):
        verifier.attest(swapped, now(), context())
    # A forged challenge.
    forged = b64url(b"\0" * 104)
    with pytest.raises(AttestationFailed, match="not issued by this server"):
        verifier.attest({**first, "challenge": forged}, now(), context())
    # An EK public area that is not the certified key.
    with pytest.raises(AttestationFailed, match="not the key of the EK certificate"):
        verifier.challenge({**evidence, "ek_public": foreign["ek_public"]}, now())
    # An EK certificate from a manufacturer not in the bundle.
    with pytest.raises(AttestationFailed, match="EK certificate is not trusted"):
        attestor(cas[1]).challenge(evidence, now())
    # The AK's public area in the EK's place: not an EK.
    with pytest.raises(AttestationFailed, match="endorsement key"):
        verifier.challenge({**evidence, "ek_public": evidence["ak_public"]}, now())
    # Nothing above consumed the challenges.
    verifier.attest(second, now(), context())


def test_a_tpm_of_another_manufacturer_is_refused(
    tpms: tuple[SwTpm, SwTpm, SwTpm], cas: tuple[ManufacturerCa, ManufacturerCa]
) -> None:
    other = TpmSession(tpms[2].tcti)
    try:
        evidence = other.evidence()
    finally:
        other.close()
    with pytest.raises(AttestationFailed, match="EK certificate is not trusted"):
        attestor(cas[0]).challenge(evidence, now())
    attestor(cas[1]).challenge(evidence, now())


@pytest.mark.parametrize(
    ("spec", "name_alg"), [("ecc256:aes128cfb", "sha256"), ("ecc384:aes256cfb", "sha384")]
)
def test_credentials_for_an_ecc_key_open_in_the_tpm(
    tpm_a: TpmSession, spec: str, name_alg: str
) -> None:
    # An ECC EK's seed is an ECDH secret (Part 1 Annex C.6.4), not an RSA-OAEP encryption.
    # ActivateCredential takes any restricted decryption key, so a storage key of the same
    # shape as an ECC EK (without the EK's policy) checks the computation on the TPM.
    from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPM2B_PUBLIC

    ctx = tpm_a._ctx
    template = TPM2B_PUBLIC.parse(
        spec,
        objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS,
        nameAlg=name_alg,
    )
    key, public, _, _, _ = ctx.create_primary(None, template, ESYS_TR.OWNER)
    try:
        parsed = TpmPublic.parse(bytes(public.publicArea.marshal()))
        assert parsed.type == Alg.ECC
        ak = TpmPublic.parse(b64url_decode(tpm_a.evidence()["ak_public"], "ak"))
        made = make_credential(parsed, b"e" * 32, ak.name)
        released = ctx.activate_credential(
            tpm_a._ak,
            key,
            TPM2B_ID_OBJECT(credential=made.blob),
            TPM2B_ENCRYPTED_SECRET(secret=made.secret),
            session1=ESYS_TR.PASSWORD,
            session2=ESYS_TR.PASSWORD,
        )
        assert bytes(released) == b"e" * 32
    finally:
        ctx.flush_context(key)
