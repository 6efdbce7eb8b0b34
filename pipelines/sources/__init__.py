"""Inbox sources: a drop folder or an S3 prefix, chosen by the inbox setting."""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings
from pipelines.sources.base import OnBatch, Source
from pipelines.sources.refusals import SizeLimits
from pipelines.storage.base import Store

__all__ = ["OnBatch", "Source", "make_source"]

BATCH_SIZE = 200  # files handed over together: one transaction and one sync for all


def make_source(settings: Settings, inbox: Store, on_batch: OnBatch,
                slot: tuple[int, int] = (0, 1)) -> Source:
    """The source for the configured inbox: an S3 poller for ``s3://``, else a drop
    folder watcher (which hands over a pass's ready files together); `slot`: this
    runner's (index, count) among those sharing the drop folder."""
    location = settings.resolved_inbox
    if location.startswith("s3://"):
        from pipelines.sources.s3poller import S3Source
        from pipelines.storage.s3 import S3Store, make_sqs_client

        assert isinstance(inbox, S3Store)
        sqs = make_sqs_client(settings) if settings.sqs_queue_url else None
        return S3Source(inbox, on_batch=on_batch, poll_interval=settings.scan_interval_seconds,
                        sqs_client=sqs, queue_url=settings.sqs_queue_url,
                        limits=SizeLimits.from_settings(settings))
    from pipelines.sources.dropfolder import DropFolderSource

    return DropFolderSource(Path(location), on_batch=on_batch, batch_size=BATCH_SIZE,
                            settle_seconds=settings.settle_seconds,
                            scan_interval=settings.scan_interval_seconds,
                            limits=SizeLimits.from_settings(settings),
                            open_hold=settings.open_hold_seconds, slot=slot)
