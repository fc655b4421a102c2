"""`trustd --install-completion` in real bash and zsh: installed in a fresh home, then a
Tab completes commands, options and option values (bash through its programmable
completion, zsh through its completion system on a pseudo-terminal)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import TRUSTD

pytestmark = pytest.mark.integration


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRUSTD_", "_TRUSTD"))}
    # `trustd` on PATH, as after `source .venv/bin/activate` (the scripts call it by name).
    env |= {"HOME": str(home), "PATH": f"{Path(TRUSTD).parent}:/usr/bin:/bin", "TERM": "dumb"}
    return env


def _install(shell: str, home: Path) -> str:
    # `; true`: the shell stays trustd's parent (no exec), so typer detects which it is.
    done = subprocess.run(
        [shell, "-c", "trustd --install-completion; true"],
        env=_env(home), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def test_bash_completes_commands_options_and_values(tmp_path: Path) -> None:
    assert "bash completion installed" in _install("bash", tmp_path)
    assert "trustd.sh" in (tmp_path / ".bashrc").read_text()

    def tab(*words: str) -> list[str]:
        # An interactive bash reads ~/.bashrc, as a new terminal does; then bash's
        # completion protocol: COMP_WORDS and COMP_CWORD in, COMPREPLY out.
        line = " ".join(f"'{w}'" for w in words)
        script = (
            f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
            "complete -p trustd >/dev/null && _trustd_completion trustd; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(
            ["bash", "-i", "-c", script],
            env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=True,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return done.stdout.split()

    assert {"node", "entry", "policy", "ca", "admin", "token"} <= set(tab("trustd", ""))
    assert tab("trustd", "no") == ["node"]
    assert tab("trustd", "node", "") == ["list", "show", "evict", "ban", "scope"]
    assert tab("trustd", "entry", "create", "--s") == ["--spiffe-id", "--selector", "--server"]
    assert tab("trustd", "-o", "") == ["table", "json", "yaml"]
    # The shared options complete after a command's name too, where they may also go.
    assert tab("trustd", "node", "list", "--o") == ["--output"]
    assert tab("trustd", "node", "list", "-o", "") == ["table", "json", "yaml"]
    # ... but not after `agent`, whose --server and --data-dir are its own.
    assert tab("trustd", "agent", "--ser") == ["--server"]
    assert "--output" not in tab("trustd", "agent", "--")
    assert tab("trustd", "ca", "activate", "--kind", "") == [
        "x509-root",
        "x509-intermediate",
        "jwt",
        "wit",
    ]


# Drives an interactive zsh on a pseudo-terminal (zsh/zpty): types a line and Tab, and
# waits (up to 20 s) until zsh has rewritten the line to the completed one.
ZPTY = r"""
zmodload zsh/zpty
zpty -b z 'zsh -i'
for typed expected in "$@"; do
  zpty -w -n z $'\C-u'"$typed"$'\t'
  seen=""
  for i in {1..200}; do
    while zpty -r -t z chunk; do seen+=$chunk; done
    [[ $seen == *"$expected"* ]] && break
    sleep 0.1
  done
  [[ $seen == *"$expected"* ]] && print -r -- "completed: $expected" || print -r -- "missed: $typed"
done
zpty -d z
"""


def test_zsh_completes_on_the_first_tab(tmp_path: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (Debian package zsh)")
    assert "zsh completion installed" in _install("zsh", tmp_path)
    assert "compinit" in (tmp_path / ".zshrc").read_text()
    cases = [
        # The first Tab of a new shell (autoloading ~/.zfunc/_trustd) completes too.
        ("trustd no", "trustd node "),
        ("trustd entry create --sp", "trustd entry create --spiffe-id "),
        ("trustd policy dec", "trustd policy decisions "),
        ("trustd -o ya", "trustd -o yaml "),
    ]
    args = [part for case in cases for part in case]
    done = subprocess.run(
        ["zsh", "-f", "-c", ZPTY, "zpty", *args],
        env=_env(tmp_path), capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    completed = [line.removeprefix("completed: ") for line in done.stdout.splitlines()]
    assert completed == [expected for _, expected in cases], done.stdout + done.stderr
