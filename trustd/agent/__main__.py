"""The agent process: `trustd agent` parses and checks its options, then execs
`python -m trustd.agent` with the config in the environment. The agent runs for as long as
the node does, and a fresh interpreter holds only what it needs, not the command line's
parser stack (typer, click, rich, pydantic: about 12 MB on every node)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from pki.clock import SystemClock
from pki.errors import TrustdError
from trustd.agent.config import CONFIG_ENV, AgentConfig
from trustd.agent.main import run_agent
from trustd.logs import configure_logging


def main() -> None:
    # Popped: the join token in it must not reach anything the agent starts.
    raw = os.environ.pop(CONFIG_ENV, None)
    if raw is None:
        sys.exit("error: start the agent with `trustd agent` (see `trustd agent --help`)")
    options = json.loads(raw)
    # Short lines when a person runs it in a terminal, JSON lines under a service manager.
    configure_logging(options["log_level"], "auto")
    try:
        asyncio.run(run_agent(AgentConfig.from_json(options["config"]), SystemClock()))
    except TrustdError as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
