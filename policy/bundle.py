"""Policy bundles in OPA's format: Rego modules, data and a manifest, optionally signed.

Layout (OPA "Bundle File Format"): a gzipped tarball of `*.rego` modules, `data.json` files
whose directory is their place in `data`, a `.manifest` (`revision`, `roots`, `metadata`)
and `.signatures.json`, a JWS whose payload lists every other file with its SHA-256 (OPA
"Signing"). JSON files are hashed in canonical form (sorted keys, no whitespace), as OPA
does, so re-encoding the same data does not break a signature.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import io
import json
import posixpath
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from policy.errors import BundleSignatureError, InvalidModuleId, InvalidPolicyBundle

MAX_BUNDLE_BYTES = 32 * 1024 * 1024
MAX_FILES = 1000
# Asymmetric only: a bundle is never verified with a shared secret, never with `none`.
SIGNING_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
_MANIFEST = ".manifest"
_SIGNATURES = ".signatures.json"


MAX_MODULE_ID = 256
# One path segment: portable file-name characters (POSIX "Portable Filename Character Set"),
# not starting with a dot, so neither `.`, `..`, a hidden file nor the bundle's own
# `.manifest` and `.signatures.json` can be named.
_SEGMENT_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_SEGMENT = re.compile(_SEGMENT_PATTERN + r"\Z")
# The same rule as one regular expression, for forms and schemas that check it first.
MODULE_ID_PATTERN = rf"^{_SEGMENT_PATTERN}(/{_SEGMENT_PATTERN})*$"
# Names the bundle format gives a meaning of its own (OPA "Bundle File Format": data files).
_RESERVED_BASENAMES = frozenset({"data.json", "data.yaml", "data.yml"})


@dataclass(frozen=True)
class ModuleId:
    """A policy id (OPA Policy API `/v1/policies/<id>`) and the module's file name in a
    bundle: a relative path of portable segments that cannot leave the bundle's root.

    OPA itself takes any string as an id and uses it as a file name when it writes bundles;
    trustd accepts only what is safe as a path on every platform.
    """

    value: str

    def __post_init__(self) -> None:
        text = self.value
        if not 0 < len(text) <= MAX_MODULE_ID:
            raise InvalidModuleId(
                f"policy id {text[:64]!r}: 1 to {MAX_MODULE_ID} characters", id=text[:64]
            )
        segments = text.split("/")
        if not all(_SEGMENT.match(s) for s in segments):
            raise InvalidModuleId(
                f"policy id {text[:64]!r}: '/'-separated names of letters, digits, '_', '-' "
                "and '.', none empty or starting with '.'",
                id=text[:64],
            )
        if segments[-1] in _RESERVED_BASENAMES:
            raise InvalidModuleId(f"policy id {text!r}: names a data file", id=text)

    @classmethod
    def parse(cls, text: str) -> ModuleId:
        """Raises:
        InvalidModuleId: `text` is not a safe policy id.
        """
        return cls(text)

    def __str__(self) -> str:
        return self.value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _file_hash(name: str, content: bytes) -> str:
    if name.endswith(".json") or posixpath.basename(name) == _MANIFEST:
        try:
            content = canonical_json(json.loads(content)).encode()
        except ValueError as exc:
            raise InvalidPolicyBundle(f"{name} is not JSON: {exc}") from None
    return hashlib.sha256(content).hexdigest()


def _merge(data: dict[str, Any], path: list[str], value: Any, name: str) -> None:
    if not path:
        if not isinstance(value, dict):
            raise InvalidPolicyBundle(f"{name}: a root data.json must hold a JSON object")
        for key, item in value.items():
            _merge(data, [key], item, name)
        return
    node = data
    for segment in path[:-1]:
        child = node.setdefault(segment, {})
        if not isinstance(child, dict):
            raise InvalidPolicyBundle(f"{name}: data path {'/'.join(path)} overlaps a value")
        node = child
    if path[-1] in node:
        existing = node[path[-1]]
        if isinstance(existing, dict) and isinstance(value, dict):
            for key, item in value.items():
                _merge(existing, [key], item, name)
            return
        raise InvalidPolicyBundle(f"{name}: data path {'/'.join(path)} is defined twice")
    node[path[-1]] = value


@dataclass(frozen=True)
class Bundle:
    """Modules by file name, the merged data document, and the manifest's fields."""

    modules: dict[str, str]
    data: dict[str, Any] = field(default_factory=dict)
    revision: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Every way a bundle is made (API, import, UI, CLI, a stored revision) names its
        # modules through here, so no module can be written outside the bundle's root.
        for name in self.modules:
            ModuleId.parse(name)

    @classmethod
    def from_files(
        cls,
        modules: Mapping[str, str],
        data_files: Mapping[str, bytes],
        revision: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> Bundle:
        """Raises:
        InvalidPolicyBundle: a data file is not JSON or two files define one data path.
        """
        data: dict[str, Any] = {}
        for name, content in sorted(data_files.items()):
            try:
                value = json.loads(content)
            except ValueError as exc:
                raise InvalidPolicyBundle(f"{name} is not JSON: {exc}") from None
            directory = posixpath.dirname(name.lstrip("/"))
            _merge(data, [p for p in directory.split("/") if p], value, name)
        return cls(dict(modules), data, revision, dict(metadata or {}))

    @property
    def digest(self) -> str:
        """SHA-256 over the modules and data: equal digests evaluate identically."""
        return hashlib.sha256(
            canonical_json({"modules": self.modules, "data": self.data}).encode()
        ).hexdigest()

    def _files(self) -> dict[str, bytes]:
        files = {name: source.encode() for name, source in self.modules.items()}
        files["data.json"] = canonical_json(self.data).encode()
        manifest: dict[str, Any] = {"revision": self.revision, "roots": [""]}
        if self.metadata:
            manifest["metadata"] = self.metadata
        files[_MANIFEST] = canonical_json(manifest).encode()
        return files

    def to_targz(self, signing_key: Any = None, keyid: str = "default") -> bytes:
        """The bundle as OPA reads it; signed when `signing_key` (a private key) is given."""
        files = self._files()
        if signing_key is not None:
            payload = {
                "files": [
                    {"name": name, "hash": _file_hash(name, content), "algorithm": "SHA-256"}
                    for name, content in sorted(files.items())
                ],
                "keyid": keyid,
            }
            algorithm = _algorithm_for(signing_key)
            token = jwt.encode(payload, signing_key, algorithm=algorithm, headers={"kid": keyid})
            files[_SIGNATURES] = json.dumps({"signatures": [token]}).encode()
        buffer = io.BytesIO()
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w") as tar,
        ):
            for name, content in sorted(files.items()):
                info = tarfile.TarInfo(_member_name(name))
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    @classmethod
    def from_targz(
        cls, blob: bytes, keys: Mapping[str, Any] | None, *, require_signature: bool = True
    ) -> Bundle:
        """Read and, with `keys` (keyid -> public key), verify a bundle.

        Raises:
            InvalidPolicyBundle: not a gzipped tarball, unsafe member names, too large, or
                a bad manifest or data file.
            BundleSignatureError: the signature is missing (when required), does not verify
                with a configured key, or does not cover exactly the bundle's files.
        """
        files = _read_tar(blob)
        signatures = files.pop(_SIGNATURES, None)
        if signatures is None:
            if require_signature:
                raise BundleSignatureError(
                    "the bundle has no .signatures.json; sign it (opa build --signing-key) "
                    "or import it with signatures not required"
                )
        else:
            _verify_signatures(signatures, files, keys or {})
        manifest: dict[str, Any] = {}
        if _MANIFEST in files:
            try:
                manifest = json.loads(files.pop(_MANIFEST))
            except ValueError as exc:
                raise InvalidPolicyBundle(f".manifest is not JSON: {exc}") from None
            if not isinstance(manifest, dict):
                raise InvalidPolicyBundle(".manifest must be a JSON object")
        modules = {}
        data_files = {}
        for name, content in files.items():
            if name.endswith(".rego"):
                try:
                    modules[name] = content.decode()
                except UnicodeDecodeError:
                    raise InvalidPolicyBundle(f"{name} is not UTF-8") from None
            elif posixpath.basename(name) == "data.json":
                data_files[name] = content
        return cls.from_files(
            modules,
            data_files,
            str(manifest.get("revision", "")),
            manifest.get("metadata") if isinstance(manifest.get("metadata"), dict) else None,
        )


def _algorithm_for(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ES384" if key.curve.name == "secp384r1" else "ES256"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise BundleSignatureError(f"cannot sign bundles with a {type(key).__name__}")


def _member_name(name: str) -> str:
    """The tar member name of bundle file `name`: `/`-rooted as `opa build` writes them, and
    never one that leaves the root once normalised (a reader extracting it would write
    outside its directory: CWE-22)."""
    member = "/" + name
    if posixpath.normpath(member) != member or ".." in name.split("/"):
        raise InvalidPolicyBundle(f"{name!r}: not a file name inside the bundle")
    return member


def _read_tar(blob: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidPolicyBundle(f"{member.name}: only regular files are allowed")
                name = posixpath.normpath("/" + member.name).lstrip("/")
                if ".." in member.name.split("/") or not name:
                    raise InvalidPolicyBundle(f"{member.name}: path escapes the bundle")
                total += member.size
                if total > MAX_BUNDLE_BYTES or len(files) >= MAX_FILES:
                    raise InvalidPolicyBundle(
                        f"bundle larger than {MAX_BUNDLE_BYTES} bytes or {MAX_FILES} files"
                    )
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidPolicyBundle(f"not a gzipped tar bundle: {exc}") from None
    return files


def _verify_signatures(raw: bytes, files: dict[str, bytes], keys: Mapping[str, Any]) -> None:
    try:
        tokens = json.loads(raw)["signatures"]
        token = tokens[0]
        if len(tokens) != 1 or not isinstance(token, str):
            raise ValueError("exactly one signature is supported")
        header = jwt.get_unverified_header(token)
    except (ValueError, KeyError, IndexError, TypeError, jwt.InvalidTokenError) as exc:
        raise BundleSignatureError(f".signatures.json is malformed: {exc}") from None
    keyid = header.get("kid") or jwt.decode(token, options={"verify_signature": False}).get(
        "keyid", "default"
    )
    key = keys.get(keyid)
    if key is None:
        raise BundleSignatureError(f"no verification key configured for keyid {keyid!r}")
    try:
        payload = jwt.decode(token, key, algorithms=list(SIGNING_ALGORITHMS))
    except jwt.InvalidTokenError as exc:
        raise BundleSignatureError(f"the bundle signature does not verify: {exc}") from None
    listed = {}
    for entry in payload.get("files", []):
        if entry.get("algorithm", "SHA-256").upper() != "SHA-256":
            raise BundleSignatureError(f"{entry.get('name')}: only SHA-256 hashes are accepted")
        listed[posixpath.normpath("/" + str(entry.get("name"))).lstrip("/")] = entry.get("hash")
    # OPA: every file must be signed and every signed file must be present.
    if set(listed) != set(files):
        missing = sorted(set(files) - set(listed))
        extra = sorted(set(listed) - set(files))
        raise BundleSignatureError(
            f"the signature does not cover the bundle: unsigned {missing}, absent {extra}"
        )
    for name, content in files.items():
        if listed[name] != _file_hash(name, content):
            raise BundleSignatureError(f"{name} does not match its signed hash")


# The data document as it is diffed: sorted keys, indented, so a change in one value is a
# one-line change and the same data always reads the same.
DATA_FILE = "data.json"


def render_data(data: Any) -> str:
    """The data document as sorted, indented JSON, one value per line where it can."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def unified_diff(old: str | None, new: str | None, name: str) -> str:
    """A unified diff (the format `diff -u` and `git diff` print) of one file: `None` for a
    side where the file is absent (its header names /dev/null, as git's does)."""
    lines = difflib.unified_diff(
        (old or "").splitlines(),
        (new or "").splitlines(),
        "/dev/null" if old is None else f"a/{name}",
        "/dev/null" if new is None else f"b/{name}",
        lineterm="",
    )
    return "".join(line + "\n" for line in lines)


def diff(old: Bundle, new: Bundle) -> dict[str, Any]:
    """What changed between two bundles, for the API, the CLI and the admin UI alike:

    - `files`: one `{path, status, diff}` per module added, removed or changed, then
      `data.json` (the data document as `render_data` writes it) if the data changed,
      each with its unified diff;
    - `patch`: those diffs one after the other, as `git diff` prints them;
    - `modules` and `data`: the names added, removed and changed (top-level data keys
      for the data), and each changed module's diff under `modules.changed`."""
    names = sorted(set(old.modules) | set(new.modules))
    files: list[dict[str, str]] = []
    for name in names:
        before, after = old.modules.get(name), new.modules.get(name)
        if before == after:
            continue
        status = "added" if before is None else "removed" if after is None else "changed"
        files.append({"path": name, "status": status, "diff": unified_diff(before, after, name)})
    if old.data != new.data:
        text = unified_diff(render_data(old.data), render_data(new.data), DATA_FILE)
        files.append({"path": DATA_FILE, "status": "changed", "diff": text})
    return {
        "files": files,
        "patch": "".join(f["diff"] for f in files),
        "modules": {
            "added": [f["path"] for f in files if f["status"] == "added"],
            "removed": [f["path"] for f in files if f["status"] == "removed"],
            "changed": {
                f["path"]: f["diff"]
                for f in files
                if f["status"] == "changed" and f["path"] in new.modules
            },
        },
        "data": {
            "added": sorted(set(new.data) - set(old.data)),
            "removed": sorted(set(old.data) - set(new.data)),
            "changed": sorted(
                k for k in set(old.data) & set(new.data) if old.data[k] != new.data[k]
            ),
        },
    }
