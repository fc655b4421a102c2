"""The few libbpf calls the agent needs (Debian's `libbpf.so.1`), through ctypes: open and
load an object with its maps pinned, attach a tc ingress program (in another network
namespace when asked), read and write map elements, and read a ring buffer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from trustd.agent.errors import EnforcementError

T = TypeVar("T")
BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2
BPF_TC_F_REPLACE = 1
BPF_ANY = 0
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
SOURCE = Path(__file__).resolve().parents[1] / "bpf" / "enforce.c"


class TcHook(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ifindex", ctypes.c_int),
        ("attach_point", ctypes.c_int),
        ("parent", ctypes.c_uint32),
        ("_end", ctypes.c_uint32),
    ]


class ProgTestRunOpts(ctypes.Structure):
    """`struct bpf_test_run_opts`."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class TcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("prog_fd", ctypes.c_int),
        ("flags", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("handle", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
    ]


# `ring_buffer_sample_fn`: (ctx, data, size) -> 0 to go on, < 0 to stop.
_SAMPLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
# What the sample callback returns to end a bounded read (any negative value stops
# ring_buffer__consume, which then returns it).
_ENOUGH = -7


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise EnforcementError(
            "libbpf is not installed: apt-get install libbpf1 (or libbpf-dev)"
        ) from None
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, args, res in (
        ("bpf_object__open_file", [cp, vp], vp),
        ("bpf_object__load", [vp], i),
        ("bpf_object__close", [vp], None),
        ("bpf_object__find_map_by_name", [vp, cp], vp),
        ("bpf_object__find_program_by_name", [vp, cp], vp),
        ("bpf_map__set_pin_path", [vp, cp], i),
        ("bpf_map__fd", [vp], i),
        ("bpf_program__fd", [vp], i),
        ("bpf_map_update_elem", [i, vp, vp, ctypes.c_uint64], i),
        ("bpf_map_lookup_elem", [i, vp, vp], i),
        ("bpf_map_delete_elem", [i, vp], i),
        ("bpf_map_get_next_key", [i, vp, vp], i),
        ("bpf_tc_hook_create", [vp], i),
        ("bpf_tc_hook_destroy", [vp], i),
        ("bpf_tc_attach", [vp, vp], i),
        ("bpf_tc_detach", [vp, vp], i),
        ("bpf_prog_test_run_opts", [i, vp], i),
        ("ring_buffer__new", [i, _SAMPLE, vp, vp], vp),
        ("ring_buffer__consume", [vp], i),
        ("ring_buffer__free", [vp], None),
    ):
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, res
    return lib


_LIB: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        _LIB = _load()
    return _LIB


def _check(result: int, what: str) -> None:
    if result < 0:
        err = -result if result != -1 else ctypes.get_errno()
        raise EnforcementError(f"{what} failed: {os.strerror(err)} (errno {err})")


def compile_object(output: Path, source: Path = SOURCE) -> Path:
    """Compile the tc program with clang (`-target bpf`) unless `output` is up to date.

    Raises:
        EnforcementError: clang is missing or the compilation failed.
    """
    if output.exists() and output.stat().st_mtime >= source.stat().st_mtime:
        return output
    clang = shutil.which("clang")
    if clang is None:
        raise EnforcementError("clang is not installed: apt-get install clang llvm libbpf-dev")
    output.parent.mkdir(parents=True, exist_ok=True)
    machine = os.uname().machine
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [
            clang,
            "-O2",
            "-g",
            "-target",
            "bpf",
            f"-I/usr/include/{machine}-linux-gnu",
            "-c",
            str(source),
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise EnforcementError(f"compiling {source.name} failed: {result.stderr.strip()}")
    return output


def ensure_bpffs(root: Path = Path("/sys/fs/bpf")) -> None:
    """Mount the BPF filesystem where maps are pinned, if it is not mounted.

    Raises:
        EnforcementError: it cannot be mounted (not root, or no BPF support).
    """
    with open("/proc/mounts") as mounts:
        if any(line.split()[1] == str(root) and line.split()[2] == "bpf" for line in mounts):
            return
    result = subprocess.run(  # noqa: S603 - fixed argv
        ["/usr/bin/mount", "-t", "bpf", "bpf", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise EnforcementError(f"cannot mount bpffs on {root}: {result.stderr.strip()}")


def in_netns(netns: str | None, call: Callable[[], T]) -> T:
    """Run `call` in network namespace `netns` (a name under /var/run/netns) on a thread
    of its own: setns(2) with CLONE_NEWNET moves only the calling thread.

    Raises:
        EnforcementError: no such namespace, or `call`'s own error.
    """
    if netns is None:
        return call()
    path = NETNS_DIR / netns
    if not path.exists():
        raise EnforcementError(f"no network namespace {netns!r} ({path} is missing)")
    out: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise EnforcementError(f"setns({netns}): {os.strerror(ctypes.get_errno())}")
            out.append(call())
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0]


class BpfObject:
    """A loaded object whose maps are pinned under `pin_dir` (reused when already there,
    so the state outlives an agent restart)."""

    def __init__(
        self, path: Path, pin_dir: Path, maps: tuple[str, ...], program: str, *others: str
    ) -> None:
        self._lib = lib()
        obj = self._lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise EnforcementError(f"cannot open BPF object {path}")
        self._obj = obj
        pin_dir.mkdir(parents=True, exist_ok=True)
        for name in maps:
            handle = self._lib.bpf_object__find_map_by_name(obj, name.encode())
            if not handle:
                self.close()
                raise EnforcementError(f"{path} has no map {name}")
            _check(
                self._lib.bpf_map__set_pin_path(handle, str(pin_dir / name).encode()), "pin path"
            )
        try:
            _check(self._lib.bpf_object__load(obj), f"loading {path.name} (verifier)")
        except EnforcementError:
            self.close()
            raise
        self.fds = {
            name: self._lib.bpf_map__fd(self._lib.bpf_object__find_map_by_name(obj, name.encode()))
            for name in maps
        }
        self.program_fds: dict[str, int] = {
            name: self._lib.bpf_program__fd(
                self._lib.bpf_object__find_program_by_name(obj, name.encode())
            )
            for name in (program, *others)
        }
        self.prog_fd: int = self.program_fds[program]

    def close(self) -> None:
        if self._obj:
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def attach(
        self,
        netns: str | None,
        ifname: str,
        handle: int = 1,
        priority: int = 1,
        *,
        program: str | None = None,
        egress: bool = False,
    ) -> None:
        """Attach the program (or `program`) to `ifname`'s clsact ingress hook (or egress),
        replacing ours if present.

        Raises:
            EnforcementError: no such interface, or the kernel refused.
        """
        prog_fd = self.program_fds[program] if program else self.prog_fd
        point = BPF_TC_EGRESS if egress else BPF_TC_INGRESS

        def run() -> None:
            try:
                ifindex = socket.if_nametoindex(ifname)
            except OSError:
                raise EnforcementError(f"no interface {ifname!r}") from None
            hook = TcHook(ctypes.sizeof(TcHook), ifindex, point, 0)
            created = self._lib.bpf_tc_hook_create(ctypes.byref(hook))
            if created < 0 and -created != 17:  # EEXIST: the clsact qdisc is already there
                _check(created, f"creating clsact on {ifname}")
            opts = TcOpts(ctypes.sizeof(TcOpts), prog_fd, BPF_TC_F_REPLACE, 0, handle, priority)
            _check(
                self._lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
                f"attaching to {ifname}",
            )

        in_netns(netns, run)

    def detach(
        self,
        netns: str | None,
        ifname: str,
        handle: int = 1,
        priority: int = 1,
        *,
        egress: bool = False,
    ) -> None:
        """Remove our filter from `ifname`'s ingress (or egress) hook (nothing if the
        interface is gone)."""
        point = BPF_TC_EGRESS if egress else BPF_TC_INGRESS

        def run() -> None:
            try:
                ifindex = socket.if_nametoindex(ifname)
            except OSError:
                return
            hook = TcHook(ctypes.sizeof(TcHook), ifindex, point, 0)
            opts = TcOpts(ctypes.sizeof(TcOpts), 0, 0, 0, handle, priority)
            self._lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))

        in_netns(netns, run)


def run_on_packet(prog_fd: int, packet: bytes, repeat: int = 1) -> tuple[int, int]:
    """Run the program on `packet` in the kernel (BPF_PROG_TEST_RUN), `repeat` times: its
    return code and the mean run time in ns. Used to verify and to measure the datapath.

    Raises:
        EnforcementError: the kernel refused.
    """
    data = ctypes.create_string_buffer(packet, len(packet))
    opts = ProgTestRunOpts(sz=ctypes.sizeof(ProgTestRunOpts), repeat=repeat)
    opts.data_in = ctypes.cast(data, ctypes.c_void_p)
    opts.data_size_in = len(packet)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test run")
    return int(opts.retval), int(opts.duration)


def update(fd: int, key: ctypes._CData, value: ctypes._CData) -> None:
    """Raises:
    EnforcementError: the kernel refused (E2BIG / ENOMEM: the map is full).
    """
    _check(
        lib().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), BPF_ANY),
        "map update",
    )


def delete(fd: int, key: ctypes._CData) -> None:
    lib().bpf_map_delete_elem(fd, ctypes.byref(key))


def lookup(fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    return int(lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))) == 0


def keys(fd: int, key_type: type[ctypes.Structure]) -> Iterator[ctypes.Structure]:
    """Every key of a map (a snapshot: collect before deleting)."""
    current = None
    while True:
        nxt = key_type()
        prev = ctypes.byref(current) if current is not None else None
        if lib().bpf_map_get_next_key(fd, prev, ctypes.byref(nxt)) != 0:
            return
        yield nxt
        current = nxt


class RingBuffer:
    """A BPF ring buffer (BPF_MAP_TYPE_RINGBUF) read without ever blocking:
    `ring_buffer__consume` takes what the producers have committed, up to a bound per call,
    so a flood cannot keep the reader in one call. `fd` is the map's: poll(2) says when
    there is something to read (the producer decides when to wake; see enforce.c).

    Raises:
        EnforcementError: libbpf refused the map (not a ring buffer).
    """

    def __init__(self, map_fd: int) -> None:
        self.fd = map_fd
        self._records: list[bytes] = []
        self._limit = 0
        # Kept referenced: libbpf calls it for as long as the ring buffer lives.
        self._callback = _SAMPLE(self._sample)
        self._rb = lib().ring_buffer__new(map_fd, self._callback, None, None)
        if not self._rb:
            raise EnforcementError(f"ring_buffer__new failed: {os.strerror(ctypes.get_errno())}")

    def _sample(self, _ctx: int | None, data: int, size: int) -> int:
        self._records.append(ctypes.string_at(data, size))
        return _ENOUGH if len(self._records) >= self._limit else 0

    def read(self, limit: int) -> list[bytes]:
        """The committed records, oldest first, at most `limit` of them (the rest stay for
        the next read).

        Raises:
            EnforcementError: the kernel refused.
        """
        self._records, self._limit = [], limit
        result = lib().ring_buffer__consume(self._rb)
        if result < 0 and result != _ENOUGH:
            _check(result, "ring buffer read")
        records, self._records = self._records, []
        return records

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
