"""Bulk archives: expand → job rows → chunks → report, the same code in both modes.

`importer` checks an archive and registers its members chunk by chunk, `chunks`
applies them (through `handler.apply_jobs`, like every other file), `state` keeps the
batch's progress on its row, and `report` writes the report once every member is
finished and archives the archive file.
"""

from pipelines.bulk.chunks import BulkEnv, BulkParts, ChunkResult, ChunkSink, run_chunk
from pipelines.bulk.importer import (
    InlineSink,
    ProgressCallback,
    handle_archive,
    import_archive,
    is_bulk,
)
from pipelines.bulk.lease import LeaseLost
from pipelines.bulk.report import finish_batch, member_rows, redeliver_report, reject_batch
from pipelines.bulk.state import (
    CLAIM_MARK,
    FINAL_BATCH,
    BatchResult,
    archive_name,
    batch_result,
    manifest_key,
    report_keys,
    update_progress,
)

__all__ = ["CLAIM_MARK", "FINAL_BATCH", "BatchResult", "BulkEnv", "BulkParts", "ChunkResult",
           "ChunkSink", "InlineSink", "LeaseLost", "ProgressCallback", "archive_name",
           "batch_result", "finish_batch",
           "handle_archive", "import_archive", "is_bulk", "manifest_key", "member_rows",
           "redeliver_report", "reject_batch", "report_keys", "run_chunk",
           "update_progress"]
