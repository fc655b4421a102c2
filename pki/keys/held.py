"""EC private keys held by a device (a PKCS#11 token, a TPM) that signs and does nothing else.

A :class:`HeldEcKey` implements cryptography's ``EllipticCurvePrivateKey`` interface with
``sign`` made by the device: cryptography's certificate, CSR, CRL and OCSP builders and
PyJWT only ever call ``sign`` and ``public_key``, so they build and encode everything
themselves and the device signs the digest of the to-be-signed bytes. The device returns
raw r‖s, DER-encoded here as X.509 and JWS libraries expect (RFC 5480 §2.2.3
ECDSA-Sig-Value).
"""

from __future__ import annotations

from abc import abstractmethod

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from pki.errors import KeyUnavailable, TrustdError


class HeldEcKey(ec.EllipticCurvePrivateKey):
    """An EC key whose private half never leaves its device."""

    # What misuse (asking for the private half, or another algorithm) raises.
    misuse: type[TrustdError] = KeyUnavailable

    def __init__(self, public: ec.EllipticCurvePublicKey) -> None:
        self._public = public

    @abstractmethod
    def sign_digest(self, digest: bytes) -> bytes:
        """Raw ECDSA r‖s over `digest`, by the device.

        Raises:
            KeyUnavailable: the device, its session or the key failed.
        """

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise self.misuse(f"a key held by {self.device} signs with ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        raw = self.sign_digest(digest)
        half = len(raw) // 2
        return utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    @property
    def device(self) -> str:
        """What holds the key, for error messages."""
        return "a device"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise self.misuse(f"a key held by {self.device} only signs")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise self.misuse(f"a key held by {self.device} is not extractable")

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise self.misuse(f"a key held by {self.device} is not extractable")

    def __copy__(self) -> HeldEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HeldEcKey:
        return self
