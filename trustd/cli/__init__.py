"""The `trustd` command line: `app` assembles the command groups, one module each
(`svid`, `bundle`, `ca`, `cert`, `token`, `entry`, `node`, `policy`, `acme`, `admin`,
`serve`, `agent`); `context` holds the one connection they share; `output` prints."""

from __future__ import annotations

from trustd.cli.app import app, main

__all__ = ["app", "main"]
