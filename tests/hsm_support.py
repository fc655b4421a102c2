"""A fresh SoftHSM2 token in a scratch directory, for tests of the pkcs11 key backend.

SoftHSM reads ``SOFTHSM2_CONF`` when the module is initialised, so the variable is set
before anything loads the module (in this process, and in the environment handed to every
`trustd` subprocess). `pkcs11-tool` (Debian `opensc`) is the independent reader.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "1234"
SO_PIN = "5678"


@dataclass(frozen=True)
class Token:
    conf: Path
    directory: Path
    label: str
    module: Path = SOFTHSM_MODULE
    pin: str = PIN

    @property
    def env(self) -> dict[str, str]:
        """What `trustd serve` needs to keep its CA keys in this token."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "TRUSTD_CA_KEY_BACKEND": "pkcs11",
            "TRUSTD_PKCS11_MODULE": str(self.module),
            "TRUSTD_PKCS11_TOKEN_LABEL": self.label,
            "TRUSTD_PKCS11_PIN": self.pin,
        }

    def tool(self, *args: str, login: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `pkcs11-tool` against this token."""
        pin = ("--login", "--pin", self.pin) if login else ()
        return subprocess.run(
            [
                _which("pkcs11-tool"),
                "--module",
                str(self.module),
                "--token-label",
                self.label,
                *pin,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian softhsm2, opensc)")
    return found


def new_token(directory: Path, label: str = "trustd-test") -> Token:
    """Initialise a token labelled *label* in a SoftHSM store under *directory*.

    Skips (a failure under TRUSTD_REQUIRE_PEERS=1) when SoftHSM2 or opensc is missing.
    """
    util = _which("softhsm2-util")
    _which("pkcs11-tool")
    if not SOFTHSM_MODULE.is_file():
        pytest.skip(f"{SOFTHSM_MODULE} is not installed (Debian softhsm2)")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", PIN],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
    )
    return Token(conf, tokens, label)


def load_in_process(token: Token, patch: pytest.MonkeyPatch) -> None:
    """Point this process's SoftHSM at *token*'s store.

    SoftHSM reads SOFTHSM2_CONF in C_Initialize; when an earlier test already initialised
    the module in this process, it is finalised and initialised again (which closes that
    test's sessions) so that it reads the new store.
    """
    patch.setenv("SOFTHSM2_CONF", str(token.conf))
    import pkcs11

    lib = pkcs11.lib(str(token.module))
    if lib.initialized:
        lib.reinitialize()
