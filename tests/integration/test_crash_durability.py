"""kill -9 of a real `trustd serve` while 20 clients ask for X509-SVIDs: every certificate a
client received is on record after the restart (recorded before it is returned), and the
server comes back with the same CA."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from pki.csr import create_csr
from pki.keys import KeyType, generate_private_key
from tests.integration.conftest import start_server, tls

# A long fault run: `make test-faults` (CI runs it after `make test`).
pytestmark = [pytest.mark.integration, pytest.mark.fault]

CLIENTS = 20


def test_kill_9_during_issuance_loses_no_delivered_certificate(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    server = start_server(data_dir, tmp_path / "server.log")
    bundle_before = server.bundle.read_bytes()
    headers = {"Authorization": f"Bearer {server.token}"}
    csr = create_csr(generate_private_key(KeyType.EC_P256))
    delivered: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(verify=tls(server.bundle), timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        f"{server.url}/v1/svid/x509",
                        json={"spiffe_id": f"spiffe://example.org/crash/{n}", "csr": csr},
                        headers=headers,
                    )
                except httpx.HTTPError:
                    return  # the server is gone: what was answered before is what counts
                with lock:
                    if response.status_code == 201:
                        body = response.json()
                        cert = x509.load_pem_x509_certificate(body["certificate"].encode())
                        # The serial the API says is the certificate's own.
                        assert int(body["serial"], 16) == cert.serial_number
                        delivered.append(body["serial"])
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    # Kill once issuance is in full flow, so requests are in flight at the moment of death.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(delivered) >= 100:
                break
        time.sleep(0.05)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    server.stop()  # closes its pipes; the process is gone already
    stop.set()
    for thread in threads:
        thread.join(20)
    assert failures == []
    assert len(delivered) >= 100, "issuance never got going"

    restarted = start_server(data_dir, tmp_path / "server.log")
    try:
        # The same CA: the bundle clients pinned is still the one served.
        assert restarted.bundle.read_bytes() == bundle_before
        with httpx.Client(verify=tls(restarted.bundle), timeout=10) as http:
            token = {"Authorization": f"Bearer {server.token}"}
            missing = [
                serial
                for serial in delivered
                if http.get(
                    f"{restarted.url}/v1/admin/certificates/{serial}", headers=token
                ).status_code
                != 200
            ]
        assert missing == [], f"{len(missing)} of {len(delivered)} delivered certificates lost"
        print(f"{len(delivered)} certificates delivered before kill -9, all on record")
    finally:
        restarted.stop()
