"""`x509pop`: proof of possession of a key whose certificate chains to a configured CA.

Two steps: the agent presents its chain and receives a challenge; it signs the challenge
with the certificate's key and presents chain, challenge and signature. The challenge is
stateless (MAC'd by the server, bound to the leaf certificate, short-lived) and is consumed
on use, so a captured response cannot be replayed.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from pki.ca import fingerprint_sha256, load_pem_certificates
from pki.errors import TrustdError
from pki.selectors import Selector
from pki.x509_path import build_path, validate_path
from trustd.attestation.base import (
    AttestationContext,
    AttestationFailed,
    AttestationResult,
    Challenge,
    EvidenceReplayed,
    SealedChallenges,
    b64url,
    b64url_decode,
    require_str,
)

CHALLENGE_TTL = timedelta(seconds=60)
MAX_CHAIN = 5
# Domain separation: the agent's key signs this prefix and the challenge, never a bare
# server-chosen blob that could be a valid message in another protocol.
SIGNING_PREFIX = b"trustd-x509pop-v1:"


def sign_challenge(key: Any, challenge: str) -> str:
    """The agent's half: sign a challenge with the certificate's private key."""
    message = SIGNING_PREFIX + challenge.encode()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(
            message,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
            hashes.SHA256(),
        )
    else:
        signature = key.sign(message)
    return b64url(signature)


def _verify_signature(cert: x509.Certificate, message: bytes, signature: bytes) -> None:
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(
                signature,
                message,
                padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH
                ),
                hashes.SHA256(),
            )
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            raise AttestationFailed("certificate key type cannot prove possession")
    except InvalidSignature:
        raise AttestationFailed("challenge signature does not verify") from None


class X509PopAttestor:
    name = "x509pop"

    def __init__(self, roots: list[x509.Certificate], mac_key: bytes) -> None:
        self._roots = roots
        self._challenges = SealedChallenges(mac_key, b"x509pop-challenge", 32, CHALLENGE_TTL)

    def _path(self, evidence: dict[str, Any], now: datetime) -> list[x509.Certificate]:
        """The validated path from the presented leaf to a configured root."""
        chain_pem = evidence.get("chain")
        if not isinstance(chain_pem, list) or not 1 <= len(chain_pem) <= MAX_CHAIN:
            raise AttestationFailed(f"evidence needs 'chain': 1 to {MAX_CHAIN} PEM certificates")
        try:
            chain = [load_pem_certificates(str(pem).encode())[0] for pem in chain_pem]
            path = build_path(chain[0], chain[1:], self._roots)
            validate_path(path, now)
        except (TrustdError, IndexError) as exc:
            raise AttestationFailed(f"certificate chain is not trusted: {exc}") from None
        return path

    def challenge(self, evidence: dict[str, Any], now: datetime) -> Challenge:
        """Step one: check the chain and return a challenge bound to its leaf.

        Raises:
            AttestationFailed: the chain does not lead to a configured CA.
        """
        leaf = self._path(evidence, now)[0]
        sealed, _ = self._challenges.seal(bytes.fromhex(fingerprint_sha256(leaf)), now)
        return Challenge(b64url(sealed))

    def attest(
        self, evidence: dict[str, Any], now: datetime, context: AttestationContext
    ) -> AttestationResult:
        path = self._path(evidence, now)
        leaf = path[0]
        challenge = require_str(evidence, "challenge", 512)
        opened = self._challenges.open(
            b64url_decode(challenge, "challenge"),
            bytes.fromhex(fingerprint_sha256(leaf)),
            now,
            "certificate",
        )
        signature = b64url_decode(require_str(evidence, "signature", 2048), "signature")
        _verify_signature(leaf, SIGNING_PREFIX + challenge.encode(), signature)
        digest = hashlib.sha256(opened.nonce).hexdigest()
        try:
            context.replay.claim(digest, self.name, opened.expires_at)
        except EvidenceReplayed:
            raise AttestationFailed("challenge was already answered") from None
        fingerprint = fingerprint_sha256(leaf)
        selectors = {
            Selector(self.name, f"fingerprint:{fingerprint}"),
            Selector(self.name, f"ca:fingerprint:{fingerprint_sha256(path[-1])}"),
            Selector(self.name, f"serialnumber:{leaf.serial_number:x}"),
        }
        for attr in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
            selectors.add(Selector(self.name, f"subject:cn:{attr.value!s}"))
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            for name in san.get_values_for_type(x509.DNSName):
                selectors.add(Selector(self.name, f"san:dns:{name}"))
        except x509.ExtensionNotFound:
            pass
        return AttestationResult(fingerprint, frozenset(selectors))
