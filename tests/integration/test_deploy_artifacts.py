"""The deployment artifacts under deploy/, each checked by the tool that consumes it:

- the systemd units by `systemd-analyze verify` (no warning allowed) and `systemd-analyze
  security --offline` (exposure score under a limit); the agent's capability set by loading
  and attaching the eBPF program and attesting another user's process under exactly that
  set (each capability removed in turn breaks what it is there for), and by a real agent
  under it joining a real server and serving a workload its SVID; the server's empty set
  by serving with no capability at all, under MemoryDenyWriteExecute's kernel twin
  (PR_SET_MDWE) and a /proc as ProtectProc=invisible and ProcSubset=pid leave it;
- the kustomize overlays by `kubectl kustomize`, every object validated strictly (unknown
  fields refused) against the Kubernetes API schemas that kubernetes-validate ships and the
  ServiceMonitor against the prometheus-operator CRD schema
  (deploy/kubernetes/validate, installed by `make install-dev`); nothing is downloaded;
- the HAProxy and Patroni configs that `make ha` renders from deploy/ha by `haproxy -c`
  and `patroni --validate-config`.

Every flag and TRUSTD_* variable the units and manifests pass is one `trustd` knows.
No systemd manager and no Kubernetes cluster run here: what the sandboxing directives and
the cluster do at run time beyond the above is not exercised.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.integration.conftest import TRUSTD, cli, free_port, tls
from trustd.settings import Settings, load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = {path.name: path for path in sorted((DEPLOY / "systemd").glob("*.service"))}
# Where the units expect `pip install trustd` to have put it.
INSTALLED = "/opt/trustd/venv/bin/trustd"
# `systemd-analyze security` exposure levels (0 best, 10 worst; "OK" from 1.0 to 4.9). The agent
# keeps root's uid, the host network and /proc of its callers by design.
EXPOSURE_LIMITS = {"trustd-server.service": 1.5, "trustd-agent.service": 3.0}
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if p.is_dir())
VALIDATOR = KUSTOMIZE / "validate"
# The oldest and newest Kubernetes API versions kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.25.0", "1.37.0")
KINDS = {
    "Namespace",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ServiceMonitor",
    "DaemonSet",
}
CRD_GROUPS = ("monitoring.coreos.com/",)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (Debian package {package})")
    return found


def run(
    *argv: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


# -- what trustd accepts ---------------------------------------------------------------------
@functools.cache
def cli_help(subcommand: str) -> str:
    shown = run(TRUSTD, subcommand, "--help")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def cli_options(subcommand: str) -> set[str]:
    """The long options `trustd <subcommand> --help` lists."""
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", cli_help(subcommand)))


def cli_env_vars(subcommand: str) -> set[str]:
    return set(re.findall(r"env var: (TRUSTD_[A-Z0-9_]+)", cli_help(subcommand)))


def assert_real_invocation(argv: list[str], env: set[str]) -> None:
    """`trustd <subcommand> ...` passes only options it lists, and the TRUSTD_* variables
    are settings (the server's) or variables its --help names (the agent's)."""
    subcommand, *args = argv
    assert subcommand in ("serve", "agent"), argv
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert flags <= cli_options(subcommand), sorted(flags - cli_options(subcommand))
    known = cli_env_vars(subcommand)
    if subcommand == "serve":
        known |= {f"TRUSTD_{name.upper()}" for name in Settings.model_fields}
    named = {name for name in env if name.startswith("TRUSTD_")}
    assert named <= known, sorted(named - known)


# -- systemd -----------------------------------------------------------------------------------
def unit_values(path: Path, key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in path.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def unit_env(path: Path) -> set[str]:
    """The variables the unit sets, and those its EnvironmentFile's example beside it sets."""
    names = {
        word.split("=", 1)[0]
        for value in unit_values(path, "Environment")
        for word in shlex.split(value)
    }
    for env_file in unit_values(path, "EnvironmentFile"):
        example = path.parent / (Path(env_file.lstrip("-")).name + ".example")
        lines = example.read_text().splitlines()
        names |= {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    return names


def units_with_real_binary(tmp_path: Path) -> list[Path]:
    """Copies of the units whose ExecStart names the trustd this test runs, since
    `systemd-analyze verify` refuses a command that does not exist; nothing else changes."""
    copies = []
    for name, path in UNITS.items():
        text = path.read_text()
        assert all(v.startswith(INSTALLED + " ") for v in unit_values(path, "ExecStart")), name
        copy = tmp_path / name
        copy.write_text(text.replace(INSTALLED, TRUSTD))
        copies.append(copy)
    return copies


def test_both_units_are_there() -> None:
    assert set(UNITS) == set(EXPOSURE_LIMITS)


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    copies = units_with_real_binary(tmp_path)
    verified = run(analyze, "verify", *map(str, copies))
    # verify exits 0 on unknown keys and unparsable values, printing a warning: none allowed.
    assert (verified.returncode, verified.stderr, verified.stdout) == (0, "", "")

    # It does catch them: a misspelt directive and a bad value in a copy.
    broken = tmp_path / "broken" / "trustd-server.service"
    broken.parent.mkdir()
    text = copies[0].read_text().replace("ProtectSystem=", "ProtectSystme=")
    broken.write_text(text.replace("RestrictAddressFamilies=", "RestrictAddressFamilies=AF_NOPE "))
    warned = run(analyze, "verify", str(broken)).stderr
    assert "Unknown key 'ProtectSystme'" in warned and "AF_NOPE" in warned, warned


@pytest.mark.parametrize("name", sorted(EXPOSURE_LIMITS))
def test_the_units_exposure_score_is_low(name: str) -> None:
    analyze = tool("systemd-analyze", "systemd")
    # --offline reads the unit file itself: no systemd manager runs here.
    result = run(analyze, "security", "--offline=yes", "--no-pager", str(UNITS[name]))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(
        rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+) (\w+)", result.stdout
    )
    assert found, result.stdout
    score = float(found.group(1))
    print(f"{name}: systemd-analyze security exposure {score} {found.group(2)}")
    assert score <= EXPOSURE_LIMITS[name], result.stdout


def test_the_units_pass_only_real_options_and_settings() -> None:
    for path in UNITS.values():
        (exec_start,) = unit_values(path, "ExecStart")
        argv = shlex.split(exec_start)[1:]
        env = unit_env(path)
        assert_real_invocation(argv, env)
        # Every ${VAR} the command line expands has a default in the unit.
        defaults = {w.split("=", 1)[0] for v in unit_values(path, "Environment") for w in v.split()}
        assert set(re.findall(r"\$\{(\w+)\}", exec_start)) <= defaults, exec_start
    server = UNITS["trustd-server.service"]
    assert unit_values(server, "CapabilityBoundingSet") == [""]
    assert unit_values(server, "AmbientCapabilities") == [""]


def agent_capabilities() -> list[str]:
    (value,) = unit_values(UNITS["trustd-agent.service"], "CapabilityBoundingSet")
    caps = value.split()
    assert caps and all(c.startswith("CAP_") for c in caps), caps
    return caps


PROBE = """
import ctypes, json, os, sys
from pathlib import Path
libc = ctypes.CDLL(None, use_errno=True)
if {mdwe!r} and libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    raise SystemExit("PR_SET_MDWE refused")
from trustd.agent.enforcement.ebpf import BpfEnforcer, Interface, Mode
from trustd.agent.enforcement.state import VerdictTable
obj, pin_dir, ifname, pid = sys.argv[1:]
result = {{}}
try:
    enforcer = BpfEnforcer(Path(obj), [Interface(None, ifname)], Mode.ENFORCE, Path(pin_dir))
    enforcer.start()
    enforcer.apply(VerdictTable().applied({{"revision": 7, "base": 0, "changes": {{
        "identities": {{"set": {{"spiffe://example.org/web": 256}}}},
        "ipcache": {{"set": {{"10.9.0.1/32": 256}}}},
        "policy": {{"set": [[256, 256, 8443, 6, True]]}},
        "revoked": {{"set": []}}}}}}))
    result["revision"] = enforcer.revision
    result["counters"] = sorted(enforcer.counters())
    enforcer.stop(detach=True)
    result["ebpf"] = "ok"
except Exception as exc:
    result["ebpf"] = f"{{type(exc).__name__}}: {{exc}}"
try:
    result["exe"] = os.readlink(f"/proc/{{pid}}/exe")
except OSError as exc:
    result["exe"] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps(result))
"""


@pytest.fixture
def netns_with_veth() -> Iterator[str]:
    """A network namespace of this test's own with a veth pair, up."""
    ip = tool("ip", "iproute2")
    name = f"trustd-caps-{uuid.uuid4().hex[:8]}"
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        subprocess.run(
            [ip, "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True
        )
        for link in ("v0", "v1"):
            subprocess.run([ip, "-n", name, "link", "set", link, "up"], check=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)


def test_the_agent_needs_exactly_its_capability_set(tmp_path: Path, netns_with_veth: str) -> None:
    """What the agent unit and the DaemonSet grant is enough to load, pin, attach and write
    the tc program and to read another user's /proc/<pid>/exe, as root's uid with nothing
    else (how systemd runs it with CapabilityBoundingSet=); without any one of them, the
    step it is listed for fails."""
    if os.geteuid() != 0:
        pytest.skip("changing capability sets and loading eBPF programs needs root")
    tool("clang", "clang")
    setpriv, nsenter = tool("setpriv", "util-linux"), tool("nsenter", "util-linux")
    from trustd.agent.enforcement import libbpf
    from trustd.agent.enforcement.ebpf import COUNTERS

    # As the host does before the agent starts: systemd mounts /sys/fs/bpf at boot. The
    # agent compiles the program itself; clang needs no capability.
    libbpf.ensure_bpffs()
    obj = libbpf.compile_object(tmp_path / "enforce.o")
    mdwe = unit_values(UNITS["trustd-agent.service"], "MemoryDenyWriteExecute") == ["yes"]
    probe = PROBE.format(
        mdwe=mdwe, PR_SET_MDWE=PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN=PR_MDWE_REFUSE_EXEC_GAIN
    )
    # A caller of another uid, as a workload is.
    other = subprocess.Popen(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "60"]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def probe_with(caps: list[str]) -> dict[str, Any]:
        pin_dir = Path("/sys/fs/bpf/trustd") / f"caps-{uuid.uuid4().hex[:8]}"
        bounding = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in caps)])
        argv = [nsenter, f"--net=/var/run/netns/{netns_with_veth}", setpriv]
        argv += [f"--bounding-set={bounding}", "--inh-caps=-all", "--"]
        argv += [sys.executable, "-c", probe, str(obj), str(pin_dir), "v0", str(other.pid)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        finally:
            shutil.rmtree(pin_dir, ignore_errors=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]

    try:
        caps = agent_capabilities()
        full = probe_with(caps)
        assert full["ebpf"] == "ok" and full["revision"] == 7, full
        assert full["counters"] == sorted(COUNTERS), full
        assert full["exe"].endswith("/sleep"), full
        needed_for = {
            "CAP_BPF": ("ebpf", "Operation not permitted"),
            "CAP_NET_ADMIN": ("ebpf", "Operation not permitted"),
            "CAP_SYS_PTRACE": ("exe", "PermissionError"),
        }
        assert set(caps) == set(needed_for), caps
        for cap, (step, error) in needed_for.items():
            without = probe_with([c for c in caps if c != cap])
            assert error in without[step], (cap, without)
    finally:
        other.kill()
        other.wait()


def test_the_whole_agent_runs_under_its_capability_set(
    tmp_path: Path, netns_with_veth: str
) -> None:
    """A real `trustd agent` under the unit's capability set (root's uid, nothing else),
    joined to a real server in the same network namespace: it attaches the tc program to
    its interface and gives a workload running as another user the SVID of an entry that
    needs that workload's executable path (read from /proc/<pid>/exe)."""
    if os.geteuid() != 0:
        pytest.skip("changing capability sets and loading eBPF programs needs root")
    tool("clang", "clang")
    setpriv, nsenter = tool("setpriv", "util-linux"), tool("nsenter", "util-linux")
    tc, ip = tool("tc", "iproute2"), tool("ip", "iproute2")
    from trustd.agent.enforcement import libbpf

    libbpf.ensure_bpffs()  # as systemd does at boot
    netns = f"--net=/var/run/netns/{netns_with_veth}"
    subprocess.run([ip, "-n", netns_with_veth, "link", "set", "lo", "up"], check=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    environ["PYTHONPATH"] = str(ROOT)
    data_dir, port = tmp_path / "var", free_port()
    server_log = tmp_path / "server.log"
    serve = [nsenter, netns, TRUSTD, "serve", "--data-dir", str(data_dir)]
    serve += ["--listen", f"127.0.0.1:{port}"]
    with server_log.open("w") as log:
        server = subprocess.Popen(
            serve,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert server.stdout is not None
    agent: subprocess.Popen[str] | None = None
    pin_dir = Path("/sys/fs/bpf/trustd") / f"agent-{uuid.uuid4().hex[:8]}"
    sockets = Path(tempfile.mkdtemp(prefix="trustd-caps-"))
    sockets.chmod(0o755)
    try:
        # The banner ends with "Next ..." once the server serves.
        assert any(line.startswith("Next") for line in server.stdout), server_log.read_text()

        def admin(*args: str) -> str:
            return cli(*args, "--data-dir", str(data_dir)).stdout

        made = admin("token", "create").split()
        token, ca_sha256 = (made[made.index(f) + 1] for f in ("--join-token", "--ca-sha256"))
        node_id = f"spiffe://example.org/trustd/agent/join_token/{token.split('.')[0]}"
        python = os.path.realpath(sys.executable)
        admin(
            "entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id", node_id,
            "--selector", "unix:uid:2001", "--selector", f"unix:path:{python}",
        )  # fmt: skip
        bounding = ",".join(
            ["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in agent_capabilities())]
        )
        argv = [nsenter, netns, setpriv, f"--bounding-set={bounding}", "--inh-caps=-all", "--"]
        argv += [TRUSTD, "agent", "--server", f"https://127.0.0.1:{port}"]
        argv += ["--join-token", token, "--ca-sha256", ca_sha256]
        argv += ["--socket", str(sockets / "agent.sock"), "--data-dir", str(tmp_path / "agent")]
        argv += ["--enforce-interface", "v0", "--bpf-pin-dir", str(pin_dir)]
        agent_log = tmp_path / "agent.log"
        with agent_log.open("w") as log:
            agent = subprocess.Popen(argv, env=environ, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        got: dict[str, Any] = {}
        while time.monotonic() < deadline and agent.poll() is None:
            if (sockets / "agent.sock").exists():
                done = run(
                    sys.executable, str(Path(__file__).with_name("workload_client.py")),
                    "--socket", str(sockets / "agent.sock"), "--uid", "2001", "--gid", "2001",
                    "x509",
                )  # fmt: skip
                if done.returncode == 0:
                    got = json.loads(done.stdout.splitlines()[-1])
                    if got["svids"]:
                        break
            time.sleep(0.3)
        assert [s["spiffe_id"] for s in got.get("svids", [])] == ["spiffe://example.org/web"], (
            agent_log.read_text()
        )
        filters = run(tc, "-n", netns_with_veth, "filter", "show", "dev", "v0", "ingress").stdout
        assert "trustd_ingress" in filters, filters
        status = Path(f"/proc/{agent.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[0] == "0"
        # Linux capability numbers (capability.h): NET_ADMIN 12, SYS_PTRACE 19, BPF 39.
        assert int(fields["CapEff"], 16) == (1 << 12) | (1 << 19) | (1 << 39), fields["CapEff"]
    finally:
        for process in (agent, server):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        server.stdout.close()
        shutil.rmtree(pin_dir, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


def test_the_server_serves_with_no_capability_and_no_writable_executable_memory(
    tmp_path: Path,
) -> None:
    """`trustd serve` as the server unit runs it, as far as the kernel can say without
    systemd: an empty capability bounding set, no_new_privs, PR_SET_MDWE (the kernel's own
    MemoryDenyWriteExecute) and a /proc showing only its own processes and no non-process
    files (ProtectProc=invisible, ProcSubset=pid). It starts and answers /readyz."""
    if os.geteuid() != 0:
        pytest.skip("mounting a private /proc needs root")
    setpriv, unshare = tool("setpriv", "util-linux"), tool("unshare", "util-linux")
    server = UNITS["trustd-server.service"]
    for key, value in (
        ("MemoryDenyWriteExecute", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
    ):
        assert unit_values(server, key) == [value], key
    data_dir = tmp_path / "var"
    port = free_port()
    mdwe_exec = (
        "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
        f"assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0; "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    private_proc = 'mount -o remount,hidepid=invisible,subset=pid /proc && exec "$@"'
    argv = [unshare, "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c", private_proc, "sh"]
    argv += [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]
    argv += [sys.executable, "-c", mdwe_exec, TRUSTD, "serve", "--data-dir", str(data_dir)]
    argv += ["--listen", f"127.0.0.1:{port}"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTD_")}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=environ, stdout=out, stderr=out)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    try:
        status = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                url = f"https://127.0.0.1:{port}/readyz"
                status = httpx.get(url, verify=tls(data_dir / "bundle.pem")).status_code
                if status == 200:
                    break
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.2)
        assert status == 200, log.read_text()
        (serving,) = children.read_text().split()
        status_file = Path(f"/proc/{serving}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status_file.splitlines() if ":\t" in line)
        assert int(fields["CapBnd"], 16) == 0 and int(fields["CapEff"], 16) == 0, fields
        assert fields["NoNewPrivs"].strip() == "1"
    finally:
        for pid in children.read_text().split() if process.poll() is None else []:
            os.kill(int(pid), signal.SIGTERM)
        process.wait(30)


# -- Kubernetes --------------------------------------------------------------------------------
def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = tool("kubectl", "kubectl or kubernetes-client")
    rendered = run(kubectl, "kustomize", str(KUSTOMIZE / "overlays" / overlay))
    # No deprecation warning either.
    assert (rendered.returncode, rendered.stderr) == (0, ""), rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def validate_crds(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    node = tool("node", "nodejs")
    if not (VALIDATOR / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.skip(f"the CRD schemas are not installed in {VALIDATOR} (make install-dev)")
    return run(node, str(VALIDATOR / "validate-crds.mjs"), stdin=json.dumps(objects))


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_every_object_meets_its_schema(overlay: str) -> None:
    objects = kustomize(overlay)
    assert {o["kind"] for o in objects} == KINDS
    assert {o["metadata"].get("namespace", "trustd") for o in objects} == {"trustd"}
    builtin = [o for o in objects if not o["apiVersion"].startswith(CRD_GROUPS)]
    for version in K8S_VERSIONS:
        for obj in builtin:
            # strict: a field the API does not define is an error, not ignored.
            kubernetes_validate.validate(obj, version, strict=True)
    crds = [o for o in objects if o["apiVersion"].startswith(CRD_GROUPS)]
    checked = validate_crds(crds)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines() == ["ServiceMonitor/trustd-server: valid"]


def test_the_validators_refuse_what_the_api_would() -> None:
    objects = kustomize("production")
    deployment = one(objects, "Deployment")
    container(deployment)["securityContxt"] = {"privileged": True}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    service = one(objects, "Service")
    service["spec"]["ports"][0]["port"] = "https"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSIONS[-1], strict=True)
    monitor = one(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scheme"] = "gopher"
    monitor["spec"]["endpoints"][0]["interval"] = "half a minute"
    refused = validate_crds([monitor])
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "scheme" in refused.stdout and "interval" in refused.stdout, refused.stdout


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_objects_fit_together_and_pass_what_trustd_takes(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = kustomize(overlay)
    deployment, daemonset = one(objects, "Deployment"), one(objects, "DaemonSet")
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    server_pod = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], server_pod)
    assert _selects(service["spec"]["selector"], server_pod)
    assert _selects(
        one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], server_pod
    )
    assert _selects(one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], server_pod)
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports

    server = container(deployment)
    named_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(named_ports)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["port"] in named_ports
        assert server[probe]["httpGet"]["path"] in ("/healthz", "/readyz")
    assert server["command"] == ["trustd"]
    env = {e["name"]: e for e in server["env"]}
    assert_real_invocation(server["args"], set(env))
    # The plain values are settings trustd loads (the secrets stand in for the Secret's).
    for name in [k for k in os.environ if k.startswith("TRUSTD_")]:
        monkeypatch.delenv(name)
    for name, item in env.items():
        monkeypatch.setenv(name, item.get("value", "a-secret-of-at-least-16-chars"))
    settings = load_settings()
    assert settings.port == named_ports["https"]
    assert settings.metrics_listen == f"0.0.0.0:{named_ports['metrics']}"
    assert settings.env == "production"
    assert server["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    agent = container(daemonset)
    assert agent["command"] == ["trustd"]
    agent_env = {e["name"]: e for e in agent["env"]}
    assert_real_invocation(agent["args"], set(agent_env))
    # Every $(VAR) in the args is defined, so Kubernetes expands it.
    assert set(re.findall(r"\$\((\w+)\)", " ".join(agent["args"]))) <= set(agent_env)
    added = agent["securityContext"]["capabilities"]
    assert added["drop"] == ["ALL"]
    assert sorted(f"CAP_{c}" for c in added["add"]) == sorted(agent_capabilities())
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    args = agent["args"]
    assert args[args.index("--socket") + 1].startswith("/run/trustd/") and "/run/trustd" in mounts
    assert (
        args[args.index("--bpf-pin-dir") + 1].startswith("/sys/fs/bpf/") and "/sys/fs/bpf" in mounts
    )
    assert args[args.index("--data-dir") + 1] in mounts
    expected_mode = "audit" if overlay == "audit" else "enforce"
    assert agent_env["ENFORCEMENT_MODE"]["value"] == expected_mode
    assert deployment["spec"]["replicas"] == 3


# -- the HA examples (the files `make ha` renders) -----------------------------------------
@pytest.fixture
def topology(tmp_path: Path) -> Any:
    sys.path.insert(0, str(DEPLOY / "ha"))
    try:
        import topology as module
    finally:
        sys.path.remove(str(DEPLOY / "ha"))
    return module.Topology(tmp_path)


def test_the_haproxy_example_passes_haproxy_check(tmp_path: Path, topology: Any) -> None:
    haproxy = tool("haproxy", "haproxy")
    config = tmp_path / "haproxy.cfg"
    config.write_text(topology.render_haproxy())
    checked = run(haproxy, "-c", "-f", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout
    # It checks the file: a wrong keyword fails.
    config.write_text(topology.render_haproxy().replace("balance roundrobin", "balance sideways"))
    assert run(haproxy, "-c", "-f", str(config)).returncode != 0


# What Patroni's validator says of any loopback topology with no etcd running, as `make
# ha`'s is by design (single host; etcd is started by `make ha`, not by the tests).
PATRONI_LOOPBACK = (
    re.compile(
        r"^(restapi|postgresql)\.connect_address 127\.0\.0\.1:\d+ didn't pass validation: "
        r"'must not contain \"127\.0\.0\.1\""
    ),
    re.compile(
        r"^etcd3\.hosts 127\.0\.0\.1:\d+ didn't pass validation: "
        r"'127\.0\.0\.1:\d+ is not reachable'$"
    ),
)


def patroni_problems(patroni: str, text: str, path: Path) -> list[str]:
    path.write_text(text)
    checked = run(patroni, "--validate-config", str(path))
    lines = [line for line in (checked.stdout + checked.stderr).splitlines() if line.strip()]
    if checked.returncode == 0:
        assert lines == ["Configuration file is valid"] or not lines, lines
        return []
    return [line for line in lines if not any(p.search(line) for p in PATRONI_LOOPBACK)]


def test_the_patroni_example_passes_patroni_validate_config(tmp_path: Path, topology: Any) -> None:
    patroni = tool("patroni", "patroni")
    for index in range(2):
        rendered = topology.render_patroni(index)
        assert patroni_problems(patroni, rendered, tmp_path / f"pg{index + 1}.yml") == []
    # It checks the file: a wrong type and a bad port are reported.
    broken = topology.render_patroni(0).replace("ttl: 10", "ttl: ten")
    broken = re.sub(r"(?m)^  listen: 127\.0\.0\.1:\d+", "  listen: 127.0.0.1:99999", broken)
    problems = patroni_problems(patroni, broken, tmp_path / "broken.yml")
    assert any("bootstrap.dcs.ttl" in p for p in problems), problems
    assert any("99999" in p for p in problems), problems
