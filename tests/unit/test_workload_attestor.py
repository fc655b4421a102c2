"""Workload attestation from real processes: this one, and children under other uids."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.selectors import Selector
from trustd.agent.errors import WorkloadAttestationError
from trustd.agent.workload_attestor import (
    ExecutableDigests,
    PeerCredentials,
    UnixWorkloadAttestor,
    WorkloadProcess,
    peer_credentials,
)

SLEEP = shutil.which("sleep") or "/bin/sleep"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="starts processes as other users")


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _values(selectors: frozenset[Selector], kind: str, prefix: str) -> set[str]:
    return {
        s.value.removeprefix(prefix)
        for s in selectors
        if s.type == kind and s.value.startswith(prefix)
    }


@pytest.fixture
def sleeper(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    uid, exe = getattr(request, "param", (1001, SLEEP))
    process = subprocess.Popen([exe, "30"], user=uid, group=uid)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_attests_the_connected_peer_from_so_peercred() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        creds = peer_credentials(left)
    assert creds == PeerCredentials(os.getpid(), os.getuid(), os.getgid())
    process = WorkloadProcess.open(creds)
    try:
        selectors = UnixWorkloadAttestor().attest(process)
    finally:
        process.close()
    exe = os.path.realpath(sys.executable)
    assert Selector("unix", f"uid:{os.getuid()}") in selectors
    assert Selector("unix", f"gid:{os.getgid()}") in selectors
    assert Selector("unix", f"user:{pwd.getpwuid(os.getuid()).pw_name}") in selectors
    assert Selector("unix", f"group:{grp.getgrgid(os.getgid()).gr_name}") in selectors
    assert _values(selectors, "unix", "supplementary_gid:") == {str(g) for g in os.getgroups()}
    assert _values(selectors, "unix", "path:") == {exe}
    assert _values(selectors, "unix", "sha256:") == {_sha256(exe)}
    cgroups = {line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()}
    assert _values(selectors, "cgroup", "path:") == cgroups


@needs_root
def test_another_users_process(sleeper: subprocess.Popen[bytes]) -> None:
    process = WorkloadProcess.open(PeerCredentials(sleeper.pid, 1001, 1001))
    try:
        selectors = UnixWorkloadAttestor().attest(process)
    finally:
        process.close()
    assert Selector("unix", "uid:1001") in selectors
    assert Selector("unix", f"uid:{os.getuid()}") not in selectors
    assert _values(selectors, "unix", "path:") == {os.path.realpath(SLEEP)}
    assert _values(selectors, "unix", "sha256:") == {_sha256(SLEEP)}


@needs_root
def test_pid_reuse_guard(sleeper: subprocess.Popen[bytes]) -> None:
    """Once the caller has exited, nothing is attested for its pid, even if reused."""
    process = WorkloadProcess.open(PeerCredentials(sleeper.pid, 1001, 1001))
    try:
        sleeper.kill()
        sleeper.wait()
        with pytest.raises(WorkloadAttestationError, match="exited"):
            UnixWorkloadAttestor().attest(process)
    finally:
        process.close()
    with pytest.raises(WorkloadAttestationError, match="exited before"):
        WorkloadProcess.open(PeerCredentials(sleeper.pid, 1001, 1001))


def test_unrepresentable_path_gives_no_path_selector(tmp_path: Path) -> None:
    odd = tmp_path / "sl\neep"
    shutil.copy(SLEEP, odd)
    child = subprocess.Popen([str(odd), "30"])
    try:
        process = WorkloadProcess.open(PeerCredentials(child.pid, os.getuid(), os.getgid()))
        try:
            selectors = UnixWorkloadAttestor().attest(process)
        finally:
            process.close()
    finally:
        child.kill()
        child.wait()
    assert _values(selectors, "unix", "path:") == set()
    assert _values(selectors, "unix", "sha256:") == {_sha256(SLEEP)}


def test_digest_size_limit_and_cache_invalidation(tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_bytes(b"A" * 1000)
    digests = ExecutableDigests(size_limit=1000)
    fd = os.open(exe, os.O_RDONLY)
    try:
        assert digests.digest(fd) == hashlib.sha256(b"A" * 1000).hexdigest()
        # Same size and mtime restored, new content: ctime moved, so the cache misses.
        before = exe.stat()
        exe.write_bytes(b"B" * 1000)
        os.utime(exe, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert digests.digest(fd) == hashlib.sha256(b"B" * 1000).hexdigest()
        exe.write_bytes(b"C" * 1001)
        assert digests.digest(fd) is None  # over the limit: no sha256 selector
    finally:
        os.close(fd)
    # The cache stays bounded.
    small = ExecutableDigests(cache_size=2)
    for i in range(5):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]))
        fd = os.open(path, os.O_RDONLY)
        try:
            assert small.digest(fd) == hashlib.sha256(bytes([i])).hexdigest()
        finally:
            os.close(fd)
    assert len(small._cache) == 2
