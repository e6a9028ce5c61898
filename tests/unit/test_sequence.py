"""The sequence model learns an order: in a world where item i is always followed by item i + 1,
it puts the next item first."""

import numpy as np

from recserve.ranking.sequence import SequenceSettings, next_item_scores, sequences, train_sequence_model


def test_sequences_keep_the_last_items_left_padded():
    got = sequences([np.array([3, 4, 5]), np.array([], dtype=np.int64), np.arange(10)], 4)
    assert got.tolist() == [[0, 4, 5, 6], [0, 0, 0, 0], [7, 8, 9, 10]]


def test_the_model_learns_what_comes_next():
    rng = np.random.default_rng(0)
    n = 30
    users = [(rng.integers(0, n) + np.arange(rng.integers(5, 15))) % n for _ in range(200)]
    s = SequenceSettings(dim=32, max_len=8, blocks=1, epochs=60, batch_size=64, lr=3e-3, dropout=0.0)
    lines = []
    model = train_sequence_model(users, n, s, progress=lines.append)
    assert lines[-1]["loss"] < lines[0]["loss"] / 3
    probes = [np.array([(k + j) % n for j in range(4)]) for k in range(n)]
    scores = next_item_scores(model, sequences(probes, s.max_len))
    top = scores.argmax(axis=1)
    want = np.array([(p[-1] + 1) % n for p in probes])
    assert (top == want).mean() >= 0.9, (top, want)
