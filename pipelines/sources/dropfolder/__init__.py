"""The drop-folder source: files that integrations (email, SFTP) leave in a local inbox.

Where files are looked for (see `pipelines.layout`): ``<root>/<TENANT>/<name...>``
and ``<root>/_operator/<name...>``, recursively. Ignored, and left where they are:
temporary names (``layout.is_temporary_name``: ``*.part``, dotfiles, ``~`` backups,
...), anything inside a dot-folder, the reserved ``_``-folders other than
``_operator``, folders that are not tenant codes, and files directly in the root (a
warning is logged once per name: a file must sit in a customer folder to say whom it
is for). Every other entry in a customer folder ends in processed, rejected or
quarantine (`pipelines.sources.refusals`): a symlink, FIFO, socket or device is
claimed without settling and never opened (quarantined ``not_a_file``); a name no
store can hold is claimed under a stand-in name (rejected ``bad_name``); a file over
the size limit is refused ``too_large`` from its ``stat``; a file that cannot be read
is read again a few times, then quarantined ``unreadable``.

How a file travels:

1. **Seen** (`tree`, `observer`). A reconciling scan (``os.scandir``, one ``stat`` per
   candidate) is the authority. The inotify reader (`inotify`, one thread; one recursive watch
   per area folder, plus the root for new folders; the reserved folders are not
   watched) only wakes the loop early and feeds the settle rule; inotify drops events silently on
   overflow, so nothing depends on an event arriving: while every area is watched
   the scan still runs, once a minute (and at once after an overflow). `drain` runs
   on scans alone.
2. **Settled.** `pipelines.sources.settle.SettleTracker` decides when the file is
   complete: its ``(size, mtime_ns, inode)`` has stayed the same across scans for
   `settle_seconds` with no write event in that time, or it was closed after
   writing (``IN_CLOSE_WRITE``) a moment ago and has not changed since; and no
   process has it open for writing, which the kernel tells (`writers`: a read
   lease), with no time limit. Where the kernel cannot tell, a write event without
   a close holds the file for `open_hold`. A writer that closes and reopens the
   file is seen by no rule but the quiet time: it should upload under a temporary
   name and rename.
3. **Claimed** (`claims`). An atomic rename, on the same file system, into
   ``_processing/<area>/<name>``; it never replaces a file there: when that name is
   still in hand the file becomes ``<name>.claim-<12 hex>`` (the `Arrival` keeps the
   original name). A rename failing with FileNotFoundError means another source
   claimed it first.
4. **Held and handed over** (`loop`). The claimed file is opened (``O_NONBLOCK |
   O_NOFOLLOW``: an entry swapped in after the scan can neither block nor redirect
   the read), checked with ``fstat`` to be a regular file, locked (``flock``,
   released by the kernel if the process dies) and checked to still be the same
   file; at most its limit + 1 bytes are read from that descriptor. If it changed
   since it was judged settled, it is renamed back to settle again. Up to
   `batch_size` files ready in one pass are held, then handed to ``on_batch``
   together (one transaction for all of them downstream), with ``key`` = the
   ``_processing/...`` key. The callback processes and archives them out of
   ``_processing/`` (or, in distributed mode, queues them for a worker that archives
   them later).
5. **Retried.** A file the callback returns as not finished, or every file of a
   batch whose callback raised (the database or the broker is down), stays in
   ``_processing/`` and is handed over again with backoff and jitter
   (`pipelines.outage`) until it is taken: the core counts its attempts and
   quarantines it once they run out. While a dependency is down only those retries
   run, and new files wait unclaimed; one line is logged when it goes away and one
   when it is back.
6. **Recovered.** `recover` (also run when the loop starts) hands over again every
   file in ``_processing/`` whose lock it can take: files left by a process that
   died. A file locked by a live holder is skipped, so two sources on one folder
   never hand over the same file at the same time.

Order: per area in name order; when several areas have files ready they take turns,
so one customer's backlog does not hold back another's files.
"""

from pipelines.sources.dropfolder.loop import DropFolderSource

__all__ = ["DropFolderSource"]
