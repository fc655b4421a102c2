"""Workload attestation: who is calling the Workload API, expressed as selectors.

The kernel vouches for the caller's pid, uid and gid (SO_PEERCRED, recorded when it
connected). Everything else is read from ``/proc/<pid>`` through a directory descriptor
opened when the connection was accepted, so no read can land on another process that later
receives the same pid: once the caller exits, reads through the descriptor fail with ESRCH.

Selectors produced (``pki.selectors.Selector``):

- ``unix:uid:<n>``, ``unix:gid:<n>`` from SO_PEERCRED; ``unix:user:<name>`` and
  ``unix:group:<name>`` when the ids resolve; ``unix:supplementary_gid:<n>`` for each
  supplementary group of the process;
- ``unix:path:<executable>`` and ``unix:sha256:<hex>`` of the executable (hashed up to a
  size limit, cached by device, inode, size, mtime and ctime);
- ``cgroup:path:<path>`` for each distinct cgroup path in ``/proc/<pid>/cgroup``.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import hashlib
import os
import pwd
import socket
import stat
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pki.errors import InvalidSelector
from pki.selectors import Selector
from trustd.agent.errors import WorkloadAttestationError

# struct ucred (socket(7)): pid_t pid; uid_t uid; gid_t gid.
_UCRED = struct.Struct("iII")
DEFAULT_HASH_SIZE_LIMIT = 256 * 1024 * 1024
DEFAULT_DIGEST_CACHE_SIZE = 512
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PeerCredentials:
    """The caller's credentials as the kernel recorded them at connect()."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The SO_PEERCRED credentials of a connected Unix socket.

    Raises:
        WorkloadAttestationError: the peer has no process (pid 0), e.g. it is not local.
    """
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    if pid <= 0:
        raise WorkloadAttestationError("the peer has no process credentials")
    return PeerCredentials(pid, uid, gid)


def read_proc_file(dir_fd: int, name: str) -> bytes:
    """A file under the process directory `dir_fd` (``/proc/<pid>``), read whole.

    Raises:
        OSError: it cannot be read (FileNotFoundError or ProcessLookupError once the
            process has exited).
    """
    with os.fdopen(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd), "rb") as f:
        return f.read()


def _start_time(dir_fd: int) -> int:
    # proc(5): field 22 of stat is starttime; fields are counted after the last ')' because
    # the command name (field 2) may itself contain spaces and parentheses.
    text = read_proc_file(dir_fd, "stat")
    return int(text[text.rindex(b")") + 2 :].split()[19])


class WorkloadProcess:
    """A handle on the calling process: its credentials and an open ``/proc/<pid>``."""

    def __init__(self, credentials: PeerCredentials, dir_fd: int, start_time: int) -> None:
        self.credentials = credentials
        self.dir_fd = dir_fd
        self.start_time = start_time

    @classmethod
    def open(cls, credentials: PeerCredentials, proc_root: str = "/proc") -> WorkloadProcess:
        """Open ``/proc/<pid>`` of the caller now, while its connection is fresh.

        Raises:
            WorkloadAttestationError: the process has already gone.
        """
        try:
            dir_fd = os.open(
                f"{proc_root}/{credentials.pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except (FileNotFoundError, ProcessLookupError):
            raise WorkloadAttestationError(
                f"process {credentials.pid} exited before it could be attested"
            ) from None
        try:
            start_time = _start_time(dir_fd)
        except (FileNotFoundError, ProcessLookupError):
            os.close(dir_fd)
            raise WorkloadAttestationError(
                f"process {credentials.pid} exited before it could be attested"
            ) from None
        return cls(credentials, dir_fd, start_time)

    def duplicate(self) -> WorkloadProcess:
        """A second handle with its own descriptor, for work on another thread (the
        connection may close, and its descriptor be reused, while that work runs)."""
        return WorkloadProcess(self.credentials, os.dup(self.dir_fd), self.start_time)

    def require_alive(self) -> None:
        """Raise unless the process behind the descriptor still runs, unchanged.

        Raises:
            WorkloadAttestationError: it exited (or, impossibly, its start time changed).
        """
        try:
            alive = _start_time(self.dir_fd) == self.start_time
        except (FileNotFoundError, ProcessLookupError):
            alive = False
        if not alive:
            raise WorkloadAttestationError(
                f"process {self.credentials.pid} exited during attestation"
            )

    def close(self) -> None:
        os.close(self.dir_fd)


class ExecutableDigests:
    """SHA-256 of executables, bounded in size and cached by file identity.

    The key (device, inode, size, mtime, ctime) changes whenever the file's content can
    have changed: ctime cannot be set from user space, so rewriting a binary and restoring
    its mtime still misses the cache.
    """

    def __init__(
        self,
        size_limit: int = DEFAULT_HASH_SIZE_LIMIT,
        cache_size: int = DEFAULT_DIGEST_CACHE_SIZE,
    ) -> None:
        self.size_limit = size_limit
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, ...], str] = OrderedDict()
        # Attestation runs on worker threads.
        self._lock = threading.Lock()

    def digest(self, fd: int) -> str | None:
        """Hex SHA-256 of the open regular file `fd`; None when it exceeds the size limit
        (its sha256 selector is then left out, so entries that need it do not match).

        Raises:
            OSError: the file cannot be read.
        """
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > self.size_limit:
            return None
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        sha = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, _CHUNK, offset):
            offset += len(chunk)
            if offset > self.size_limit:
                return None
            sha.update(chunk)
        value = sha.hexdigest()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value


@functools.lru_cache(maxsize=4096)
def _selector(kind: str, value: str) -> Selector | None:
    # A process may name itself with bytes a selector refuses (control characters, very
    # long paths); such a fact simply yields no selector, so entries needing it do not match.
    # Cached: selectors are immutable, and the same paths and groups recur on every call.
    try:
        return Selector(kind, value)
    except InvalidSelector:
        return None


class UnixWorkloadAttestor:
    """Selectors for a calling process (see the module docstring)."""

    def __init__(self, digests: ExecutableDigests | None = None) -> None:
        self.digests = digests if digests is not None else ExecutableDigests()

    def attest(self, process: WorkloadProcess) -> frozenset[Selector]:
        """The caller's selectors. Blocking (reads /proc, may hash a file): run it off the
        event loop.

        Raises:
            WorkloadAttestationError: the process exited before or during attestation.
        """
        creds = process.credentials
        found: list[Selector | None] = [
            _selector("unix", f"uid:{creds.uid}"),
            _selector("unix", f"gid:{creds.gid}"),
        ]
        # Names only when the ids resolve on this node.
        with contextlib.suppress(KeyError):
            found.append(_selector("unix", f"user:{pwd.getpwuid(creds.uid).pw_name}"))
        with contextlib.suppress(KeyError):
            found.append(_selector("unix", f"group:{grp.getgrgid(creds.gid).gr_name}"))
        try:
            found.extend(self._process_facts(process.dir_fd))
        except (FileNotFoundError, ProcessLookupError):
            raise WorkloadAttestationError(
                f"process {creds.pid} exited during attestation"
            ) from None
        # PID reuse guard, as SPIRE's unix attestor does after reading /proc: the facts
        # above describe the caller only if it is still the same live process now.
        process.require_alive()
        return frozenset(s for s in found if s is not None)

    def _process_facts(self, dir_fd: int) -> list[Selector | None]:
        facts: list[Selector | None] = []
        for line in read_proc_file(dir_fd, "status").splitlines():
            if line.startswith(b"Groups:"):
                facts.extend(
                    _selector("unix", f"supplementary_gid:{int(g)}") for g in line.split()[1:]
                )
        try:
            path = os.readlink("exe", dir_fd=dir_fd)
        except PermissionError:
            # An unprivileged agent cannot read other users' executables: no path or
            # sha256 selectors for them (entries that need those do not match).
            path = None
        if path is not None:
            facts.append(_selector("unix", f"path:{path}"))
            exe_fd = os.open("exe", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                digest = self.digests.digest(exe_fd)
            finally:
                os.close(exe_fd)
            if digest is not None:
                facts.append(_selector("unix", f"sha256:{digest}"))
        # cgroups(7): each line is hierarchy-ID:controller-list:cgroup-path.
        lines = read_proc_file(dir_fd, "cgroup").splitlines()
        paths = sorted({line.split(b":", 2)[2] for line in lines if line.count(b":") >= 2})
        facts.extend(_selector("cgroup", f"path:{p.decode(errors='replace')}") for p in paths)
        return facts
