"""The item-content encoder: a new item with only a title, a category and attributes gets a vector
near the trained items whose content it shares."""

import numpy as np

from recserve.ranking.content import ContentEncoder, content_features


def _catalogue(n=300, d=8, seed=0):
    rng = np.random.default_rng(seed)
    cats = ["garden", "kitchen", "games"]
    centres = rng.normal(size=(3, d + 1)) * 3
    c = rng.integers(0, 3, size=n)
    vectors = centres[c] + rng.normal(size=(n, d + 1)) * 0.5
    titles = [f"{['green', 'steel', 'pixel'][k]} {['pro', 'mini', 'max'][j % 3]} {j}" for j, k in enumerate(c)]
    attrs = [{"brand": f"b{k}", "tags": ["x", f"t{k}"]} for k in c]
    return [cats[k] for k in c], titles, attrs, vectors, centres


def test_content_features():
    assert content_features("Toy Story (1995)", "Animation", {"genres": ["Kids", "Comedy"], "year": 1995}) == [
        "c:animation",
        "w:toy",
        "w:story",
        "w:1995",
        "a:genres=kids",
        "a:genres=comedy",
        "a:year=1995",
    ]
    assert content_features("", "", '{"brand": "b1"}') == ["a:brand=b1"]
    assert content_features("a", "", "{not json") == []


def test_a_new_item_lands_near_the_items_it_shares_content_with(tmp_path):
    cats, titles, attrs, vectors, centres = _catalogue()
    enc = ContentEncoder.fit(titles, cats, attrs, vectors)
    for k, (cat, word) in enumerate((("garden", "green"), ("kitchen", "steel"), ("games", "pixel"))):
        v = enc.encode(f"{word} deluxe", cat, {"brand": f"b{k}"})
        assert v.shape == (vectors.shape[1],) and v.dtype == np.float32
        assert int(np.argmin(np.linalg.norm(centres - v, axis=1))) == k
    # only the title known: still placed by it
    v = enc.encode("steel thing", "a category never seen", {})
    assert int(np.argmin(np.linalg.norm(centres - v, axis=1))) == 1
    assert enc.encode("zzz qqq", "never seen", {"colour": "ultraviolet"}) is None  # nothing known: refused
    enc.save(tmp_path)
    again = ContentEncoder.load(tmp_path)
    assert np.allclose(again.encode("green deluxe", "garden", {}), enc.encode("green deluxe", "garden", {}))
    assert ContentEncoder.load(tmp_path / "nowhere") is None


def test_fold_in_and_the_blended_query():
    from recserve.ranking.content import fold_in, session_blend

    v = np.array([[1.0, 2.0, 0.5, 0.0]] * 3)  # three copies of one item: [v, b=0]
    u = fold_in(v, 0.7, 3.0)
    assert u.shape == (4,) and u[-1] == 1.0
    assert np.allclose(u[:-1] / np.linalg.norm(u[:-1]), v[0, :-1] / np.linalg.norm(v[0, :-1]), atol=1e-6)
    assert 2.0 < float(u[:-1] @ v[0, :-1]) <= 3.0  # aimed at the target, shrunk by the ridge
    # newer items weigh more: the last of two different items scores higher
    two = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    w = fold_in(two, 0.5, 1.0)
    assert w[1] > w[0]
    user = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    assert np.allclose(session_blend(user, v, 0.7, 3.0, 0.0), user)
    assert np.allclose(session_blend(user, v, 0.7, 3.0, 1.0), u, atol=1e-6)
    assert np.allclose(session_blend(user, v[:0], 0.7, 3.0, 0.7), user)  # no recent items: the user vector
