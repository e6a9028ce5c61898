"""The canonical tables every data source produces, and the event vocabulary."""

from __future__ import annotations

import pyarrow as pa

EVENT_TYPES = ("view", "click", "purchase", "rate")
# Implicit-feedback weight of one event of each type (a rating uses its value instead).
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "purchase": 4.0}

EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_type", pa.string()),
        ("value", pa.float32()),
        ("ts", pa.int64()),  # seconds since the epoch
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("attributes", pa.string()),  # JSON object: {"price_band": "mid", "brand": "b3", "genres": [...]}
    ]
)


class DataError(ValueError):
    """Input data is wrong; the message names the file, row or id and what to do."""
