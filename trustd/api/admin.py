"""Admin JSON API: CA status and admin tokens."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from fastapi import APIRouter, Response

from pki.ca import fingerprint_sha256, load_pem_certificates
from trustd.api.deps import AdminDep, ServicesDep, require
from trustd.api.schemas import AuthorityPublic, CaPublic, TokenCreate, TokenCreated, TokenPublic
from trustd.domain.tokens import AdminToken

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/ca", response_model=CaPublic, dependencies=[require("admin:ca:read")])
def show_ca(principal: AdminDep, services: ServicesDep) -> CaPublic:
    """The authorities in the bundle (prepared, active, old, tainted) and its sequence."""
    state = services.ca.state
    token = services.settings.pkcs11_token_label
    authorities = [authority_public(row, token) for row in state.keys]
    return CaPublic(
        trust_domain=services.settings.trust_domain,
        bundle_sequence=state.bundle.sequence,
        authorities=authorities,
        key_backend=services.settings.ca_key_backend,
        pkcs11_token=services.settings.pkcs11_token_label,
    )


class CaKeyView(Protocol):
    """What the public view of a CA key slot reads (`trustd.domain.ca_keys.CaKeyInfo`)."""

    @property
    def kind(self) -> str: ...
    @property
    def kid(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def key_type(self) -> str: ...
    @property
    def chain(self) -> str: ...
    @property
    def upstream(self) -> bool: ...
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def certificate_pem(self) -> str | None: ...
    @property
    def key_backend(self) -> str: ...
    @property
    def key_label(self) -> str | None: ...
    @property
    def key_id(self) -> str | None: ...


def key_location(row: CaKeyView, token: str | None = None) -> tuple[str, str]:
    """Where *row*'s private key lives: the backend, and the key's name there (in the
    PKCS#11 token labelled *token*, the one trustd is configured with)."""
    if row.upstream:
        return "upstream", "the upstream CA's key file"
    if row.key_backend == "pkcs11":
        return "pkcs11", f"token {token!r} id {row.key_id} label {row.key_label!r}"
    return "file", "encrypted PKCS#8 in the database"


def authority_public(row: CaKeyView, token: str | None = None) -> AuthorityPublic:
    """The public view of a CA key slot (no key material)."""
    cert = load_pem_certificates(row.certificate_pem.encode())[0] if row.certificate_pem else None
    backend, location = key_location(row, token)
    return AuthorityPublic(
        kind=row.kind,
        kid=row.kid,
        status=row.status,
        key_type=row.key_type,
        chain=row.chain,
        upstream=row.upstream,
        not_before=row.not_before,
        not_after=row.not_after,
        subject=cert.subject.rfc4514_string() if cert else None,
        sha256=fingerprint_sha256(cert) if cert else None,
        key_backend=backend,
        key_location=location,
        key_id=row.key_id,
    )


def _public(token: AdminToken) -> TokenPublic:
    return TokenPublic.model_validate(token, from_attributes=True)


@router.post(
    "/tokens",
    response_model=TokenCreated,
    status_code=201,
    dependencies=[require("admin:token:write")],
)
def create_token(body: TokenCreate, principal: AdminDep, services: ServicesDep) -> TokenCreated:
    """Create an admin token. The secret is in this response only."""
    created = services.tokens.create(
        principal, body.name, body.role, timedelta(seconds=body.ttl) if body.ttl else None
    )
    return TokenCreated(**_public(created.token).model_dump(), token=created.secret)


@router.get("/tokens", response_model=list[TokenPublic], dependencies=[require("admin:token:read")])
def list_tokens(principal: AdminDep, services: ServicesDep) -> list[TokenPublic]:
    """Every admin token, without secrets."""
    return [_public(t) for t in services.tokens.list()]


@router.delete(
    "/tokens/{token_id}",
    status_code=204,
    response_class=Response,
    dependencies=[require("admin:token:revoke")],
)
def revoke_token(token_id: str, principal: AdminDep, services: ServicesDep) -> Response:
    """Revoke a token at once."""
    services.tokens.revoke(principal, token_id)
    return Response(status_code=204)
