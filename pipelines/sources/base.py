"""What every inbox source offers its caller, and what the caller hands it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from pipelines.layout import Arrival

OnBatch = Callable[[list[Arrival]], Sequence[Arrival]]
"""Takes over a batch of arrivals and returns those it could not finish now (the
source tries them again later, with backoff). Raising means none was taken (a
dependency is down): every file of the batch is tried again. A file taken but not
archived yet (distributed mode: a worker archives it later) is not returned."""


class Source(Protocol):
    """An inbox watched for arrivals, each handed to the caller's `OnBatch`."""

    def run(self, stop: threading.Event) -> None:
        """Hand over arrivals until `stop` is set, retrying failed hand-overs."""

    def drain(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Hand over what the inbox holds now; True once it is empty. False after
        `timeout` seconds, on `stop`, or as soon as the only files left are ones
        whose hand-over failed and that wait for a retry."""

    def recover(self) -> int:
        """Hand over again the files a dead or failed run left claimed; how many."""
