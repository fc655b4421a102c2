"""Certificate revocation by the subscriber (RFC 8555 §7.6): the same record every revocation
makes, so the CRL, OCSP and agents all see it."""

from __future__ import annotations

from cryptography import x509

from pki.acme.errors import AlreadyRevoked, BadRevocationReason, Malformed, Unauthorized
from pki.acme.jws import b64decode
from pki.acme.messages import SUBSCRIBER_REVOCATION_REASONS, Revocation, parse_payload
from pki.ca import load_pem_certificates, serial_hex
from pki.keys import same_public_key
from pki.revocation import RevocationReason
from trustd.bus import Bus
from trustd.domain.certificates import CertificateStatus
from trustd.services.acme.authentication import Authenticated
from trustd.services.acme.context import AcmeContext, actor
from trustd.services.revocation import REVOCATION_CHANNEL, Revocations
from trustd.store import acme as store
from trustd.store.certificates import fetch_certificate
from trustd.store.db import transaction


class AcmeRevocations:
    def __init__(self, context: AcmeContext, revocations: Revocations, bus: Bus) -> None:
        self._context = context
        self._revocations = revocations
        self._bus = bus

    def revoke(self, auth: Authenticated) -> str:
        """Revoke a certificate (RFC 8555 §7.6), signed by the account that ordered it or by
        the certificate's own key. Returns the serial.

        Raises:
            Malformed: bad payload or certificate. BadRevocationReason: a reason a subscriber
            may not give. Unauthorized: neither the owning account nor the certificate key.
            AlreadyRevoked: already revoked.
        """
        request = parse_payload(Revocation, auth.payload)
        try:
            cert = x509.load_der_x509_certificate(b64decode(request.certificate, "certificate"))
        except ValueError:
            raise Malformed("'certificate' is not a DER certificate") from None
        reason = 0 if request.reason is None else request.reason
        if reason not in SUBSCRIBER_REVOCATION_REASONS:
            raise BadRevocationReason(
                f"reason {reason} is not allowed; use one of "
                + ", ".join(f"{k} ({v})" for k, v in SUBSCRIBER_REVOCATION_REASONS.items())
            )
        serial = serial_hex(cert)
        with transaction(self._context.engine) as session:
            # Locked first, so concurrent revocations of one certificate are ordered.
            row = fetch_certificate(session, serial, for_update=True)
            issued = store.fetch_acme_certificate(session, serial) if row is not None else None
            if (
                row is None
                or issued is None
                or load_pem_certificates(issued.certificate_pem.encode())[0] != cert
            ):
                raise Unauthorized("this server did not issue that certificate through ACME")
            if auth.account is not None:
                if issued.account_id != auth.account.id:
                    raise Unauthorized("the certificate was not ordered by this account")
                by = actor(auth.account.id)
            else:
                if not same_public_key(cert.public_key(), auth.key.key):
                    raise Unauthorized("the JWS is not signed by the certificate's key")
                by = f"acme:certificate-key:{serial}"
            if issued.status is CertificateStatus.REVOKED:
                raise AlreadyRevoked("the certificate is already revoked")
            revision = self._revocations.record(
                session, [row], RevocationReason(SUBSCRIBER_REVOCATION_REASONS[reason]), by
            )
            self._context.audit.record(
                session,
                by,
                "acme:certificate:revoked",
                target=serial,
                details={"reason": SUBSCRIBER_REVOCATION_REASONS[reason]},
            )
        self._bus.publish(REVOCATION_CHANNEL, str(revision))
        return serial
