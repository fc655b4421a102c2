"""Policy engines: one protocol, evaluated by the embedded `regorus` engine.

An embedded engine object may only be used on the thread that created it, and it holds the
GIL while it evaluates: `EmbeddedEngine` keeps one prepared engine per thread and the service
scales decisions with processes, not threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import regorus

from policy.errors import PolicyCompileError, PolicyEvaluationError


class PolicyEngine(Protocol):
    def evaluate(self, rule: str, input: Any) -> Any:
        """Evaluate `rule` (`data.pkg.rule`) for `input`; None when the rule is undefined.

        Raises:
            PolicyEvaluationError: the evaluation failed.
        """
        ...


def _first_line(exc: BaseException) -> str:
    # regorus appends a native stack trace to its messages; the first lines say what is wrong.
    lines = [line for line in str(exc).splitlines() if line.strip()]
    kept = []
    for line in lines:
        if line.startswith("Stack backtrace"):
            break
        kept.append(line.strip())
    return " ".join(kept) or type(exc).__name__


# Prepared engines, per thread, keyed by what was loaded into them. An engine may only be
# dropped on the thread that made it, so they live as long as their thread does and are
# shared by every EmbeddedEngine with the same modules and data.
_PREPARED = threading.local()


class EmbeddedEngine:
    """Rego modules and data evaluated in-process, one prepared engine per thread."""

    def __init__(self, modules: Mapping[str, str], data: Mapping[str, Any] | None = None) -> None:
        self._modules = dict(modules)
        self._data = dict(data or {})
        self._key = hashlib.sha256(
            json.dumps([sorted(self._modules.items()), self._data], sort_keys=True).encode()
        ).hexdigest()
        # Compile once here so a broken module fails at load time, not at first decision.
        self._prepared()

    def _prepared(self) -> regorus.Engine:
        engines: dict[str, regorus.Engine] | None = getattr(_PREPARED, "engines", None)
        if engines is None:
            engines = _PREPARED.engines = {}
        engine = engines.get(self._key)
        if engine is None:
            engine = regorus.Engine()
            for name, source in self._modules.items():
                try:
                    engine.add_policy(name, source)
                except BaseException as exc:  # PanicException derives from BaseException
                    raise PolicyCompileError(_first_line(exc), module=name) from None
            if self._data:
                engine.add_data(self._data)
            engines[self._key] = engine
        return engine

    def evaluate(self, rule: str, input: Any) -> Any:
        engine = self._prepared()
        try:
            engine.set_input(input)
            return engine.eval_rule(rule)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise PolicyEvaluationError(_first_line(exc), rule=rule) from None
