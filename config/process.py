"""The interpreter's settings for a long-running `airlock` process."""

from __future__ import annotations

import gc

# The cyclic collector's generation thresholds (Python's default: 700, 10, 10). A
# pass over a few hundred files allocates far more than 700 objects, nearly all freed
# by reference counting; collecting every 700 spent about 5 % of a runner's CPU.
GC_THRESHOLDS = (10_000, 20, 100)


def settle_heap() -> None:
    """Once a process has imported its modules: collect, then move every object that
    exists now into the permanent generation (`gc.freeze`: modules, classes and their
    functions live as long as the process, and a full collection would otherwise
    walk them all each time), and collect the young generations less often. Before a
    fork it also keeps the children from touching, and so copying, those pages.

    Called by the `airlock` program and the processes it starts, never on import: a
    test process keeps Python's defaults."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
