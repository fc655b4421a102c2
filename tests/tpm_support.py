"""Software TPMs (swtpm) with EK certificates from scratch manufacturer CAs, for the `tpm`
attestor's tests.

`swtpm_setup` manufactures a TPM state: it creates the RSA and ECC EKs, persists them
(0x81010001, 0x81010016) and writes their certificates to NV (0x01c00002, 0x01c00016),
signed by `swtpm_localca`'s CA in the directory the test gives it (created on first use:
root `swtpm-localca-rootca-cert.pem` → intermediate `issuercert.pem`). `swtpm socket`
then serves that state on a loopback TCP port, reached with the TCTI
`swtpm:host=127.0.0.1,port=P`, whose control channel is P + 1 (the TCTI sets the
locality through it). No resource manager runs, so callers flush what they load.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def _port_pair() -> int:
    """A loopback port P with P + 1 free as well (swtpm's command and control channels)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    pytest.fail("no two consecutive free loopback ports")


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian swtpm, swtpm-tools)")
    return found


@dataclass(frozen=True)
class ManufacturerCa:
    """A swtpm_localca CA directory and the configuration pointing swtpm_setup at it."""

    directory: Path
    setup_conf: Path

    @property
    def bundle(self) -> Path:
        """Root and intermediate, the PEM bundle TRUSTD_TPM_EK_CA_BUNDLE takes."""
        path = self.directory / "ek-ca-bundle.pem"
        if not path.exists():
            path.write_bytes(
                (self.directory / "issuercert.pem").read_bytes()
                + (self.directory / "swtpm-localca-rootca-cert.pem").read_bytes()
            )
        return path


@dataclass
class SwTpm:
    state: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def extend(self, pcr: int, digest: bytes) -> None:
        """Extend SHA-256 PCR `pcr` with `digest` (tpm2-tools, an independent client)."""
        subprocess.run(
            [_which("tpm2_pcrextend"), f"{pcr}:sha256={digest.hex()}"],
            capture_output=True,
            timeout=30,
            check=True,
            env={"TPM2TOOLS_TCTI": self.tcti, "PATH": "/usr/bin:/bin"},
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def new_ca(directory: Path) -> ManufacturerCa:
    """A manufacturer CA of its own under `directory` (its keys are made with the first TPM)."""
    ca = directory / "ca"
    ca.mkdir(parents=True)
    localca_conf = directory / "swtpm-localca.conf"
    localca_conf.write_text(
        f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\n"
        f"issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"
    )
    setup_conf = directory / "swtpm_setup.conf"
    setup_conf.write_text(
        f"create_certs_tool = {_which('swtpm_localca')}\n"
        f"create_certs_tool_config = {localca_conf}\n"
        "create_certs_tool_options = /etc/swtpm-localca.options\n"
        "active_pcr_banks = sha256\n"
    )
    return ManufacturerCa(ca, setup_conf)


def new_tpm(directory: Path, ca: ManufacturerCa) -> SwTpm:
    """Manufacture a TPM with EKs certified by `ca` and serve it; stop it with `.stop()`.

    Skips (a failure under TRUSTD_REQUIRE_PEERS=1) when swtpm or tpm2-pytss is missing.
    """
    swtpm = _which("swtpm")
    # Checked here, in the fixtures, rather than at import: a skip at collection would not
    # be turned into a failure under TRUSTD_REQUIRE_PEERS=1.
    pytest.importorskip(
        "tpm2_pytss", reason="tpm2-pytss is not installed (pip install trustd[tpm])"
    )
    state = directory / "state"
    state.mkdir(parents=True)
    subprocess.run(
        [
            _which("swtpm_setup"),
            "--tpm2",
            "--tpm-state",
            str(state),
            "--config",
            str(ca.setup_conf),
            "--create-ek-cert",
            "--create-platform-cert",
            "--pcr-banks",
            "sha256",
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    port = _port_pair()
    process = subprocess.Popen(
        [
            swtpm,
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--flags",
            "not-need-init,startup-clear",
            "--server",
            f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"swtpm exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.terminate()
        pytest.fail("swtpm did not listen within 10 s")
    return SwTpm(state, port, process)
