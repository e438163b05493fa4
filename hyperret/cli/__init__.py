"""The ``hyperret`` command line: index, search, dedup, calibrate, classify, explain, eval, report, info,
presets, demo, versions, verify, repair, cleanup, export, serve, key, push, pull.

Every command calls the public library; errors a user can cause print one line
on stderr and exit with code 2. One module per command group registers its
commands on :data:`app` when imported.
"""

from __future__ import annotations

from . import (  # noqa: F401  (register the commands)
    dedup_cmds,
    demo,
    export_cmds,
    index_cmds,
    safety_cmds,
    search_cmds,
    serve_cmds,
    store_cmds,
    version_cmds,
)
from .app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
