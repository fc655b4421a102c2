"""The directory (RFC 8555 §7.1.1) and the certificate profiles it offers
(draft-ietf-acme-profiles)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pki.acme.profile import Profile
from trustd.services.acme.context import AcmeContext
from trustd.settings import Settings

DEFAULT_PROFILE = "tlsserver"


def days(delta: timedelta) -> str:
    """A lifetime in words: days from two days up, else hours."""
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"


def build_profiles(settings: Settings) -> dict[str, Profile]:
    """The profiles offered, by name."""
    return {
        "tlsserver": Profile(
            "tlsserver",
            f"TLS server certificate, {days(settings.acme_cert_ttl)}",
            settings.acme_cert_ttl,
        ),
        "shortlived": Profile(
            "shortlived",
            f"Short-lived TLS server certificate, {days(settings.acme_short_cert_ttl)}",
            settings.acme_short_cert_ttl,
        ),
        "mtls": Profile(
            "mtls",
            f"TLS server and client certificate, {days(settings.acme_cert_ttl)}",
            settings.acme_cert_ttl,
            client_auth=True,
        ),
    }


class Directory:
    def __init__(self, context: AcmeContext, profiles: Mapping[str, Profile]) -> None:
        self._context = context
        self._profiles = profiles

    def document(self) -> dict[str, Any]:
        """The directory object (RFC 8555 §7.1.1), with ARI and profiles."""
        u = self._context.urls
        return {
            "newNonce": u.new_nonce,
            "newAccount": u.new_account,
            "newOrder": u.new_order,
            "revokeCert": u.revoke_cert,
            "keyChange": u.key_change,
            # RFC 9773 §3: the renewalInfo resource.
            "renewalInfo": u.renewal_info,
            "meta": {
                "externalAccountRequired": self._context.settings.acme_eab_required,
                # draft-ietf-acme-profiles §3: profile name -> human description.
                "profiles": {p.name: p.description for p in self._profiles.values()},
            },
        }
