"""CA creation and key storage: encrypted at rest, upstream authorities, idempotent start."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from pki.ca import certificate_pem, create_root, load_pem_certificates
from pki.clock import SystemClock
from pki.errors import CaError, KeyDecryptionError
from pki.keys import KeyType, generate_private_key
from pki.spiffe_id import TrustDomain
from tests.functional.conftest import make_settings
from trustd.app import create_app
from trustd.bootstrap import initialise, migrate
from trustd.services.ca import key_encryption_key
from trustd.services.container import build_services
from trustd.store.audit import AuditEvent
from trustd.store.ca_keys import BundleState, CaKey


def test_ca_keys_are_encrypted_at_rest_and_need_the_kek(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, key_passphrase="correct horse battery staple")
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings)
    assert initialise(services).created_ca
    assert not initialise(services).created_ca  # a second start creates nothing
    with Session(services.engine) as session:
        rows = session.exec(select(CaKey)).all()
        sequence = session.get(BundleState, 1)
        created = session.exec(
            select(AuditEvent).where(AuditEvent.action == "ca:authority:created")
        ).all()
    assert sorted(r.kind for r in rows) == ["jwt", "x509-intermediate", "x509-root"]
    assert sequence is not None and sequence.sequence == 1
    assert len(created) == 3
    for row in rows:
        assert row.encrypted_key is not None
        assert row.encrypted_key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(row.encrypted_key, password=None)
    services.ca.load()
    services.engine.dispose()

    wrong = build_services(
        make_settings(tmp_path, database_url, key_passphrase="not the passphrase")
    )
    with pytest.raises(KeyDecryptionError):
        wrong.ca.load()
    wrong.engine.dispose()


def test_upstream_root_signs_the_intermediate(tmp_path: Path, database_url: str) -> None:
    clock = SystemClock()
    td = TrustDomain.parse("example.org")
    upstream_key = generate_private_key(KeyType.EC_P384)
    upstream_root = create_root(td, upstream_key, clock, timedelta(days=90))
    cert_file, key_file = tmp_path / "upstream.pem", tmp_path / "upstream-key.pem"
    cert_file.write_text(certificate_pem(upstream_root))
    key_file.write_bytes(
        upstream_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"upstream-password"),
        )
    )
    settings = make_settings(
        tmp_path,
        database_url,
        upstream_ca_cert=cert_file,
        upstream_ca_key=key_file,
        upstream_ca_key_password="upstream-password",
    )
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings)
    initialise(services)
    with TestClient(create_app(settings, services)) as client:
        pem = client.get("/v1/bundle", params={"format": "pem"}).text
    assert load_pem_certificates(pem.encode()) == [upstream_root]
    state = services.ca.state
    assert state.authority.certificate.issuer == upstream_root.subject
    with Session(services.engine) as session:
        root_row = session.exec(select(CaKey).where(CaKey.kind == "x509-root")).one()
    # The upstream key stays in the operator's files; trustd keeps only the certificate.
    assert root_row.upstream
    assert root_row.encrypted_key is None
    services.engine.dispose()


def test_unreadable_upstream_files_are_reported(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        upstream_ca_cert=tmp_path / "missing.pem",
        upstream_ca_key=tmp_path / "missing-key.pem",
    )
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings)
    with pytest.raises(Exception, match="cannot read the upstream CA certificate"):
        initialise(services)
    with Session(services.engine) as session:
        assert session.exec(select(CaKey)).all() == []
    services.engine.dispose()


def test_missing_kek_is_not_replaced_while_ca_keys_exist(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url)
    settings.data_dir.mkdir(parents=True)
    migrate(database_url)
    services = build_services(settings)
    try:
        assert initialise(services).created_ca
        settings.kek_path.unlink()
        with pytest.raises(CaError, match="is missing but the database holds 3 CA keys"):
            key_encryption_key(settings, services.engine)
        assert not settings.kek_path.exists()
    finally:
        services.engine.dispose()


def test_lost_ca_is_not_replaced_over_an_earlier_deployment(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url)
    settings.data_dir.mkdir(parents=True)
    settings.bundle_path.write_text("the root agents pinned\n")
    migrate(database_url)
    services = build_services(settings)
    try:
        with pytest.raises(CaError, match="trustd init --force-new-ca"):
            initialise(services, [settings.bundle_path])
        with Session(services.engine) as session:
            assert session.exec(select(CaKey)).all() == []
        # Forced (`trustd init --force-new-ca`): nothing earlier is held against it.
        assert initialise(services, []).created_ca
    finally:
        services.engine.dispose()
