"""The lake: every acknowledged event and catalogue write, kept where a training job can read them
(recserve.lake.layout for its paths, .sink for the exactly-once writer, .reader to read it back)."""

from recserve.lake.layout import Lake, LakeError
from recserve.lake.reader import backfill, catalogue, event_batches, export_dataset, read_events, status
from recserve.lake.sink import LakeSink

__all__ = [
    "Lake",
    "LakeError",
    "LakeSink",
    "backfill",
    "catalogue",
    "event_batches",
    "export_dataset",
    "read_events",
    "status",
]
