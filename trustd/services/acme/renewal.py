"""ACME Renewal Information (RFC 9773): when a certificate we issued should be renewed."""

from __future__ import annotations

from pki.acme.errors import AcmeNotFound
from pki.acme.profile import ari_cert_id, parse_cert_id, suggested_window
from pki.ca import load_pem_certificates
from trustd.domain.acme import RenewalInfo
from trustd.domain.certificates import CertificateStatus
from trustd.services.acme.context import AcmeContext
from trustd.store import acme as store
from trustd.store.db import transaction


class Renewals:
    def __init__(self, context: AcmeContext) -> None:
        self._context = context

    def renewal_info(self, cert_id: str) -> RenewalInfo:
        """RFC 9773 §4.2: the suggested renewal window of a certificate we issued.

        Raises:
            Malformed: not a certID. AcmeNotFound: no such certificate from this CA.
        """
        parsed = parse_cert_id(cert_id)
        with transaction(self._context.engine) as session:
            issued = store.fetch_acme_certificate(session, parsed.serial_hex)
        if issued is None:
            raise AcmeNotFound("no such certificate")
        cert = load_pem_certificates(issued.certificate_pem.encode())[0]
        if ari_cert_id(cert) != cert_id:
            raise AcmeNotFound("no such certificate")
        window = suggested_window(
            issued.not_before,
            issued.not_after,
            self._context.clock.now(),
            issued.status is CertificateStatus.REVOKED,
        )
        life = (issued.not_after - issued.not_before).total_seconds()
        # §4.3: clients poll again after Retry-After; a tenth of the lifetime, at most 6 h.
        return RenewalInfo(window, retry_after=int(max(60, min(6 * 3600, life / 10))))
