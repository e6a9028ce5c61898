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


def test_windows_cover_the_whole_history_overlapping_by_one():
    from recserve.ranking.sequence import windows

    got = windows([np.arange(7), np.array([4]), np.array([1, 2])], 4)
    # 0..6 -> [3,4,5,6], [0,1,2,3] (+1 each, left-padded); a single event has no next item
    assert got.tolist() == [[4, 5, 6, 7], [1, 2, 3, 4], [0, 0, 2, 3]]


def _trained(tmp_path, n=30):
    from recserve.ranking.sequence import SequenceScorer, save_sequence

    rng = np.random.default_rng(0)
    users = [(rng.integers(0, n) + np.arange(rng.integers(5, 15))) % n for _ in range(200)]
    s = SequenceSettings(dim=32, max_len=8, blocks=1, epochs=60, batch_size=64, lr=3e-3, dropout=0.0, negatives=8)
    save_sequence(train_sequence_model(users, n, s), s, tmp_path)
    return SequenceScorer.load(tmp_path, device="cpu")


def test_the_served_scorer_follows_the_latest_item_and_agrees_with_itself(tmp_path):
    """Saved and loaded as serving loads it (sampled softmax, 8 negatives of 30): a click on item 7
    makes item 8 the likeliest next; log-probabilities of some items equal the full row's."""
    from recserve.ranking.sequence import SequenceScorer

    sc = _trained(tmp_path)
    assert SequenceScorer.load(tmp_path / "nothing-here") is None
    states = sc.states([[3, 4, 5], [3, 4, 5, 6, 7], []])
    full = sc.log_probs(states)
    assert full[0].argmax() == 6 and full[1].argmax() == 8
    assert np.allclose(np.exp(full).sum(axis=1), 1.0, atol=1e-4)
    assert np.allclose(states[2], 0)
    some = np.array([8, 2, 29])
    assert np.allclose(sc.item_log_probs(states[1], sc.normaliser(states[1]), some), full[1, some], atol=1e-4)
    # another dense order: item i of the new order is the model's item 29 - i (and one unknown item)
    back = sc.remap(np.concatenate([np.arange(29, -1, -1), [-1]]))
    got = back.log_probs(back.states([[29 - 3, 29 - 4, 29 - 5, 29 - 6, 29 - 7, 30]]))[0]
    assert got[:30].argmax() == 29 - 8


def test_the_sequence_source_adds_its_items_after_the_index_ones():
    from recserve.ranking.sequence import top_unseen, with_sequence_candidates

    logp = np.log(np.array([[0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25]]))
    top = top_unseen(logp, [np.array([1]), np.array([0, 1, 2, 3])], 2)
    assert top.tolist() == [[2, 3], [-1, -1]]
    cand = np.array([[3, 0, -1], [1, -1, -1]])
    ids, sc = with_sequence_candidates(
        cand, np.array([[5.0, 4.0, 0.0], [2.0, 0.0, 0.0]]), top, np.array([[1.5, 9.0], [0.0, 0.0]])
    )
    assert ids.tolist() == [[3, 0, 2, -1, -1], [1, -1, -1, -1, -1]]
    assert sc[0, :3].tolist() == [5.0, 4.0, 1.5]


def test_no_history_to_learn_from_leaves_a_finite_untrained_model():
    lines = []
    model = train_sequence_model(
        [np.array([3]), np.array([], dtype=np.int64)],
        10,
        SequenceSettings(dim=8, max_len=4, blocks=1, epochs=3),
        progress=lines.append,
    )
    assert "nothing to learn" in lines[-1]["stopped"]
    assert np.isfinite(next_item_scores(model, sequences([np.array([3])], 4))).all()
