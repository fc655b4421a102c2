"""The pkcs11 key backend in process, against a fresh SoftHSM2 token for this module: a token
that fails mid-signature is a 503 with nothing recorded; an unusable module or token stops
start-up; `migrate-keys` moves a file-key deployment's future keys into the token by
rotation, without exporting a key.

SoftHSM reads SOFTHSM2_CONF when the module is initialised: `load_in_process` points the
test process at this module's token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from pki.csr import create_csr
from pki.errors import CaError
from pki.keys import KeyType, generate_private_key
from tests.hsm_support import Token, load_in_process, new_token
from trustd.app import create_app
from trustd.bootstrap import initialise, migrate
from trustd.services.ca import open_token
from trustd.services.container import Services, build_services
from trustd.settings import Settings, load_settings
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    made = new_token(tmp_path_factory.mktemp("softhsm"))
    with pytest.MonkeyPatch.context() as patch:
        load_in_process(made, patch)
        yield made


def _settings(tmp_path: Path, token: Token | None, **extra: Any) -> Settings:
    pkcs11: dict[str, Any] = {}
    if token is not None:
        pkcs11 = {
            "ca_key_backend": "pkcs11",
            "pkcs11_module": token.module,
            "pkcs11_token_label": token.label,
            "pkcs11_pin": token.pin,
        }
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'trustd.db'}",
        tls=False,
        **{**pkcs11, **extra},
    )


@dataclass
class App:
    client: TestClient
    services: Services
    auth: dict[str, str]

    def x509(self, name: str) -> Any:
        csr = create_csr(generate_private_key(KeyType.EC_P256))
        return self.client.post(
            "/v1/svid/x509",
            json={"spiffe_id": f"spiffe://example.org/{name}", "csr": csr},
            headers=self.auth,
        )

    def jwt(self, name: str) -> Any:
        return self.client.post(
            "/v1/svid/jwt",
            json={"spiffe_id": f"spiffe://example.org/{name}", "audience": ["api"]},
            headers=self.auth,
        )

    def issued(self) -> int:
        with transaction(self.services.engine) as session:
            return len(session.exec(select(IssuedCertificate)).all())

    def ca_keys(self) -> list[dict[str, Any]]:
        response = self.client.get("/v1/admin/ca/keys", headers=self.auth)
        assert response.status_code == 200, response.text
        keys: list[dict[str, Any]] = response.json()
        return keys


def _app(settings: Settings, bootstrap: str | None = None) -> Iterator[App]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)
    services = build_services(settings)
    made = initialise(services).bootstrap_token
    secret = made or bootstrap
    assert secret is not None
    with TestClient(create_app(settings, services)) as client:
        yield App(client, services, {"Authorization": f"Bearer {secret}"})
    services.engine.dispose()


def test_open_token_refuses_a_missing_module_or_token(token: Token, tmp_path: Path) -> None:
    with pytest.raises(CaError, match="does not exist"):
        open_token(_settings(tmp_path, token, pkcs11_module=tmp_path / "none.so"))
    with pytest.raises(CaError, match="'nope' was not found"):
        open_token(_settings(tmp_path, token, pkcs11_token_label="nope"))
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    opened = open_token(_settings(tmp_path, token, pkcs11_pin=None, pkcs11_pin_file=pin_file))
    assert opened is not None and opened.name == "pkcs11"


def test_start_up_refuses_a_token_without_the_key(token: Token, tmp_path: Path) -> None:
    settings = _settings(tmp_path, token)
    for app in _app(settings):
        jwt_key = next(k for k in app.ca_keys() if k["kind"] == "jwt")
    gone = token.tool("--delete-object", "--type", "privkey", "--id", jwt_key["key_id"])
    assert gone.returncode == 0, gone.stderr
    services = build_services(settings)
    with pytest.raises(CaError, match=f"holds no key .* \\(id {jwt_key['key_id']}\\)"):
        services.ca.load()
    services.engine.dispose()
    # Without the token settings the keys are not silently replaced by file keys.
    services = build_services(_settings(tmp_path, None))
    with pytest.raises(CaError, match="lives in a PKCS#11 token, but none is configured"):
        services.ca.load()
    services.engine.dispose()


def test_a_token_failing_mid_signature_is_a_503_and_records_nothing(
    token: Token, tmp_path: Path
) -> None:
    for app in _app(_settings(tmp_path, token)):
        assert app.x509("before").status_code == 201
        assert app.jwt("before").status_code == 201
        issued = app.issued()
        keys = {k["kind"]: k for k in app.ca_keys() if k["status"] == "active"}
        for kind in ("x509-intermediate", "jwt"):
            gone = token.tool("--delete-object", "--type", "privkey", "--id", keys[kind]["key_id"])
            assert gone.returncode == 0, gone.stderr
        for response in (app.x509("after"), app.jwt("after")):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["title"] == "Signing key unavailable"
        assert app.issued() == issued, "a certificate was recorded without a signature"


def test_migrate_keys_moves_future_keys_into_the_token(token: Token, tmp_path: Path) -> None:
    bootstrap = None
    for app in _app(_settings(tmp_path, None)):
        assert app.x509("on-file-keys").status_code == 201
        file_kids = {k["kid"] for k in app.ca_keys()}
        assert {k["key_backend"] for k in app.ca_keys()} == {"file"}
        # Asked of a deployment whose new keys still go to files: refused, with the fix.
        refused = app.client.post(
            "/v1/admin/ca/migrate-keys", json={"to": "pkcs11"}, headers=app.auth
        )
        assert refused.status_code == 409, refused.text
        assert "TRUSTD_CA_KEY_BACKEND=pkcs11" in refused.json()["detail"]
        bootstrap = app.auth["Authorization"].removeprefix("Bearer ")

    before = token.tool("--list-objects", "--type", "privkey").stdout.count("Private Key Object")
    for app in _app(_settings(tmp_path, token), bootstrap):
        # The file keys still sign until rotation replaces them.
        assert app.x509("still-file").status_code == 201
        moved = app.client.post(
            "/v1/admin/ca/migrate-keys", json={"to": "pkcs11"}, headers=app.auth
        )
        assert moved.status_code == 200, moved.text
        prepared = {c["kind"]: c["kid"] for c in moved.json()}
        assert set(prepared) == {"x509-root", "x509-intermediate", "jwt"}
        assert all(c["status"] == "prepared" for c in moved.json())
        again = app.client.post(
            "/v1/admin/ca/migrate-keys", json={"to": "pkcs11"}, headers=app.auth
        )
        assert again.json() == []
        for kind in ("x509-root", "x509-intermediate", "jwt"):
            activated = app.client.post(
                "/v1/admin/ca/activate", json={"kind": kind}, headers=app.auth
            )
            assert activated.status_code == 200, activated.text
        keys = {k["kid"]: k for k in app.ca_keys()}
        for kid in prepared.values():
            assert keys[kid]["status"] == "active" and keys[kid]["key_backend"] == "pkcs11"
        for kid in file_kids:
            assert keys[kid]["status"] == "old" and keys[kid]["key_backend"] == "file"
        assert app.x509("on-the-token").status_code == 201
        assert app.jwt("on-the-token").status_code == 201
    after = token.tool("--list-objects", "--type", "privkey").stdout.count("Private Key Object")
    # Three new keys generated in the token; no file key was imported into it.
    assert after - before == 3
    assert os.environ["SOFTHSM2_CONF"] == str(token.conf)
