"""`VectorShard`: a Ray actor holding one replica of one index shard. The body is
`recserve.index.replica.ShardReplica`: at start (also after Ray restarts it, `max_restarts`) it
loads its latest good snapshot (or the build_index artifact, or nothing), then replays the shard's
write-ahead log past the snapshot's sequence, so every acknowledged write is back before it
answers a query. The wiring hands this class to `recserve.index.client.IndexClient`."""

import ray

from recserve.index.replica import ShardReplica

VectorShard = ray.remote(ShardReplica)
