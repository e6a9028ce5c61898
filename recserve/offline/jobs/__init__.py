"""The offline chain, as functions the Ray jobs in `pipelines/` (and `recserve eval`) call, one
module per stage:

generate/import data -> train_embeddings (embeddings) -> build_index (index) -> train_ranker
(ranker) -> evaluate (evaluate)

Each publishes one registry version with metrics and lineage. The registry is checked for
writability before any work, and a failure at any point leaves `latest` where it was. What the
stages share is in `common` (progress, the training part of a dataset, lineage) and `training`
(the learners they run in Ray tasks).
"""

from recserve.offline.jobs.common import Progress, dataset_fingerprint, lineage, say, train_part
from recserve.offline.jobs.embeddings import train_embeddings
from recserve.offline.jobs.evaluate import METHODS, aligned_items, evaluate, markdown_table, serving_queries
from recserve.offline.jobs.index import build_index
from recserve.offline.jobs.ranker import train_ranker

__all__ = [
    "METHODS",
    "Progress",
    "aligned_items",
    "build_index",
    "dataset_fingerprint",
    "evaluate",
    "lineage",
    "markdown_table",
    "say",
    "serving_queries",
    "train_embeddings",
    "train_part",
    "train_ranker",
]
