"""The event log (base.EventLog) and the one place that builds it from config: `make_log`."""

from __future__ import annotations

from recserve.redis_client import connect
from recserve.streaming.eventlog.base import Entry, EventLog, EventLogUnavailable, partition_of

__all__ = ["Entry", "EventLog", "EventLogUnavailable", "make_log", "partition_of"]


def make_log(cfg, client=None, timeout_s: float = 10.0) -> EventLog:
    """The configured event log (`stream.backend`): Redis Streams on `client` (or cfg's Redis), or
    the Kafka topic `stream.topic` at cfg.kafka_bootstrap, with its event-id marks in that Redis.
    An unreachable broker raises EventLogUnavailable naming the setting."""
    if client is None:
        client = connect(cfg.redis_url, timeout=5)
    sc = cfg.stream
    if sc.backend == "kafka":
        from recserve.streaming.eventlog.kafka import KafkaLog

        bootstrap, setting = cfg.kafka_source
        return KafkaLog(
            bootstrap, topic=sc.topic, partitions=sc.partitions, dedup=client, timeout_s=timeout_s, setting=setting
        )
    from recserve.streaming.eventlog.redis import RedisStreamLog

    return RedisStreamLog(client, partitions=sc.partitions, prefix=sc.topic)
