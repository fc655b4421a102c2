"""The CA as the service sees it: first-start creation, encrypted key storage, the bundle."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from sqlalchemy import Engine
from sqlmodel import Session, select

from pki.bundle import TrustBundle
from pki.ca import (
    Authority,
    certificate_pem,
    create_intermediate,
    create_root,
    fingerprint_sha256,
    load_pem_certificates,
    load_upstream_authority,
)
from pki.clock import Clock
from pki.errors import CaError
from pki.keys import (
    PrivateKey,
    PublicKey,
    allowed_public_key,
    decrypt_private_key,
    describe_key,
    encrypt_private_key,
    generate_private_key,
    key_id,
    load_or_create_kek_file,
    public_key_pem,
)
from trustd import metrics
from trustd.errors import NotReady
from trustd.services.audit import AuditLog
from trustd.settings import Settings
from trustd.store.db import lock_for_initialisation, transaction
from trustd.store.models import BundleState, CaKey, CaKeyKind, CaKeyStatus

SYSTEM_ACTOR = "system:trustd"


@dataclass(frozen=True)
class JwtSigner:
    kid: str
    key: PrivateKey


@dataclass(frozen=True)
class CaState:
    """What one process holds in memory: the signing keys and the bundle built from the rows."""

    authority: Authority
    authority_kid: str
    jwt_signer: JwtSigner
    bundle: TrustBundle
    keys: tuple[CaKey, ...]


def key_encryption_key(settings: Settings) -> bytes:
    """The key that encrypts CA private keys at rest: the configured passphrase, or in dev a
    generated 0600 key file in the data directory.
    """
    if settings.key_passphrase is not None:
        return settings.key_passphrase.get_secret_value().encode()
    return load_or_create_kek_file(settings.kek_path)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaError(f"cannot read the {what} {str(path)!r}: {exc.strerror}") from None


def _row(
    kind: CaKeyKind,
    public: PublicKey,
    key_type: str,
    not_before: datetime,
    not_after: datetime,
    now: datetime,
    *,
    encrypted_key: bytes | None,
    certificate: x509.Certificate | None = None,
    chain: tuple[x509.Certificate, ...] = (),
    upstream: bool = False,
) -> CaKey:
    kid = fingerprint_sha256(certificate) if certificate is not None else key_id(public)
    return CaKey(
        kid=kid,
        kind=kind,
        status=CaKeyStatus.ACTIVE,
        key_type=key_type,
        encrypted_key=encrypted_key,
        public_key_pem=public_key_pem(public),
        certificate_pem=certificate_pem(certificate) if certificate is not None else None,
        chain_pem="".join(certificate_pem(c) for c in chain),
        upstream=upstream,
        not_before=not_before,
        not_after=not_after,
        created_at=now,
    )


class CertificateAuthority:
    """Owns the CA rows: creates them on first start and loads them into a `CaState`."""

    def __init__(
        self, settings: Settings, engine: Engine, clock: Clock, audit: AuditLog, kek: bytes
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._kek = kek
        self._state: CaState | None = None

    @property
    def state(self) -> CaState:
        """Raises:
        NotReady: the CA has not been loaded yet.
        """
        if self._state is None:
            raise NotReady("the CA is not loaded yet")
        return self._state

    def initialise(self) -> bool:
        """Create the root, intermediate and JWT signing key unless they exist.

        Returns whether anything was created. Safe to run on several replicas at once.

        Raises:
            CaError: upstream files are unreadable or inconsistent.
            StoreUnavailable: the database is down.
        """
        with transaction(self._engine) as session:
            lock_for_initialisation(session)
            existing = {row.kind for row in self._active_rows(session)}
            created: list[CaKey] = []
            if not {CaKeyKind.X509_ROOT, CaKeyKind.X509_INTERMEDIATE} <= existing:
                created += self._create_x509()
            if CaKeyKind.JWT not in existing:
                created.append(self._create_jwt())
            for row in created:
                session.add(row)
                self._audit.record(
                    session,
                    SYSTEM_ACTOR,
                    "ca:authority:created",
                    target=row.kid,
                    details={"kind": row.kind, "not_after": row.not_after.isoformat()},
                )
            if created:
                self._bump_sequence(session)
            return bool(created)

    def _create_x509(self) -> list[CaKey]:
        s = self._settings
        td = s.trust_domain_obj
        now = self._clock.now()
        rows: list[CaKey] = []
        if s.upstream_ca_cert is not None and s.upstream_ca_key is not None:
            password = s.upstream_ca_key_password
            upstream = load_upstream_authority(
                _read(s.upstream_ca_cert, "upstream CA certificate"),
                _read(s.upstream_ca_key, "upstream CA key"),
                password.get_secret_value().encode() if password else None,
                _read(s.upstream_ca_bundle, "upstream CA bundle") if s.upstream_ca_bundle else None,
            )
            issuer = upstream
            root = upstream.root
            rows.append(
                _row(
                    CaKeyKind.X509_ROOT,
                    allowed_public_key(root.public_key()),
                    describe_key(root.public_key()),
                    root.not_valid_before_utc,
                    root.not_valid_after_utc,
                    now,
                    encrypted_key=None,
                    certificate=root,
                    upstream=True,
                )
            )
            above = (
                (upstream.certificate, *upstream.chain)
                if upstream.certificate != upstream.root
                else ()
            )
        else:
            root_key = generate_private_key(s.key_type)
            root = create_root(td, root_key, self._clock, s.root_ttl)
            issuer = Authority(certificate=root, private_key=root_key, chain=(), root=root)
            above = ()
            rows.append(
                _row(
                    CaKeyKind.X509_ROOT,
                    allowed_public_key(root.public_key()),
                    s.key_type,
                    root.not_valid_before_utc,
                    root.not_valid_after_utc,
                    now,
                    encrypted_key=encrypt_private_key(root_key, self._kek),
                    certificate=root,
                )
            )
        key = generate_private_key(s.key_type)
        intermediate = create_intermediate(td, key, issuer, self._clock, s.intermediate_ttl)
        rows.append(
            _row(
                CaKeyKind.X509_INTERMEDIATE,
                allowed_public_key(intermediate.public_key()),
                s.key_type,
                intermediate.not_valid_before_utc,
                intermediate.not_valid_after_utc,
                now,
                encrypted_key=encrypt_private_key(key, self._kek),
                certificate=intermediate,
                chain=above,
            )
        )
        return rows

    def _create_jwt(self) -> CaKey:
        s = self._settings
        key = generate_private_key(s.jwt_key_type)
        now = self._clock.now()
        return _row(
            CaKeyKind.JWT,
            key.public_key(),
            s.jwt_key_type,
            now,
            now + s.intermediate_ttl,
            now,
            encrypted_key=encrypt_private_key(key, self._kek),
        )

    def _bump_sequence(self, session: Session) -> None:
        # Trust Domain and Bundle §4.1.1: spiffe_sequence changes with every bundle change.
        state = session.get(BundleState, 1)
        now = self._clock.now()
        if state is None:
            session.add(BundleState(id=1, sequence=1, updated_at=now))
        else:
            state.sequence += 1
            state.updated_at = now
            session.add(state)

    @staticmethod
    def _active_rows(session: Session) -> list[CaKey]:
        return list(session.exec(select(CaKey).where(CaKey.status == CaKeyStatus.ACTIVE)))

    def load(self) -> CaState:
        """Read the active CA rows and decrypt the signing keys into memory.

        Raises:
            NotReady: the CA was never initialised (run `trustd serve` or `trustd init`).
            KeyDecryptionError: the key-encryption key does not open the stored keys.
        """
        with transaction(self._engine) as session:
            rows = self._active_rows(session)
            bundle_state = session.get(BundleState, 1)
        by_kind = {CaKeyKind(row.kind): row for row in rows}
        missing = {CaKeyKind.X509_ROOT, CaKeyKind.X509_INTERMEDIATE, CaKeyKind.JWT} - set(by_kind)
        if missing or bundle_state is None:
            raise NotReady("the CA is not initialised; run `trustd init` or `trustd serve`")
        root_row = by_kind[CaKeyKind.X509_ROOT]
        int_row = by_kind[CaKeyKind.X509_INTERMEDIATE]
        jwt_row = by_kind[CaKeyKind.JWT]
        assert root_row.certificate_pem and int_row.certificate_pem and int_row.encrypted_key
        assert jwt_row.encrypted_key
        root = load_pem_certificates(root_row.certificate_pem.encode())[0]
        authority = Authority(
            certificate=load_pem_certificates(int_row.certificate_pem.encode())[0],
            private_key=decrypt_private_key(int_row.encrypted_key, self._kek),
            chain=tuple(load_pem_certificates(int_row.chain_pem.encode()))
            if int_row.chain_pem
            else (),
            root=root,
        )
        jwt_key = decrypt_private_key(jwt_row.encrypted_key, self._kek)
        bundle = TrustBundle(
            trust_domain=self._settings.trust_domain_obj,
            x509_authorities=(root,),
            jwt_authorities={jwt_row.kid: jwt_key.public_key()},
            sequence=bundle_state.sequence,
            refresh_hint=int(self._settings.bundle_refresh_hint.total_seconds()),
        )
        for row in rows:
            metrics.CA_EXPIRY.labels(row.kind, row.kid).set(row.not_after.timestamp())
        self._state = CaState(
            authority=authority,
            authority_kid=int_row.kid,
            jwt_signer=JwtSigner(jwt_row.kid, jwt_key),
            bundle=bundle,
            keys=tuple(rows),
        )
        return self._state
