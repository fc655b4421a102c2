"""Selectors: `type:value` facts about a node or workload that registration entries match on.

The type is the attestor that vouches for the fact (`unix`, `k8s_psat`, `join_token`, ...);
the value is the attestor's own syntax and may itself contain colons (`unix:uid:1000`).
An entry applies to a caller when every selector of the entry is among the caller's
selectors (SPIRE's subset match).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pki.errors import InvalidSelector, echo

_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_VALUE_LENGTH = 1024


@dataclass(frozen=True, order=True)
class Selector:
    type: str
    value: str

    def __post_init__(self) -> None:
        if not _TYPE.match(self.type):
            raise InvalidSelector(
                "selector type must be lowercase letters, digits or '_', starting with a "
                f"letter, at most 32 characters: {echo(self.type)}"
            )
        if not self.value:
            raise InvalidSelector(f"selector {self.type!r} has an empty value")
        if len(self.value) > MAX_VALUE_LENGTH:
            raise InvalidSelector(f"selector value longer than {MAX_VALUE_LENGTH} characters")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.value):
            raise InvalidSelector(f"selector value has control characters: {echo(self.value)}")

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse `type:value`.

        Raises:
            InvalidSelector: no colon, or an invalid type or value.
        """
        selector_type, sep, value = text.partition(":")
        if not sep:
            raise InvalidSelector(f"selector must be type:value, got {echo(text)}")
        return cls(selector_type, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def parse_selectors(texts: Iterable[str]) -> frozenset[Selector]:
    """Parse many selectors.

    Raises:
        InvalidSelector: any of them is invalid; the message names it.
    """
    return frozenset(Selector.parse(t) for t in texts)


def matches(required: Iterable[Selector], present: frozenset[Selector]) -> bool:
    """Whether every required selector is present (an entry with no selectors matches none)."""
    required = frozenset(required)
    return bool(required) and required <= present
