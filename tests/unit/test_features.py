"""Pieces of the ranker's candidate features (recserve.ranking.features) that serving and training share."""

from __future__ import annotations

import numpy as np

from recserve.ranking.features import counts_of


def test_counts_of_looks_up_each_category_with_zero_where_absent():
    cats = np.array([3, 0, 7, 3, 12, 5])
    got = counts_of({7: 2, 3: 5, 5: 1}, cats)
    assert got.dtype == np.float32 and got.tolist() == [5.0, 0.0, 2.0, 5.0, 0.0, 1.0]
    assert counts_of({}, cats).tolist() == [0.0] * 6
    assert counts_of({1: 4}, np.array([], np.int64)).tolist() == []
