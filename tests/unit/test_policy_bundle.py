"""OPA bundle format: round trips, signatures, unsafe archives, diffs."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from pki.keys import KeyType
from policy.bundle import Bundle, diff
from policy.errors import BundleSignatureError, InvalidPolicyBundle
from tests.unit.pki_helpers import cached_key

MODULE = "package a\nimport rego.v1\nallow if input.x == data.a.want\n"


def make_bundle() -> Bundle:
    return Bundle({"a/a.rego": MODULE}, {"a": {"want": 1}}, "v1", {"owner": "ops"})


def tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as t:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_signed_round_trip() -> None:
    key = cached_key(KeyType.EC_P256)
    blob = make_bundle().to_targz(key, keyid="ops")
    read = Bundle.from_targz(blob, {"ops": key.public_key()})
    assert read == make_bundle()
    assert read.digest == make_bundle().digest


def test_data_files_land_at_their_directory() -> None:
    blob = tar(
        {
            "/x/y/data.json": b'{"z": 1}',
            "/data.json": b'{"top": true}',
            "/p.rego": b"package p\n",
            "/.manifest": b'{"revision": "7"}',
        }
    )
    read = Bundle.from_targz(blob, None, require_signature=False)
    assert read.data == {"x": {"y": {"z": 1}}, "top": True}
    assert read.revision == "7"


def test_missing_signature_is_refused_when_required() -> None:
    with pytest.raises(BundleSignatureError, match=r"no \.signatures\.json"):
        Bundle.from_targz(make_bundle().to_targz(), {})


def test_wrong_key_is_refused() -> None:
    blob = make_bundle().to_targz(cached_key(KeyType.EC_P256), keyid="ops")
    with pytest.raises(BundleSignatureError, match="does not verify"):
        Bundle.from_targz(blob, {"ops": cached_key(KeyType.EC_P256, slot=1).public_key()})
    with pytest.raises(BundleSignatureError, match="no verification key"):
        Bundle.from_targz(blob, {"other": cached_key(KeyType.EC_P256).public_key()})


def test_tampered_or_added_file_is_refused() -> None:
    key = cached_key(KeyType.EC_P256)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(make_bundle().to_targz(key)), mode="r:gz") as t:
        for member in t:
            handle = t.extractfile(member)
            assert handle is not None
            files[member.name] = handle.read()
    tampered = {**files, "/a/a.rego": MODULE.replace("want", "other").encode()}
    with pytest.raises(BundleSignatureError, match="does not match its signed hash"):
        Bundle.from_targz(tar(tampered), {"default": key.public_key()})
    added = {**files, "/b.rego": b"package b\n"}
    with pytest.raises(BundleSignatureError, match="unsigned"):
        Bundle.from_targz(tar(added), {"default": key.public_key()})
    # Re-encoding a JSON file keeps its canonical hash: still valid.
    data = json.loads(files["/data.json"])
    reformatted = {**files, "/data.json": json.dumps(data, indent=4).encode()}
    assert Bundle.from_targz(tar(reformatted), {"default": key.public_key()}).data == data


def test_hmac_signatures_are_refused() -> None:
    import jwt

    blob = tar(
        {
            "/p.rego": b"package p\n",
            "/.signatures.json": json.dumps(
                {"signatures": [jwt.encode({"files": []}, "k" * 32, algorithm="HS256")]}
            ).encode(),
        }
    )
    with pytest.raises(BundleSignatureError):
        Bundle.from_targz(blob, {"default": "k" * 32})


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"/../evil.rego": b"package e\n"}, "escapes"),
        ({"/data.json": b"[1]"}, "JSON object"),
        ({"/a/data.json": b"{", "/p.rego": b""}, "not JSON"),
    ],
)
def test_malformed_bundles(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(InvalidPolicyBundle, match=message):
        Bundle.from_targz(tar(files), None, require_signature=False)


def test_not_a_tarball() -> None:
    with pytest.raises(InvalidPolicyBundle, match="not a gzipped tar"):
        Bundle.from_targz(b"hello", None, require_signature=False)


def test_diff() -> None:
    old = make_bundle()
    new = Bundle(
        {"a/a.rego": MODULE.replace("== data", "!= data"), "b.rego": "package b\n"},
        {"a": {"want": 2}, "b": {}},
    )
    changes = diff(old, new)
    assert changes["modules"]["added"] == ["b.rego"]
    assert "-allow if input.x == data.a.want" in changes["modules"]["changed"]["a/a.rego"]
    assert changes["data"] == {"added": ["b"], "removed": [], "changed": ["a"]}


def test_diff_is_unified_for_modules_and_for_the_data() -> None:
    old = Bundle(
        {"a.rego": "package a\n\nx := 1\n", "gone.rego": "package gone\n"},
        {"mesh": {"allow": [{"name": "r", "ports": [80]}]}, "z": 1},
    )
    new = Bundle(
        {"a.rego": "package a\n\nx := 2\n", "new.rego": "package new\n"},
        {"mesh": {"allow": [{"name": "r", "ports": [80, 443]}]}, "z": 1},
    )
    changes = diff(old, new)
    files = {f["path"]: f for f in changes["files"]}
    assert [(f["path"], f["status"]) for f in changes["files"]] == [
        ("a.rego", "changed"),
        ("gone.rego", "removed"),
        ("new.rego", "added"),
        ("data.json", "changed"),
    ]
    assert files["a.rego"]["diff"].splitlines()[:2] == ["--- a/a.rego", "+++ b/a.rego"]
    assert "-x := 1" in files["a.rego"]["diff"] and "+x := 2" in files["a.rego"]["diff"]
    # Added and removed modules diff against /dev/null, as git shows them.
    assert files["new.rego"]["diff"].splitlines()[:2] == ["--- /dev/null", "+++ b/new.rego"]
    assert "+package new" in files["new.rego"]["diff"]
    assert files["gone.rego"]["diff"].splitlines()[:2] == ["--- a/gone.rego", "+++ /dev/null"]
    # The data as sorted, indented JSON: the one value added is one line.
    data = files["data.json"]["diff"].splitlines()
    assert data[:2] == ["--- a/data.json", "+++ b/data.json"]
    assert [line for line in data[2:] if line[:1] in "+-"] == [
        "-          80",
        "+          80,",
        "+          443",
    ]
    assert changes["patch"] == "".join(f["diff"] for f in changes["files"])
    assert changes["data"] == {"added": [], "removed": [], "changed": ["mesh"]}
    assert diff(new, new)["files"] == [] and diff(new, new)["patch"] == ""
