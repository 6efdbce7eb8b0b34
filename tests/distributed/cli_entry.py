"""``python -m tests.distributed.cli_entry ...``: the airlock CLI with the distributed
commands registered (whether or not cli.main registers them itself)."""

from __future__ import annotations

from cli.distributed import register
from cli.main import app

if not any(command.name == "worker" for command in app.registered_commands):
    register(app)

if __name__ == "__main__":
    app()
