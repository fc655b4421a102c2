"""The identifier policy engine on a thread of its own.

An embedded Rego engine must be created, used and dropped on one thread (regorus objects are
unsendable; dropping one elsewhere raises). Requests run on a thread pool, so decisions are
handed to one dedicated thread that owns the engine for its whole life and drops it when the
owner is garbage-collected. The engine holds the GIL while it evaluates anyway: one thread
per process loses nothing, and decisions scale with processes.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from policy.engine import EmbeddedEngine

_Job = tuple[str, Any, "Future[Any]"] | None


def _serve(jobs: queue.SimpleQueue[_Job], engine: EmbeddedEngine) -> None:
    while (job := jobs.get()) is not None:
        rule, data, future = job
        try:
            future.set_result(engine.evaluate(rule, data))
        except Exception as exc:
            future.set_exception(exc)
    # `engine` goes out of scope here, on the thread that created it.


def _start(
    jobs: queue.SimpleQueue[_Job],
    modules: Mapping[str, str],
    data: Mapping[str, Any],
    ready: Future[None],
) -> None:
    try:
        engine = EmbeddedEngine(modules, data)
    except Exception as exc:
        ready.set_exception(exc)
        return
    ready.set_result(None)
    _serve(jobs, engine)


def _stop(jobs: queue.SimpleQueue[_Job], thread: threading.Thread) -> None:
    jobs.put(None)
    # Also at interpreter exit: let the thread drop its engine before the runtime goes.
    thread.join(5)


class ThreadBoundPolicy:
    """A `PolicyEngine` whose embedded engine lives on one dedicated thread."""

    def __init__(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> None:
        """Raises:
        PolicyCompileError: a module does not compile.
        """
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        ready: Future[None] = Future()
        thread = threading.Thread(
            target=_start,
            args=(self._jobs, dict(modules), dict(data), ready),
            name="trustd-acme-policy",
            daemon=True,
        )
        thread.start()
        ready.result()
        weakref.finalize(self, _stop, self._jobs, thread)

    def evaluate(self, rule: str, input: Any) -> Any:
        """Raises:
        PolicyEvaluationError: the evaluation failed.
        """
        future: Future[Any] = Future()
        self._jobs.put((rule, input, future))
        return future.result()
