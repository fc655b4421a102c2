"""`tpm`: a TPM 2.0 proves that it holds an endorsement key (EK) certified by a configured
manufacturer CA, and an attestation key (AK) inside the same TPM; optionally it quotes PCRs.

Two steps, like x509pop. The agent presents its EK certificate and the public areas of
its EK and AK; the server checks the certificate chain and that the EK is the certified
key, and answers TPM2_MakeCredential's output (TPM 2.0 Part 1 §24) around a secret, with a
challenge. Only the TPM holding the EK can release the secret (TPM2_ActivateCredential),
and only while the AK named in it is loaded in that same TPM. The agent answers the
secret and a quote by the AK whose qualifying data is the challenge's nonce.

The challenge is stateless, as x509pop's: MAC'd by the server, bound to the EK and AK,
short-lived; the secret is derived from it with the server's key, so any replica can check
the answer. It is consumed on use (the replay guard), so an answer cannot be replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.errors import InvalidTpmData, TrustdError
from pki.selectors import Selector
from pki.tpm import (
    Alg,
    TpmPublic,
    check_attestation_key,
    check_endorsement_key,
    make_credential,
    sha256_hex,
    verify_quote,
)
from pki.x509_path import build_path, validate_path
from trustd.attestation.base import (
    AttestationContext,
    AttestationFailed,
    AttestationResult,
    Challenge,
    EvidenceReplayed,
    SealedChallenges,
    b64url,
    require_bytes,
)

CHALLENGE_TTL = timedelta(seconds=60)
MAX_PCRS = 24


def ek_pubhash(cert: x509.Certificate) -> str:
    """The `tpm:ek_pubhash` of a TPM: SHA-256 of its EK's DER SubjectPublicKeyInfo, which an
    operator can compute from the EK certificate alone
    (`openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum`)."""
    return sha256_hex(
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class TpmAttestor:
    name = "tpm"

    def __init__(self, ek_cas: list[x509.Certificate], mac_key: bytes) -> None:
        self._cas = ek_cas
        self._mac_key = mac_key
        self._challenges = SealedChallenges(mac_key, b"tpm-challenge", 32, CHALLENGE_TTL)

    # -- evidence both steps carry -----------------------------------------------------

    def _keys(
        self, evidence: dict[str, Any], now: datetime
    ) -> tuple[x509.Certificate, TpmPublic, TpmPublic, bytes]:
        """The EK certificate (chain checked), the EK and AK public areas (checked), and the
        digest that binds a challenge to this EK and AK."""
        try:
            cert = x509.load_der_x509_certificate(require_bytes(evidence, "ek_cert", 4096))
        except ValueError:
            raise AttestationFailed("ek_cert is not a DER certificate") from None
        try:
            # The EK CA bundle holds the manufacturers' roots and intermediates alike: an
            # operator who trusts an intermediate need not trust its root's other children.
            path = build_path(cert, [], self._cas)
        except TrustdError:
            issuer = cert.issuer.rfc4514_string() or "<empty>"
            raise AttestationFailed(
                f"EK certificate is not trusted: its issuer {issuer!r} leads to no CA of "
                "the EK CA bundle"
            ) from None
        try:
            validate_path(path, now)
        except TrustdError as exc:
            raise AttestationFailed(f"EK certificate is not trusted: {exc.detail}") from None
        ek_raw = require_bytes(evidence, "ek_public", 1024)
        ak_raw = require_bytes(evidence, "ak_public", 1024)
        try:
            ek, ak = TpmPublic.parse(ek_raw), TpmPublic.parse(ak_raw)
            check_endorsement_key(ek)
            check_attestation_key(ak)
        except InvalidTpmData as exc:
            raise AttestationFailed(exc.detail) from None
        if ek.public_key != cert.public_key():
            raise AttestationFailed("the EK public area is not the key of the EK certificate")
        binding = hashlib.sha256(
            struct.pack(">H", len(ek_raw)) + ek_raw + struct.pack(">H", len(ak_raw)) + ak_raw
        ).digest()
        return cert, ek, ak, binding

    def _secret(self, body: bytes) -> bytes:
        # A PRF of the MAC'd challenge under the server's key: unknown to anyone who cannot
        # open the credential, recomputable by every replica.
        return hmac.new(self._mac_key, b"tpm-credential" + body, hashlib.sha256).digest()

    # -- step one ----------------------------------------------------------------------

    def challenge(self, evidence: dict[str, Any], now: datetime) -> Challenge:
        """Check the EK certificate and the keys, and protect a secret for the AK in the EK's
        TPM (TPM2_MakeCredential, computed here: the server needs no TPM).

        Raises:
            AttestationFailed: untrusted EK certificate, or keys that are not an EK and AK.
        """
        _, ek, ak, binding = self._keys(evidence, now)
        sealed, body = self._challenges.seal(binding, now)
        credential = make_credential(ek, self._secret(body), ak.name)
        return Challenge(
            challenge=b64url(sealed),
            credential_blob=b64url(credential.blob),
            encrypted_secret=b64url(credential.secret),
        )

    # -- step two ----------------------------------------------------------------------

    def attest(
        self, evidence: dict[str, Any], now: datetime, context: AttestationContext
    ) -> AttestationResult:
        cert, _, ak, binding = self._keys(evidence, now)
        opened = self._challenges.open(
            require_bytes(evidence, "challenge", 256), binding, now, "EK or AK"
        )
        # TPM 2.0 Part 1 §24: only ActivateCredential in the EK's TPM, with this AK loaded
        # there, yields the secret: the AK is bound to the EK.
        secret = require_bytes(evidence, "secret", 64)
        if not hmac.compare_digest(secret, self._secret(opened.body)):
            raise AttestationFailed("the credential secret is wrong: the AK is not bound to the EK")
        nonce = opened.nonce
        selectors = {
            Selector(self.name, f"ek_pubhash:{ek_pubhash(cert)}"),
            Selector(self.name, f"ek_cert_issuer:{cert.issuer.rfc4514_string()}"),
        }
        if "quote" in evidence:
            selectors.update(self._quoted_pcrs(evidence, ak, nonce))
        try:
            context.replay.claim(hashlib.sha256(nonce).hexdigest(), self.name, opened.expires_at)
        except EvidenceReplayed:
            raise AttestationFailed("challenge was already answered") from None
        return AttestationResult(ek_pubhash(cert), frozenset(selectors))

    def _quoted_pcrs(self, evidence: dict[str, Any], ak: TpmPublic, nonce: bytes) -> set[Selector]:
        """The `tpm:pcr:N:HEX` selectors of a quote by the AK over the challenge's nonce.

        Raises:
            AttestationFailed: a bad signature, another nonce, or PCR values not quoted.
        """
        pcrs = evidence.get("pcrs")
        if not isinstance(pcrs, dict) or not 0 < len(pcrs) <= MAX_PCRS:
            raise AttestationFailed("a quote needs 'pcrs': PCR index → SHA-256 value (hex)")
        values: dict[int, bytes] = {}
        for index, value in pcrs.items():
            if (
                not (isinstance(index, str) and index.isascii() and index.isdigit())
                or int(index) >= MAX_PCRS
            ):
                raise AttestationFailed(f"{index!r} is not a PCR index")
            if not isinstance(value, str) or len(value) != 64:
                raise AttestationFailed(f"PCR {index} needs a SHA-256 value in hex")
            try:
                values[int(index)] = bytes.fromhex(value)
            except ValueError:
                raise AttestationFailed(f"PCR {index} is not hex") from None
        attest = require_bytes(evidence, "quote", 1024)
        signature = require_bytes(evidence, "signature", 1024)
        try:
            quote = verify_quote(ak, attest, signature, {Alg.SHA256: values})
        except InvalidTpmData as exc:
            raise AttestationFailed(f"quote refused: {exc.detail}") from None
        # TPM 2.0 Part 3 §18.4: extraData is the caller's qualifying data, here the nonce
        # of this challenge: a quote made for an earlier one does not pass.
        if not hmac.compare_digest(quote.extra_data, nonce):
            raise AttestationFailed("the quote was made for another challenge (stale nonce)")
        return {Selector(self.name, f"pcr:{i}:{v.hex()}") for i, v in sorted(values.items())}
