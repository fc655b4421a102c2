"""A real `trustd serve` and real `trustd agent --attestor tpm` processes on software TPMs:
the node attests without a token, an entry selecting its EK gives its workload an SVID, a
TPM with another EK gets nothing, one of another manufacturer is refused, a replayed answer
is refused and audited, and an evicted node attests again on restart with its TPM alone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from pki.ca import fingerprint_sha256, load_pem_certificates
from pki.csr import create_csr
from pki.errors import KeyUnavailable
from pki.keys import KeyType, generate_private_key
from pki.keys.tpm import TpmKey
from tests.integration.conftest import TRUSTD, Running, start_server, tls
from tests.tpm_support import SwTpm, new_ca, new_tpm
from trustd.agent.tpm import TpmSession
from trustd.attestation.base import b64url_decode
from trustd.attestation.tpm import ek_pubhash

pytestmark = [pytest.mark.integration]

CLIENT = str(Path(__file__).with_name("workload_client.py"))
TD = "spiffe://example.org"
SERVER_ID = f"{TD}/trustd/server"


@dataclass
class Lab:
    server: Running
    tpms: dict[str, SwTpm]
    hashes: dict[str, str]
    work: Path

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """An admin API call (the CLI costs an interpreter start per call)."""
        response = httpx.request(
            method,
            f"{self.server.url}{path}",
            headers={"Authorization": f"Bearer {self.server.token}"},
            verify=tls(self.server.bundle),
            timeout=30,
            **kwargs,
        )
        assert response.is_success, response.text
        return response

    def entry(self, spiffe_id: str, parent: str, *selectors: str) -> None:
        body = {"spiffe_id": spiffe_id, "parent_id": parent, "selectors": list(selectors)}
        self.api("POST", "/v1/entries", json=body)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["spiffe_id"]: n for n in self.api("GET", "/v1/nodes").json()}

    def refusals(self) -> list[str]:
        lines = self.api("GET", "/v1/admin/audit/export").text.splitlines()
        events = [json.loads(line) for line in lines]
        return [
            e["details"]["reason"]
            for e in events
            if e["action"] == "node:agent:attestation_refused" and e["actor"] == "attestor:tpm"
        ]


def ek_hash(tpm: SwTpm) -> str:
    session = TpmSession(tpm.tcti)
    try:
        der = b64url_decode(session.evidence()["ek_cert"], "ek_cert")
    finally:
        session.close()
    return ek_pubhash(x509.load_der_x509_certificate(der))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("tpm-lab")
    ca_a, ca_b = new_ca(root / "ca-a"), new_ca(root / "ca-b")
    tpms = {
        "a1": new_tpm(root / "a1", ca_a),
        "a2": new_tpm(root / "a2", ca_a),
        "b1": new_tpm(root / "b1", ca_b),
    }
    try:
        tpms["a1"].extend(16, hashlib.sha256(b"measured boot").digest())
        hashes = {name: ek_hash(tpm) for name, tpm in tpms.items()}
        server = start_server(
            root / "var", root / "server.log", TRUSTD_TPM_EK_CA_BUNDLE=str(ca_a.bundle)
        )
        try:
            lab = Lab(server, tpms, hashes, root)
            uid = f"unix:uid:{os.getuid()}"
            # Node aliases by EK (and, for one, by a PCR value the TPM does not have).
            ek_a1 = f"tpm:ek_pubhash:{hashes['a1']}"
            lab.entry(f"{TD}/nodes/a1", SERVER_ID, ek_a1)
            lab.entry(f"{TD}/nodes/a1-golden", SERVER_ID, ek_a1, f"tpm:pcr:16:{'00' * 32}")
            lab.entry(f"{TD}/web", f"{TD}/nodes/a1", uid)
            lab.entry(f"{TD}/golden", f"{TD}/nodes/a1-golden", uid)
            yield lab
        finally:
            server.stop()
    finally:
        for tpm in tpms.values():
            tpm.stop()


@dataclass
class Agent:
    process: subprocess.Popen[str]
    socket: Path
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)

    def workload(self) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, CLIENT, "--socket", str(self.socket), "x509"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.stdout, done.stderr
        return done.returncode, json.loads(done.stdout.splitlines()[-1])


def start_agent(lab: Lab, name: str, *options: str, state: str | None = None) -> Agent:
    """`trustd agent --attestor tpm` on the TPM `name` with `options`, its state under the
    lab in `agent-<state>` (default: the TPM's name, kept across restarts); no join token."""
    state = state or name
    roots = load_pem_certificates(lab.server.bundle.read_bytes())
    log = lab.work / f"agent-{state}.log"
    with log.open("a") as out:
        process = subprocess.Popen(
            [
                TRUSTD,
                "agent",
                "--server",
                lab.server.url,
                "--ca-sha256",
                fingerprint_sha256(roots[0]),
                "--attestor",
                "tpm",
                "--tpm-device",
                lab.tpms[name].tcti,
                "--tpm-pcrs",
                "0,7,16",
                "--socket",
                str(lab.work / f"{state}.sock"),
                "--data-dir",
                str(lab.work / f"agent-{state}"),
                *options,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return Agent(process, lab.work / f"{state}.sock", log)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def svids(agent: Agent) -> list[str] | None:
    code, found = agent.workload()
    return [s["spiffe_id"] for s in found["svids"]] if code == 0 else None


def test_tpm_nodes_attest_and_entries_select_their_ek(lab: Lab) -> None:
    node_a1 = f"{TD}/trustd/agent/tpm/{lab.hashes['a1']}"
    a1 = start_agent(lab, "a1")
    a2 = start_agent(lab, "a2")
    try:
        wait_for(a1.socket.exists, 30, f"agent a1's socket; log: {a1.log.read_text()}")
        assert wait_for(lambda: svids(a1), 30, "web's SVID") == [f"{TD}/web"]

        node = lab.nodes()[node_a1]
        assert node["attestor"] == "tpm"
        assert node["agent_id"] == lab.hashes["a1"]
        assert f"tpm:ek_pubhash:{lab.hashes['a1']}" in node["selectors"]
        assert "tpm:ek_cert_issuer:CN=swtpm-localca" in node["selectors"]
        pcrs = [s for s in node["selectors"] if s.startswith("tpm:pcr:")]
        assert len(pcrs) == 3
        assert f"tpm:pcr:16:{'00' * 32}" not in pcrs

        # Another TPM of the same manufacturer attests, as another node, and gets nothing.
        wait_for(a2.socket.exists, 30, f"agent a2's socket; log: {a2.log.read_text()}")
        assert f"{TD}/trustd/agent/tpm/{lab.hashes['a2']}" in lab.nodes()
        code, refused = a2.workload()
        assert code == 3, refused
        assert "PERMISSION_DENIED" in json.dumps(refused).upper()

        # Evicted, the agent stops; started again it attests with its TPM, no token.
        lab.api("POST", "/v1/nodes/evict", json={"spiffe_id": node_a1})
        assert a1.process.wait(30) != 0
        assert lab.nodes()[node_a1]["status"] == "evicted"
        a1 = start_agent(lab, "a1")
        wait_for(a1.socket.exists, 30, f"agent a1's socket again; log: {a1.log.read_text()}")
        assert wait_for(lambda: svids(a1), 30, "web's SVID again") == [f"{TD}/web"]
        assert lab.nodes()[node_a1]["status"] == "active"
    finally:
        a1.stop()
        a2.stop()


def test_a_tpm_of_another_manufacturer_is_refused_and_audited(lab: Lab) -> None:
    before = lab.nodes()
    agent = start_agent(lab, "b1")
    try:
        assert agent.process.wait(60) != 0
    finally:
        agent.stop()
    assert "EK certificate is not trusted" in agent.log.read_text()
    assert any("EK certificate is not trusted" in r for r in lab.refusals())
    assert lab.nodes() == before


def test_a_replayed_answer_is_refused_and_audited(lab: Lab) -> None:
    client = httpx.Client(base_url=lab.server.url, verify=tls(lab.server.bundle))
    session = TpmSession(lab.tpms["a2"].tcti)
    try:
        challenge = client.post(
            "/v1/attest/challenge", json={"attestor": "tpm", "evidence": session.evidence()}
        )
        assert challenge.status_code == 200, challenge.text
        answer = session.answer(challenge.json(), (0, 16))
    finally:
        session.close()

    def attest(evidence: dict[str, Any]) -> httpx.Response:
        csr = create_csr(generate_private_key(KeyType.EC_P256))
        body = {"attestor": "tpm", "evidence": evidence, "csr": csr}
        return client.post("/v1/attest", json=body)

    # A quote over other values than the TPM's PCRs: refused, and the answer not consumed.
    lied = attest({**answer, "pcrs": {**answer["pcrs"], "0": "ab" * 32}})
    assert lied.status_code in (400, 401, 403), lied.text
    assert lied.headers["content-type"].startswith("application/problem+json")
    before = lab.nodes()
    first = attest(answer)
    assert first.status_code == 201, first.text
    assert first.json()["spiffe_id"] == f"{TD}/trustd/agent/tpm/{lab.hashes['a2']}"
    after_first = lab.nodes()
    replayed = attest(answer)
    assert replayed.status_code in (400, 401, 403), replayed.text
    assert "already answered" in replayed.json()["detail"]
    # Nothing changed: the node keeps the key of the first attestation.
    assert lab.nodes() == after_first
    assert set(after_first) == set(before) | {first.json()["spiffe_id"]}
    reasons = lab.refusals()
    assert any("already answered" in r for r in reasons)
    assert any("do not match the quoted digest" in r for r in reasons)
    client.close()


def test_a_node_key_in_the_tpm_does_not_move_with_the_data_directory(lab: Lab) -> None:
    node_a1 = f"{TD}/trustd/agent/tpm/{lab.hashes['a1']}"
    a1 = start_agent(lab, "a1", "--node-key", "tpm", state="a1-held")
    try:
        wait_for(a1.socket.exists, 30, f"agent a1's socket; log: {a1.log.read_text()}")
        # The agent syncs (every call carries a credential the TPM signed) and serves.
        assert wait_for(lambda: svids(a1), 30, "web's SVID") == [f"{TD}/web"]
    finally:
        a1.stop()
    held = lab.work / "agent-a1-held"
    assert (held / "node-key.tpm").exists()
    assert not (held / "node-key.pem").exists()
    blob = (held / "node-key.tpm").read_bytes()
    node_svid = load_pem_certificates((held / "node.pem").read_bytes())[0]
    assert TpmKey.from_blob(lab.tpms["a1"].tcti, blob).public_key() == node_svid.public_key()
    with pytest.raises(KeyUnavailable, match="does not load this key"):
        TpmKey.from_blob(lab.tpms["a2"].tcti, blob)
    serial = lab.nodes()[node_a1]["svid_serial"]

    # Restarted on its own machine, the agent loads the key from its TPM: no attestation.
    a1 = start_agent(lab, "a1", "--node-key", "tpm", state="a1-held")
    try:
        assert wait_for(lambda: a1.socket.exists() and svids(a1), 30, "SVID") == [f"{TD}/web"]
    finally:
        a1.stop()
    assert a1.log.read_text().count('"attested"') == 1
    assert lab.nodes()[node_a1]["svid_serial"] == serial

    # The data directory copied to the machine of TPM a2: the key does not load there, so
    # that agent attests as its own node and a1's node is untouched.
    shutil.copytree(held, lab.work / "agent-a2-copy")
    a2 = start_agent(lab, "a2", "--node-key", "tpm", state="a2-copy")
    try:
        wait_for(a2.socket.exists, 30, f"agent a2's socket; log: {a2.log.read_text()}")
        code, refused = a2.workload()
        assert code == 3, refused
    finally:
        a2.stop()
    assert "node_key_not_in_this_tpm" in a2.log.read_text()
    nodes = lab.nodes()
    assert nodes[node_a1]["svid_serial"] == serial
    copied = load_pem_certificates((lab.work / "agent-a2-copy" / "node.pem").read_bytes())[0]
    assert f"tpm/{lab.hashes['a2']}" in str(
        copied.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
