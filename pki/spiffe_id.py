"""SPIFFE IDs and trust domain names (SPIFFE-ID spec §2).

Both types are frozen value objects that validate on construction, so a ``SpiffeId`` that
exists is a valid one and ``str()`` of it is the canonical form.  Parsing is strict: the
spec says the scheme and trust domain are case-insensitive (§2.4) but also that the host
MUST be lowercase (§2.1); like go-spiffe we refuse uppercase instead of folding it, so that
two spellings of one identity can never reach policy or audit.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from pki.errors import InvalidSpiffeId, InvalidTrustDomain, echo

SCHEME = "spiffe"
_PREFIX = "spiffe://"

# SPIFFE-ID §2.3: implementations SHOULD NOT generate IDs longer than 2048 bytes, and the
# host (trust domain) is limited to 255 bytes by RFC 3986.
MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

# SPIFFE-ID §2.1: trust domain host contains only [a-z0-9.-_].
_TD_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
# SPIFFE-ID §2.2: path segments contain only [a-zA-Z0-9.-_].
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


def _utf8_length(text: str) -> int:
    """Bytes of *text* in UTF-8 (SPIFFE-ID §2.3 limits are in bytes).

    A lone surrogate has no UTF-8 form; it is counted as its three-byte encoding so that the
    length check never raises: the character rules that follow refuse it with the usual error.
    """
    return len(text.encode("utf-8", "surrogatepass"))


def _trust_domain_problem(name: str) -> str | None:
    """Return why *name* is not a valid trust domain name, or None if it is."""
    if not name:
        return "trust domain is empty"
    if _utf8_length(name) > MAX_TRUST_DOMAIN_BYTES:
        return f"trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
    # SPIFFE-ID §2.1: userinfo and port MUST be empty and ':' MUST NOT be present.
    if name.startswith("["):
        # SPIFFE-ID §2.1: the character set excludes IPv6 literals.
        return "trust domain must not be an IPv6 address"
    if "@" in name:
        return "trust domain must not contain userinfo ('@')"
    if ":" in name:
        return "trust domain must not contain a port (':')"
    if "%" in name:
        return "trust domain must not contain percent-encoded characters"
    if any(c.isupper() for c in name):
        return "trust domain must be lowercase"
    bad = sorted({c for c in name if c not in _TD_CHARS})
    if bad:
        return f"trust domain contains characters outside [a-z0-9.-_]: {''.join(bad)!r}"
    return None


@dataclass(frozen=True)
class TrustDomain:
    """A SPIFFE trust domain name such as ``example.org``."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InvalidTrustDomain(
                f"trust domain must be a string, got {type(self.name).__name__}",
                value=echo(self.name),
            )
        problem = _trust_domain_problem(self.name)
        if problem is not None:
            raise InvalidTrustDomain(f"{problem}: {echo(self.name)}", value=echo(self.name))

    @classmethod
    def parse(cls, s: str) -> TrustDomain:
        """Parse ``example.org`` or ``spiffe://example.org``.

        Raises:
            InvalidTrustDomain: *s* is not a valid trust domain name or trust domain ID.
        """
        if not isinstance(s, str):
            raise InvalidTrustDomain(
                f"trust domain must be a string, got {type(s).__name__}", value=echo(s)
            )
        if "://" in s:
            scheme, _, rest = s.partition("://")
            if scheme.lower() != SCHEME:
                raise InvalidTrustDomain(
                    f"trust domain must be a bare name or spiffe://<name>: {echo(s)}",
                    value=echo(s),
                )
            if scheme != SCHEME:
                raise InvalidTrustDomain(
                    f"scheme must be lowercase 'spiffe': {echo(s)}", value=echo(s)
                )
            if any(c in rest for c in "/?#"):
                raise InvalidTrustDomain(
                    f"trust domain ID must not have a path, query or fragment: {echo(s)}",
                    value=echo(s),
                )
            s = rest
        return cls(s)

    def id_string(self) -> str:
        """The trust domain's own SPIFFE ID, e.g. ``spiffe://example.org``."""
        return _PREFIX + self.name

    def spiffe_id(self) -> SpiffeId:
        """The trust domain's own SPIFFE ID (empty path) as a value object."""
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


def _path_problem(path: str) -> str | None:
    """Return why *path* is not a valid SPIFFE ID path, or None if it is."""
    if path == "":
        return None
    if not path.startswith("/"):
        return "path must be empty or start with '/'"
    if "?" in path:
        return "SPIFFE ID must not contain a query"
    if "#" in path:
        return "SPIFFE ID must not contain a fragment"
    # SPIFFE-ID §2.2: no trailing '/', no empty, '.' or '..' segments, no percent-encoding,
    # and segments use only [a-zA-Z0-9.-_].
    if path.endswith("/"):
        return "path must not have a trailing '/'"
    for segment in path[1:].split("/"):
        if segment == "":
            return "path must not contain empty segments ('//')"
        if segment in (".", ".."):
            return f"path must not contain relative segment {segment!r}"
        if "%" in segment:
            return "path must not contain percent-encoded characters"
        bad = sorted({c for c in segment if c not in _PATH_CHARS})
        if bad:
            return f"path segment contains characters outside [a-zA-Z0-9.-_]: {''.join(bad)!r}"
    return None


@dataclass(frozen=True)
class SpiffeId:
    """A SPIFFE ID: a trust domain plus a path that is ``""`` or ``/seg[/seg...]``."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise InvalidSpiffeId(
                f"trust_domain must be a TrustDomain, got {type(self.trust_domain).__name__}",
                value=echo(self.trust_domain),
            )
        if not isinstance(self.path, str):
            raise InvalidSpiffeId(
                f"path must be a string, got {type(self.path).__name__}", value=echo(self.path)
            )
        problem = _path_problem(self.path)
        if problem is not None:
            raise InvalidSpiffeId(f"{problem}: {echo(self.path)}", value=echo(self.path))
        text = str(self)
        # SPIFFE-ID §2.3: never produce an ID longer than 2048 bytes.
        if _utf8_length(text) > MAX_SPIFFE_ID_BYTES:
            raise InvalidSpiffeId(
                f"SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes: {echo(text)}",
                value=echo(text),
            )

    @classmethod
    def parse(cls, s: str) -> SpiffeId:
        """Parse a SPIFFE ID such as ``spiffe://example.org/ns/prod/sa/web``.

        Raises:
            InvalidSpiffeId: *s* breaks a SPIFFE-ID §2 rule; the detail names the rule.
        """
        if not isinstance(s, str):
            raise InvalidSpiffeId(
                f"SPIFFE ID must be a string, got {type(s).__name__}", value=echo(s)
            )

        def fail(reason: str) -> InvalidSpiffeId:
            return InvalidSpiffeId(f"{reason}: {echo(s)}", value=echo(s))

        if s == "":
            raise fail("SPIFFE ID is empty")
        if _utf8_length(s) > MAX_SPIFFE_ID_BYTES:
            raise fail(f"SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")
        if not s.startswith(_PREFIX):
            if s[: len(_PREFIX)].lower() == _PREFIX:
                # SPIFFE-ID §2: the scheme is 'spiffe'; we accept only the canonical case.
                raise fail("scheme must be lowercase 'spiffe'")
            raise fail("scheme must be 'spiffe://'")
        rest = s[len(_PREFIX) :]
        # SPIFFE-ID §2: a SPIFFE ID MUST NOT include a query or fragment component.
        if "?" in rest:
            raise fail("SPIFFE ID must not contain a query")
        if "#" in rest:
            raise fail("SPIFFE ID must not contain a fragment")
        authority, slash, tail = rest.partition("/")
        if authority == "":
            raise fail("trust domain is missing")
        problem = _trust_domain_problem(authority)
        if problem is not None:
            raise fail(problem)
        path = slash + tail
        problem = _path_problem(path)
        if problem is not None:
            raise fail(problem)
        return cls(TrustDomain(authority), path)

    @classmethod
    def from_parts(cls, trust_domain: TrustDomain | str, path: str) -> SpiffeId:
        """Build a SPIFFE ID from a trust domain (object or name) and a path.

        Raises:
            InvalidTrustDomain: *trust_domain* is a string that is not a valid name.
            InvalidSpiffeId: *path* is not ``""`` or a valid ``/``-prefixed path.
        """
        td = (
            trust_domain
            if isinstance(trust_domain, TrustDomain)
            else TrustDomain.parse(trust_domain)
        )
        return cls(td, path)

    def is_member_of(self, trust_domain: TrustDomain) -> bool:
        """Whether this ID lives in *trust_domain*."""
        return self.trust_domain == trust_domain

    def require_member_of(self, trust_domain: TrustDomain) -> None:
        """Insist that this ID lives in *trust_domain*.

        Raises:
            InvalidSpiffeId: the ID belongs to another trust domain.
        """
        if not self.is_member_of(trust_domain):
            raise InvalidSpiffeId(
                f"SPIFFE ID {echo(str(self))} is not a member of trust domain "
                f"{echo(trust_domain.name)}",
                value=echo(str(self)),
                trust_domain=trust_domain.name,
            )

    @property
    def is_trust_domain_id(self) -> bool:
        """Whether this is the trust domain's own ID (no path)."""
        return self.path == ""

    def __str__(self) -> str:
        return _PREFIX + self.trust_domain.name + self.path
