"""What the `trustd` listing and show commands print, against one real `trustd serve`
seeded once for the module (a node attested by a real agent, an entry, SVIDs, a UI
account, an EAB key, an ACME certificate issued over http-01, a logged decision, two
policy revisions): an aligned table under a header for people, the server's documents as
JSON or YAML for scripts, words when there is nothing to list, and unified policy diffs.

The commands run in this process (typer's runner: the real parser, the real admin
socket), so the many assertions take seconds; what depends on the real executable
(`token create`'s next command) runs it as a subprocess."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from tests.acme_support import Http01Responder, Signer, b64
from tests.integration.conftest import (
    TRUSTD,
    Running,
    cli,
    join_agent_command,
    start_server,
    tls,
)
from tests.integration.test_agent import wait_for
from trustd.cli import app

pytestmark = pytest.mark.integration

REGO = Path(__file__).resolve().parents[2] / "rego"
ESC = "\x1b["


@dataclass
class Seeded:
    server: Running
    agent_id: str
    entry_id: str
    serial: str
    http01: Http01Responder
    # The active policy revision, and a second one pushed beside it.
    revisions: tuple[str, str] = ("", "")

    def run(self, *args: str, color: bool = False, stdin: str | None = None) -> Any:
        """`trustd ARGS --data-dir D` in this process; fails the test on a non-zero exit."""
        result = CliRunner().invoke(
            app,
            [*args, "--data-dir", str(self.server.data_dir)],
            color=color,
            input=stdin,
            env={"TRUSTD_OUTPUT": None, "NO_COLOR": None},
        )
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result


def _attest_a_node(server: Running, work: Path) -> str:
    """A real agent joins with a fresh join token, then stops (its node stays listed)."""
    with (work / "agent.log").open("w") as log:
        agent = subprocess.Popen(join_agent_command(server, work), stdout=log, stderr=log)
    try:

        def attested() -> list[dict[str, Any]]:
            out = cli("node", "list", "-o", "json", "--data-dir", str(server.data_dir)).stdout
            return list(json.loads(out))

        nodes = wait_for(attested, 30, "the agent to attest")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
    return str(nodes[0]["agent_id"])


def _acme_certificate(server: Running, http01: Http01Responder) -> None:
    """An ACME account, order and certificate for 127.0.0.1, validated over http-01
    (RFC 8555 §8.3, RFC 8738 for the IP identifier), JWS signed by josepy."""
    client = httpx.Client(base_url=server.url, verify=tls(server.bundle), timeout=30)
    directory = client.get("/acme/directory").json()
    signer = Signer()

    def post(url: str, payload: dict[str, Any] | None, use_jwk: bool = False) -> httpx.Response:
        nonce = client.head(directory["newNonce"]).headers["Replay-Nonce"]
        body = signer.sign(url, payload, nonce, use_jwk=use_jwk)
        return client.post(url, content=body, headers={"Content-Type": "application/jose+json"})

    account = post(
        directory["newAccount"],
        {"termsOfServiceAgreed": True, "contact": ["mailto:ops@example.org"]},
        use_jwk=True,
    )
    assert account.status_code == 201, account.text
    signer.kid = account.headers["Location"]
    created = post(directory["newOrder"], {"identifiers": [{"type": "ip", "value": "127.0.0.1"}]})
    assert created.status_code == 201, created.text
    order_url = created.headers["Location"]
    for authz_url in created.json()["authorizations"]:
        challenge = next(
            c for c in post(authz_url, None).json()["challenges"] if c["type"] == "http-01"
        )
        http01.tokens[challenge["token"]] = f"{challenge['token']}.{signer.thumbprint()}"
        assert post(challenge["url"], {}).status_code == 200
    order = wait_for(
        lambda: (o := post(order_url, None).json())["status"] == "ready" and o, 30, "order ready"
    )
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    assert post(order["finalize"], {"csr": b64(der)}).status_code == 200
    wait_for(lambda: post(order_url, None).json()["status"] == "valid", 30, "order valid")
    client.close()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Http01Responder]]:
    tmp = tmp_path_factory.mktemp("cli-output")
    http01 = Http01Responder()
    server = start_server(
        tmp / "var",
        tmp / "server.log",
        TRUSTD_ACME_HTTP01_PORT=str(http01.port),
        TRUSTD_ACME_IP_NETWORKS='["127.0.0.0/8"]',
    )
    yield server, http01
    server.stop()
    http01.close()


@pytest.fixture(scope="module")
def seeded(
    fresh: tuple[Running, Http01Responder], tmp_path_factory: pytest.TempPathFactory
) -> Seeded:
    server, http01 = fresh
    work = tmp_path_factory.mktemp("seed")
    seeded = Seeded(server, "", "", "", http01)
    seeded.agent_id = _attest_a_node(server, work)
    node_id = f"spiffe://example.org/trustd/agent/join_token/{seeded.agent_id}"
    created = seeded.run(
        "-o", "json", "entry", "create", "--spiffe-id", "spiffe://example.org/web",
        "--parent-id", node_id, "--selector", "unix:uid:1000",
    )  # fmt: skip
    seeded.entry_id = json.loads(created.stdout)["id"]
    seeded.run("svid", "x509", "--spiffe-id", "spiffe://example.org/web", "--out", str(work / "s"))
    web = ("--spiffe-id", "spiffe://example.org/web")
    certs = json.loads(seeded.run("-o", "json", "cert", "list", *web).stdout)
    seeded.serial = certs[0]["serial"]
    seeded.run("admin", "user", "create", "ops", "--password-stdin", stdin="s3cret-enough-pw\n")
    seeded.run("acme", "eab", "create", "--label", "ci", "--dns-suffix", "example.org")
    _acme_certificate(server, http01)
    decided = httpx.post(
        f"{server.url}/v1/data/trustd/mesh/allow",
        json={
            "input": {"source": "spiffe://example.org/a", "destination": "spiffe://example.org/b"}
        },
        headers={"Authorization": f"Bearer {server.token}"},
        verify=tls(server.bundle),
    )
    assert decided.status_code == 200, decided.text
    mesh_decisions = ("-o", "json", "policy", "decisions", "--path", "trustd/mesh/allow")
    wait_for(lambda: json.loads(seeded.run(*mesh_decisions).stdout), 30, "the decision logged")
    # A second revision: one module line and one data value changed.
    second = work / "rego"
    shutil.copytree(REGO, second)
    mesh = (second / "mesh.rego").read_text()
    (second / "mesh.rego").write_text(
        mesh.replace("import rego.v1\n", "import rego.v1\n\n# reviewed\n", 1)
    )
    data = json.loads((second / "data.json").read_text())
    data["mesh"]["allow"][0]["ports"] = [8443, 9443]
    (second / "data.json").write_text(json.dumps(data))
    active = next(
        r["revision"]
        for r in json.loads(seeded.run("-o", "json", "policy", "list").stdout)
        if r["active"]
    )
    pushed = seeded.run("-o", "json", "policy", "push", str(second), "--no-activate")
    seeded.revisions = (str(active), str(json.loads(pushed.stdout)["revision"]))
    return seeded


# -- nothing to list ---------------------------------------------------------------------
# (first in the module: the seeded fixture fills the same server afterwards)


def _run(server: Running, *args: str) -> Any:
    result = CliRunner().invoke(
        app, [*args, "--data-dir", str(server.data_dir)], env={"TRUSTD_OUTPUT": None}
    )
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


EMPTY = [
    (("node", "list"), r"no nodes attested yet; create a join token with: \S+ token create$"),
    (("entry", "list"), r"no registration entries; create one with: \S+ entry create --spiffe-id"),
    (("admin", "user", "list"), r"no UI accounts yet; create one with: \S+ admin user create"),
    (("acme", "accounts"), r"no ACME accounts yet; ACME clients register at"),
    (("acme", "orders", "--status", "valid"), r"no ACME orders matching --status valid$"),
    (("acme", "certificates"), r"no certificates issued through ACME yet$"),
    (("acme", "eab", "list"), r"no EAB keys; create one with: \S+ acme eab create --label"),
    (
        ("cert", "list", "--spiffe-id", "spiffe://example.org/nobody"),
        r"no issued certificates matching --spiffe-id spiffe://example.org/nobody$",
    ),
    (
        ("policy", "decisions", "--caller", "nobody"),
        r"no decisions logged matching --caller nobody$",
    ),
    (
        ("entry", "list", "--selector", "unix:uid:4242"),
        r"no registration entries matching --selector unix:uid:4242; create one",
    ),
]


def test_empty_listings_say_so_and_what_to_do(fresh: tuple[Running, Http01Responder]) -> None:
    server, _ = fresh
    for args, message in EMPTY:
        table = _run(server, *args)
        # Words on stderr, nothing on stdout (no lone header for a script to count).
        assert table.stdout == "", args
        assert re.search(message, table.stderr.strip()), (args, table.stderr)
        as_json = json.loads(_run(server, "-o", "json", *args).stdout)
        as_yaml = yaml.safe_load(_run(server, "-o", "yaml", *args).stdout)
        if args[:2] == ("entry", "list"):
            assert as_json == as_yaml
            assert (as_json["entries"], as_json["total"]) == ([], 0)
        else:
            assert as_json == as_yaml == [], args


# -- listings: a table, JSON, YAML -------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    args: tuple[str, ...]
    headers: tuple[str, ...]
    # A field one column shows as it is (the first column unless `shown_in` says), and
    # where the rows are in the JSON document.
    key: str
    page: str | None = None
    shown_in: int = 0


LISTINGS = [
    Listing(
        ("ca", "keys"),
        (
            "KIND",
            "KID",
            "STATUS",
            "KEY TYPE",
            "CHAIN",
            "NOT BEFORE",
            "NOT AFTER",
            "BACKEND",
            "KEY",
        ),
        "kind",
    ),
    Listing(
        ("cert", "list"),
        ("SERIAL", "KIND", "SPIFFE ID", "STATUS", "ISSUER", "NOT AFTER"),
        "serial",
    ),
    Listing(
        ("admin", "token", "list"),
        ("ID", "NAME", "ROLE", "CREATED BY", "CREATED", "EXPIRES", "REVOKED"),
        "id",
    ),
    Listing(
        ("admin", "user", "list"),
        ("USERNAME", "ROLE", "TOTP", "DISABLED", "CREATED", "LAST SIGN-IN"),
        "username",
    ),
    Listing(
        ("node", "list"),
        ("SPIFFE ID", "AGENT ID", "STATUS", "ATTESTOR", "SELECTORS", "LAST SEEN", "REVISION"),
        "spiffe_id",
    ),
    Listing(
        ("entry", "list"),
        ("ID", "SPIFFE ID", "PARENT ID", "SELECTORS", "X509 TTL", "KEY TYPE", "REVISION"),
        "id",
        page="entries",
    ),
    Listing(
        ("policy", "list"),
        ("ACTIVE", "REVISION", "CREATED", "CREATED BY", "MODULES", "NOTE"),
        "active",
    ),
    Listing(
        ("policy", "decisions", "--path", "trustd/mesh/allow"),
        ("TIME", "PATH", "CALLER", "VERDICT", "RESULT", "REVISION", "ID"),
        "decision_id",
        shown_in=6,
    ),
    Listing(("acme", "accounts"), ("ID", "STATUS", "CONTACT", "EAB KEY", "CREATED"), "id"),
    Listing(
        ("acme", "orders"),
        ("ID", "ACCOUNT", "STATUS", "IDENTIFIERS", "PROFILE", "EXPIRES", "CERTIFICATE"),
        "id",
    ),
    Listing(
        ("acme", "certificates"),
        ("SERIAL", "ACCOUNT", "IDENTIFIERS", "STATUS", "NOT AFTER"),
        "serial",
    ),
    Listing(
        ("acme", "eab", "list"),
        ("ID", "LABEL", "DNS SUFFIXES", "IP NETWORKS", "EXPIRES", "REVOKED"),
        "id",
    ),
]
TIME_WITH_FRACTION = re.compile(r"\d{2}:\d{2}:\d{2}\.\d")
HUMAN_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC")
DATE_COLUMNS = {"NOT BEFORE", "NOT AFTER", "CREATED", "EXPIRES", "REVOKED", "LAST SEEN", "TIME"}


@pytest.mark.parametrize("listing", LISTINGS, ids=lambda listing: " ".join(listing.args))
def test_every_listing_prints_a_table_json_and_yaml(seeded: Seeded, listing: Listing) -> None:
    document = json.loads(seeded.run("-o", "json", *listing.args).stdout)
    assert yaml.safe_load(seeded.run("-o", "yaml", *listing.args).stdout) == document
    rows = document[listing.page] if listing.page else document
    assert rows, "the seeded server has something to list"

    table = seeded.run(*listing.args).stdout.splitlines()
    header = table[0]
    assert tuple(re.split(r" {2,}", header)) == listing.headers
    # Aligned: every column starts where its header does, in every row.
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    assert len(table) == 1 + len(rows)
    for line, row in zip(table[1:], rows, strict=True):
        assert all(line[s - 1] == " " for s in starts[1:] if s < len(line)), line
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        expected = row[listing.key]
        assert cells[listing.shown_in] == (
            "*" if expected is True else "" if expected is False else str(expected)
        )
        # Dates for people: UTC to the second (JSON keeps what the server sent).
        for name, cell in zip(listing.headers, cells, strict=True):
            if name in DATE_COLUMNS and cell:
                assert HUMAN_TIME.fullmatch(cell), (name, cell)
    assert not TIME_WITH_FRACTION.search("\n".join(table))


def test_a_terminal_gets_a_bold_header_and_a_pipe_plain_text(seeded: Seeded) -> None:
    coloured = seeded.run("node", "list", color=True).stdout
    assert coloured.startswith(f"{ESC}1m")
    plain = seeded.run("node", "list").stdout
    assert ESC not in plain and plain.startswith("SPIFFE ID")


# -- show commands -----------------------------------------------------------------------


def _fields(text: str) -> dict[str, str]:
    """`field  value` lines as a dict."""
    pairs = (re.split(r" {2,}", line.strip(), maxsplit=1) for line in text.splitlines())
    return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs if p[0]}


def test_show_commands_print_fields_json_and_yaml(seeded: Seeded) -> None:
    node_id = f"spiffe://example.org/trustd/agent/join_token/{seeded.agent_id}"
    for args, field, value in [
        (("node", "show", seeded.agent_id), "spiffe_id", node_id),
        (("node", "show", node_id), "agent_id", seeded.agent_id),
        (("entry", "show", seeded.entry_id), "spiffe_id", "spiffe://example.org/web"),
        (("cert", "show", seeded.serial), "serial", seeded.serial),
        (("ca", "show"), "trust_domain", "example.org"),
    ]:
        document = json.loads(seeded.run("-o", "json", *args).stdout)
        assert document[field] == value
        assert yaml.safe_load(seeded.run("-o", "yaml", *args).stdout) == document
        text = seeded.run(*args).stdout
        shown = _fields(text.split("\n\n")[0].split("-----BEGIN")[0])
        assert shown[field] == value, (args, text)
        assert not TIME_WITH_FRACTION.search(text)
    node = _fields(seeded.run("node", "show", seeded.agent_id).stdout)
    assert HUMAN_TIME.fullmatch(node["attested_at"])
    # ca show: the fields, then the authorities' table under its header.
    ca = seeded.run("ca", "show").stdout.split("\n\n")
    assert ca[1].splitlines()[0].split()[:3] == ["KIND", "KID", "STATUS"]


def test_bundle_show_follows_the_output_format(seeded: Seeded) -> None:
    pem = seeded.run("bundle", "show").stdout
    assert pem == seeded.server.bundle.read_text()
    jwks = json.loads(seeded.run("-o", "json", "bundle", "show").stdout)
    assert jwks["spiffe_sequence"] >= 1
    assert yaml.safe_load(seeded.run("-o", "yaml", "bundle", "show").stdout) == jwks
    assert json.loads(seeded.run("bundle", "show", "--format", "jwks").stdout) == jwks


# -- policy diff -------------------------------------------------------------------------


def test_policy_diff_is_a_unified_diff_of_modules_and_data(seeded: Seeded) -> None:
    old, new = seeded.revisions
    plain = seeded.run("policy", "diff", old, new)
    lines = plain.stdout.splitlines()
    assert lines[:2] == ["--- a/mesh.rego", "+++ b/mesh.rego"]
    assert "+# reviewed" in lines
    # The data as sorted, indented JSON, so the one value that changed is one line.
    data = lines[lines.index("--- a/data.json") :]
    assert data[1] == "+++ b/data.json"
    assert [line for line in data if line[:1] in "+-" and line[:3] not in ("---", "+++")] == [
        "-          8443",
        "+          8443,",
        "+          9443",
    ]
    assert f"revision {old} -> {new}: mesh.rego changed, data.json changed" in plain.stderr
    assert ESC not in plain.stdout
    # On a terminal, git's colours: red removals, green additions, cyan hunk ranges.
    coloured = seeded.run("policy", "diff", old, new, color=True).stdout
    assert f"{ESC}32m+# reviewed" in coloured and f"{ESC}31m-          8443" in coloured
    assert f"{ESC}36m@@ " in coloured

    # Scripts get the same diff, computed once by the server for the API, CLI and UI.
    document = json.loads(seeded.run("-o", "json", "policy", "diff", old, new).stdout)
    api = httpx.get(
        f"{seeded.server.url}/v1/admin/policy/diff",
        params={"from": old, "to": new},
        headers={"Authorization": f"Bearer {seeded.server.token}"},
        verify=tls(seeded.server.bundle),
    ).json()
    assert document == api
    assert [(f["path"], f["status"]) for f in api["files"]] == [
        ("mesh.rego", "changed"),
        ("data.json", "changed"),
    ]
    assert api["patch"] == plain.stdout
    assert yaml.safe_load(seeded.run("-o", "yaml", "policy", "diff", old, new).stdout) == api

    same = seeded.run("policy", "diff", new, new)
    assert same.stdout == ""
    assert f"revisions {new} and {new} have the same modules and data" in same.stderr


# -- token create: a next command that runs where the user is ----------------------------

NOBODY = 65534


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_token_create_as_root_prints_the_agents_own_defaults(seeded: Seeded) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: as root the agent's defaults (/run, /var/lib) are writable")
    command = shlex.split(cli("token", "create", "--data-dir", str(seeded.server.data_dir)).stdout)
    # `trustd` when that name on PATH is this program, else the path it was started by.
    on_path = shutil.which("trustd")
    if on_path is not None and Path(on_path).samefile(TRUSTD):
        assert command[0] == "trustd"
    else:
        assert command[0] == TRUSTD
    assert command[1] == "agent"
    assert _option(command, "--socket") == "/run/trustd/agent.sock"
    assert _option(command, "--data-dir") == "/var/lib/trustd-agent"


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A home directory the unprivileged user can reach (pytest's are root's alone)."""
    with tempfile.TemporaryDirectory(prefix="trustd-user-") as name:
        home = Path(name)
        (home / "run").mkdir()
        for path in (home, home / "run"):
            os.chown(path, NOBODY, NOBODY)
        yield home


def test_token_create_for_a_user_prints_a_command_that_user_can_run(
    seeded: Seeded, nobody_home: Path
) -> None:
    """As an unprivileged user without `trustd` on PATH (a checkout's .venv/bin), the
    printed command names this executable and places that user can create; run exactly
    as printed, its agent attests. (The agent itself runs as root here: it re-executes
    the interpreter, which on this image lives under root's 0700 home.)"""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as an unprivileged user")
    home = nobody_home
    shutil.copy(seeded.server.bundle, home / "bundle.pem")
    os.chown(home / "bundle.pem", NOBODY, NOBODY)
    env = {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    remote = ["--server", seeded.server.url, "--ca-bundle", str(home / "bundle.pem")]
    created = subprocess.run(
        [*as_user, TRUSTD, "token", "create", *remote, "--token", seeded.server.token],
        env=env, capture_output=True, text=True, timeout=60, check=False, cwd=home,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    command = shlex.split(created.stdout)
    assert command[0] == TRUSTD
    assert _option(command, "--socket") == str(home / "run" / "trustd" / "agent.sock")
    assert _option(command, "--data-dir") == str(home / ".local" / "state" / "trustd-agent")
    token_id = _option(command, "--join-token").split(".")[0]
    socket_dir = Path(_option(command, "--socket")).parent
    made = subprocess.run(
        [*as_user, "mkdir", "-p", _option(command, "--data-dir"), str(socket_dir)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr

    with (home / "agent.log").open("w") as log:
        agent = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=home)
    try:
        node_id = f"spiffe://example.org/trustd/agent/join_token/{token_id}"

        def attested() -> bool:
            shown = cli("node", "list", "-o", "json", "--data-dir", str(seeded.server.data_dir))
            return node_id in {n["spiffe_id"] for n in json.loads(shown.stdout)}

        try:
            wait_for(attested, 30, "the agent started as printed to attest")
        except pytest.fail.Exception:
            pytest.fail((home / "agent.log").read_text()[-3000:])
        assert (home / "run" / "trustd" / "agent.sock").is_socket()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
