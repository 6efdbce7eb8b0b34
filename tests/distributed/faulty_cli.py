"""``python -m tests.distributed.faulty_cli ...``: the airlock command line with the faults
of `tests.distributed.faults` installed first (chosen by ``FAULTS_*`` variables), so a
real ``airlock run`` or ``airlock watch`` process fails where a test asks it to."""

from __future__ import annotations

import tests.distributed.faults  # noqa: F401 - installs the faults before a command runs
from tests.distributed.cli_entry import app

if __name__ == "__main__":
    app()
