"""Serving state that does not grow with history: each user's state in the feature store (Redis),
the catalogue's in compact arrays of the generation.

An embeddings version carries, beside its vectors (recserve.artifacts):
  users/        each trained user's state as flat arrays (offsets + values): the last session items,
                the history the sequence model and the features read, the per-category counts of
                every event, the last event time, the event count, the items seen in training
  serving/      the item side a replica holds: popularity, events per item and day over the last
                four trending windows of the data and each item's last event time (what the
                trending and recency features read from the data's end on), the co-visitation
                matrix cut to each item's top neighbours, categories, titles, and the scalars (the
                data's last time, the fold-in's target score, a known user)

The step that publishes the embeddings writes its users into Redis (`publish_users`), keyed by the
version's features id (`fs:<fid>:u:<user>`, recserve.keys): a replica serving that version reads
only those keys, so a generation's swap is one pointer and the old version's keys are deleted
after (`prune`). A replica that finds its version's users missing (a new Redis, a flushed one)
writes them itself from the artifact first (`ensure_users`, one writer at a time).

A request fetches its user's state and live context in one round trip (MGET); a bounded LRU in the
replica keeps recent users' decoded states (the seed's L4). Offline jobs compute the same state with
the same functions (`user_states` over recserve.ranking.ranker.ranking_inputs), so a user's features
agree both ways."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recserve import keys
from recserve.artifacts import embedding_array
from recserve.ranking.features import COVISIT_TOP, HeldItemStats, ItemStats, SessionContext

USERS_DIR = "users"
SERVING_DIR = "serving"
SERVING_META = "meta.json"
USER_ARRAYS = (
    "user_ids",
    "last_off",
    "last",
    "hist_off",
    "hist",
    "cats_off",
    "cats",
    "seen_off",
    "seen",
    "last_ts",
    "n_events",
)
ITEM_ARRAYS = (
    "popularity",
    "item_cat",
    "daily",
    "last",
    "covisit_indptr",
    "covisit_indices",
    "covisit_data",
)
MAGIC = 0x55530001  # "US", format 1
MAGIC_SEQ = 0x55530002  # format 2: format 1 and the sequence model's state after the history, with its normaliser
PUBLISH_CHUNK = 2000
STATE_FORMAT = 2  # what publish_users writes now: a version published in an older one is written again


# ----------------------------------------------------------------------------- one user's state
def _pairs(counts: dict[int, int]) -> np.ndarray:
    """{category: count} as int32 [c0, n0, c1, n1, ...], categories sorted."""
    return np.array([x for kv in sorted(counts.items()) for x in kv], dtype="<i4")


def _counts(pairs: np.ndarray) -> dict[int, int]:
    return {int(pairs[j]): int(pairs[j + 1]) for j in range(0, len(pairs), 2)}


@dataclass
class UserState:
    """What serving needs of one trained user (dense item indexes of the embeddings version)."""

    user_id: int
    vector: np.ndarray  # float32 [d + 1] = [u, 1]
    last: np.ndarray  # int32: the last session items, oldest first
    history: np.ndarray  # int32: the last HISTORY_LEN items, oldest first
    history_cats: dict[int, int]  # category -> events of the whole history
    last_ts: int
    n_events: int
    seen: np.ndarray  # int32: every item the user interacted with in training (sorted)
    query: np.ndarray | None = field(default=None, repr=False)  # the trained-context query, once computed
    # the sequence model's (state, normaliser) after `history`: written with the state when the version has
    # a sequence model (publish_users), else computed once by the replica that serves the user
    sequence: tuple | None = field(default=None, repr=False)
    # (the live history it was computed after, (state, normaliser)): the last live context's, in the replica only
    live_sequence: tuple | None = field(default=None, repr=False)

    def context(self, item_cat: np.ndarray) -> SessionContext:
        """The session context as the offline fold leaves it (recserve.ranking.features.session_context)."""
        last = [int(i) for i in self.last.tolist()]
        cats = [int(item_cat[i]) for i in last]
        return SessionContext(
            last_items=last,
            last_cats=cats,
            category_counts=dict(Counter(cats)),
            last_ts=int(self.last_ts),
            n_events=int(self.n_events),
            history=[int(i) for i in self.history.tolist()],
            history_cats=dict(self.history_cats),
        )

    def encode(self) -> bytes:
        """Format 1, or 2 with the sequence model's state (its dimension in a seventh head field, the
        state and its normaliser after the seen items)."""
        cats = _pairs(self.history_cats)
        seq = self.sequence
        head = [len(self.vector), len(self.last), len(self.history), len(cats) // 2, len(self.seen)]
        head = [MAGIC, *head] if seq is None else [MAGIC_SEQ, *head, len(seq[0])]
        parts = [
            np.array(head, dtype="<i4").tobytes(),
            np.array([self.user_id, self.last_ts, self.n_events], dtype="<i8").tobytes(),
            np.asarray(self.vector, dtype="<f4").tobytes(),
            np.asarray(self.last, dtype="<i4").tobytes(),
            np.asarray(self.history, dtype="<i4").tobytes(),
            cats.tobytes(),
            np.asarray(self.seen, dtype="<i4").tobytes(),
        ]
        if seq is not None:
            parts += [np.asarray(seq[0], dtype="<f4").tobytes(), np.array([seq[1]], dtype="<f8").tobytes()]
        return b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> UserState:
        magic = int(np.frombuffer(raw, dtype="<i4", count=1)[0])
        if magic not in (MAGIC, MAGIC_SEQ):
            raise ValueError("not a recserve user state (format 1 or 2)")
        n_head = 6 if magic == MAGIC else 7
        head = np.frombuffer(raw, dtype="<i4", count=n_head)
        dim, n_last, n_hist, n_cats, n_seen = (int(x) for x in head[1:6])
        off = 4 * n_head
        uid, last_ts, n_events = (int(x) for x in np.frombuffer(raw, dtype="<i8", count=3, offset=off))
        off += 24
        vec = np.frombuffer(raw, dtype="<f4", count=dim, offset=off).astype(np.float32)
        off += 4 * dim
        ints = np.frombuffer(raw, dtype="<i4", offset=off)
        a, b, c = n_last, n_last + n_hist, n_last + n_hist + 2 * n_cats
        state = cls(
            uid,
            vec,
            ints[:a].copy(),
            ints[a:b].copy(),
            _counts(ints[b:c]),
            last_ts,
            n_events,
            ints[c : c + n_seen].copy(),
        )
        if magic == MAGIC_SEQ:
            n_seq = int(head[6])
            off += 4 * (n_last + n_hist + 2 * n_cats + n_seen)
            seq = np.frombuffer(raw, dtype="<f4", count=n_seq, offset=off).astype(np.float32)
            norm = float(np.frombuffer(raw, dtype="<f8", count=1, offset=off + 4 * n_seq)[0])
            state.sequence = (seq, norm)
        return state


# ----------------------------------------------------------------------------- offline: build
def user_states(inputs, user_vectors: np.ndarray, session_len: int):
    """Every trained user's state from the offline ranking inputs (recserve.ranking.ranker.RankingInputs)
    and the embeddings' user vectors, as UserState objects in dense user order."""
    data = inputs.data
    m = data.matrix
    for u in range(data.n_users):
        ctx = inputs.contexts[u]
        yield UserState(
            int(data.user_ids[u]),
            np.asarray(user_vectors[u], dtype=np.float32),
            np.asarray(ctx.last_items[-session_len:], dtype=np.int32),
            np.asarray(ctx.history, dtype=np.int32),
            dict(ctx.history_cats),
            int(ctx.last_ts),
            int(ctx.n_events),
            np.sort(m.indices[m.indptr[u] : m.indptr[u + 1]]).astype(np.int32),
        )


def _flat(parts: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(parts) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(p) for p in parts])
    vals = np.concatenate(parts).astype(dtype) if parts and off[-1] else np.zeros(0, dtype)
    return off, vals


def save_users(out_dir: str | Path, states) -> int:
    """The users' states as flat arrays under `out_dir/users` (memory-mapped when read back)."""
    states = list(states)
    d = Path(out_dir) / USERS_DIR
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"user_ids": np.array([s.user_id for s in states], dtype=np.int64)}
    arrays["last_off"], arrays["last"] = _flat([s.last for s in states], np.int32)
    arrays["hist_off"], arrays["hist"] = _flat([s.history for s in states], np.int32)
    arrays["cats_off"], arrays["cats"] = _flat([_pairs(s.history_cats) for s in states], np.int32)
    arrays["seen_off"], arrays["seen"] = _flat([s.seen for s in states], np.int32)
    arrays["last_ts"] = np.array([s.last_ts for s in states], dtype=np.int64)
    arrays["n_events"] = np.array([s.n_events for s in states], dtype=np.int64)
    for name in USER_ARRAYS:
        np.save(d / f"{name}.npy", arrays[name])
    return len(states)


def iter_saved_users(emb_dir: str | Path, user_vectors: np.ndarray | None = None, chunk: int = PUBLISH_CHUNK):
    """The states saved under `emb_dir/users`, a chunk (a list) at a time, read memory-mapped."""
    d = Path(emb_dir) / USERS_DIR
    a = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in USER_ARRAYS}
    own = d / "vectors.npy"  # a state built outside the version (serving_files) keeps its vectors beside it
    vecs = (
        user_vectors
        if user_vectors is not None
        else (np.load(own, mmap_mode="r") if own.exists() else embedding_array(emb_dir, "user_vectors", mmap=True))
    )
    n = len(a["user_ids"])
    for lo in range(0, n, chunk):
        out = []
        for u in range(lo, min(n, lo + chunk)):

            def part(name: str, u: int = u) -> np.ndarray:
                off = a[f"{name}_off"]
                return np.asarray(a[name][off[u] : off[u + 1]])

            out.append(
                UserState(
                    int(a["user_ids"][u]),
                    np.asarray(vecs[u], dtype=np.float32),
                    part("last"),
                    part("hist"),
                    _counts(part("cats")),
                    int(a["last_ts"][u]),
                    int(a["n_events"][u]),
                    part("seen"),
                )
            )
        yield out


def has_users(emb_dir: str | Path) -> bool:
    return (Path(emb_dir) / USERS_DIR / "user_ids.npy").exists() and (
        Path(emb_dir) / SERVING_DIR / SERVING_META
    ).exists()


# ----------------------------------------------------------------------------- the item side
@dataclass
class ServingItems:
    """The item side a replica holds (sized by the catalogue): ItemStats for the features, the
    categories and titles, and the scalars of the data."""

    stats: ItemStats
    category: np.ndarray  # str per item
    title: np.ndarray  # str per item
    t_data: int
    target_score: float
    some_user: int
    fid: str
    n_users: int


def save_serving(
    out_dir: str | Path,
    stats: ItemStats,
    category: list[str],
    title: list[str],
    t_data: int,
    target_score: float,
    some_user: int,
    n_users: int,
    window_s: int,
) -> str:
    """The item side under `out_dir/serving`; returns the version's features id (its Redis keys)."""
    d = Path(out_dir) / SERVING_DIR
    d.mkdir(parents=True, exist_ok=True)
    held = stats.for_serving(t_data, window_s)
    cv = stats.covisit.tocsr()  # cut to COVISIT_TOP neighbours by build_item_stats (recserve.ranking.features)
    arrays = {
        "popularity": np.asarray(stats.popularity, np.float32),
        "item_cat": np.asarray(stats.item_cat),
        "daily": held.daily,
        "last": held.last,
        "covisit_indptr": cv.indptr.astype(np.int64),
        "covisit_indices": cv.indices.astype(np.int32),
        "covisit_data": cv.data.astype(np.float32),
    }
    for name in ITEM_ARRAYS:
        np.save(d / f"{name}.npy", arrays[name])
    np.save(d / "unit_vectors.npy", np.asarray(stats.unit_vectors, np.float32))
    fid = uuid.uuid4().hex[:16]
    (d / "catalogue.json").write_text(json.dumps({"category": list(category), "title": list(title)}))
    (d / SERVING_META).write_text(
        json.dumps(
            {
                "fid": fid,
                "t_data": int(t_data),
                "target_score": float(target_score),
                "some_user": int(some_user),
                "n_users": int(n_users),
                "covisit_top": COVISIT_TOP,
                "trending_window_s": int(window_s),
                "day0": held.day0,
            }
        )
    )
    return fid


def load_serving(emb_dir: str | Path) -> ServingItems:
    d = Path(emb_dir) / SERVING_DIR
    meta = json.loads((d / SERVING_META).read_text())
    a = {name: np.load(d / f"{name}.npy") for name in ITEM_ARRAYS}
    n = len(a["popularity"])
    cv = sp.csr_matrix((a["covisit_data"], a["covisit_indices"], a["covisit_indptr"]), shape=(n, n))
    stats = HeldItemStats.held(
        a["popularity"], a["item_cat"], np.load(d / "unit_vectors.npy"), cv, int(meta["day0"]), a["daily"], a["last"]
    )
    cat = json.loads((d / "catalogue.json").read_text())
    return ServingItems(
        stats,
        np.array(cat["category"], dtype=object),
        np.array(cat["title"], dtype=object),
        int(meta["t_data"]),
        float(meta["target_score"]),
        int(meta["some_user"]),
        str(meta["fid"]),
        int(meta["n_users"]),
    )


def serving_fid(emb_dir: str | Path) -> str | None:
    p = Path(emb_dir) / SERVING_DIR / SERVING_META
    return json.loads(p.read_text())["fid"] if p.exists() else None


# ----------------------------------------------------------------------------- Redis
def with_sequence_states(states: list[UserState], scorer) -> None:
    """Each state's sequence model (state, normaliser) after its history, in one forward pass for the
    list: what a replica would compute for the user's first request, computed once when the version
    is published (the transformer's forward was the largest share of an ingress's CPU)."""
    if scorer is None or not states:
        return
    seqs = scorer.states([s.history for s in states])
    for s, v in zip(states, seqs):
        s.sequence = (v, scorer.normaliser(v))


def publish_users(
    r, fid: str, emb_dir: str | Path, *, source: dict | None = None, log=None, sequence: Any = "load"
) -> dict:
    """Write an embeddings version's users into Redis (pipelined, PUBLISH_CHUNK per round trip),
    leaving out the users forgotten since (recserve.privacy), then mark the version ready. With the
    version's sequence model (`sequence`: a SequenceScorer, None, or "load" it from `emb_dir`), each
    state carries the model's state after its history (format 2)."""
    t0 = time.perf_counter()
    if isinstance(sequence, str):
        from recserve.ranking.sequence import SequenceScorer

        sequence = SequenceScorer.load(emb_dir, device="cpu")
    gone = {int(u) for u in r.hkeys(keys.FORGOTTEN)}
    n = nbytes = 0
    r.hset(keys.FEATURE_IDS, fid, json.dumps({**(source or {}), "at": time.time(), "state": "writing"}))
    for chunk in iter_saved_users(emb_dir):
        chunk = [s for s in chunk if s.user_id not in gone]
        with_sequence_states(chunk, sequence)
        pipe = r.pipeline(transaction=False)
        for s in chunk:
            raw = s.encode()
            pipe.set(keys.user_state(fid, s.user_id), raw)
            n += 1
            nbytes += len(raw)
        pipe.execute()
        if log is not None and n and n % (PUBLISH_CHUNK * 50) < PUBLISH_CHUNK:
            log(f"feature store: {n} users written")
    ready = {
        "users": n,
        "bytes": nbytes,
        "at": time.time(),
        "seconds": round(time.perf_counter() - t0, 2),
        "format": STATE_FORMAT,
        "sequence": sequence is not None,
    }
    r.set(keys.user_states_ready(fid), json.dumps(ready))
    r.hset(keys.FEATURE_IDS, fid, json.dumps({**(source or {}), **ready, "state": "ready"}))
    return ready


def ready(r, fid: str) -> dict | None:
    raw = r.get(keys.user_states_ready(fid))
    return json.loads(raw) if raw else None


def ensure_users(
    r,
    fid: str,
    emb_dir: str | Path,
    *,
    source: dict | None = None,
    timeout_s: float = 600.0,
    log=None,
    sequence: Any = "load",
):
    """The version's users in Redis: written here when missing or written in an older format (one
    writer: the others wait for it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = ready(r, fid)
        if got is not None and int(got.get("format", 1)) >= STATE_FORMAT:
            return got
        if r.set(keys.user_states_lock(fid), "1", nx=True, ex=120):
            try:
                return publish_users(r, fid, emb_dir, source=source, log=log, sequence=sequence)
            finally:
                r.delete(keys.user_states_lock(fid))
        if time.monotonic() > deadline:
            raise TimeoutError(f"the feature store's users of {fid} were not written within {timeout_s:.0f} s")
        time.sleep(0.5)


def drop_users(r, fid: str) -> int:
    """Delete a version's users (UNLINK by SCAN, in pages)."""
    n = 0
    r.delete(keys.user_states_ready(fid))
    batch: list = []
    for k in r.scan_iter(match=keys.user_state(fid, 0)[: -len("0")] + "*", count=5000):
        batch.append(k)
        if len(batch) >= 5000:
            n += int(r.unlink(*batch))
            batch = []
    if batch:
        n += int(r.unlink(*batch))
    r.hdel(keys.FEATURE_IDS, fid)
    return n


def prune(r, registry_uri: str, keep_versions: set[str]) -> list[str]:
    """Delete the users of this registry's embeddings versions not in `keep_versions` (the ones a
    generation, the latest pointer or the newest versions still serve); other registries' stay."""
    gone = []
    for fid, raw in r.hgetall(keys.FEATURE_IDS).items():
        fid = fid.decode() if isinstance(fid, bytes) else fid
        info = json.loads(raw)
        if info.get("registry") == registry_uri and info.get("embeddings") not in keep_versions:
            drop_users(r, fid)
            gone.append(fid)
    return gone


def kept_versions(reg, newest: int = 2) -> set[str]:
    """The embeddings versions whose users stay in the feature store: those of the generations that
    may serve (candidate, canary, serving), the latest pointer's, and the `newest` versions."""
    from recserve.generations import protected

    keep = set(protected(reg).get("embeddings", set()))
    latest = reg.latest("embeddings")
    if latest:
        keep.add(latest)
    keep.update(reg.versions("embeddings")[-newest:])
    return keep


def publish_version(cfg, reg, version: str, log=None) -> dict | None:
    """An embeddings version's users into the feature store, and the users of versions nothing
    serves any more out of it (what the embeddings job does after publishing). Redis away: None,
    said in the log; the first replica that loads the version writes them."""
    import redis

    from recserve.redis_client import connect

    emb_dir = reg.fetch("embeddings", version)
    fid = serving_fid(emb_dir)
    if fid is None:
        return None
    try:
        r = connect(cfg.redis_url, timeout=30)
        out = ensure_users(r, fid, emb_dir, source={"registry": reg.uri, "embeddings": version}, log=log)
        gone = prune(r, reg.uri, kept_versions(reg) | {version})
    except (redis.RedisError, OSError) as e:
        if log is not None:
            log(
                f"the feature store did not take the users ({type(e).__name__}: {e}); a replica writes them when it loads {version}"
            )
        return None
    if log is not None:
        log(
            f"feature store: {out['users']} users of {version} written ({out['bytes'] / max(out['users'], 1):.0f} B each)"
            + (f", {len(gone)} older versions' deleted" if gone else "")
        )
    return {**out, "pruned": gone}


def forget_user(r, user_id: int) -> int:
    """Delete a user's state from every version's feature store."""
    fids = [f.decode() if isinstance(f, bytes) else f for f in r.hkeys(keys.FEATURE_IDS)]
    return int(r.delete(*[keys.user_state(f, user_id) for f in fids])) if fids else 0


class UserLRU:
    """Recent users' decoded states in a replica (bounded: the seed's L4)."""

    def __init__(self, size: int):
        self.size = int(size)
        self._d: OrderedDict[int, UserState] = OrderedDict()

    def get(self, user_id: int) -> UserState | None:
        s = self._d.get(user_id)
        if s is not None:
            self._d.move_to_end(user_id)
        return s

    def put(self, s: UserState) -> None:
        self._d[s.user_id] = s
        self._d.move_to_end(s.user_id)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def drop(self, user_id: int) -> None:
        self._d.pop(int(user_id), None)

    def __len__(self) -> int:
        return len(self._d)


# ----------------------------------------------------------------------------- build and find
def write_serving_state(
    out_dir: str | Path,
    cfg,
    events,
    items,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    data=None,
) -> str:
    """An embeddings version's users/ and serving/ arrays from the events it was trained on (what
    the embeddings job writes beside the vectors); returns the features id. `data`: the
    interactions already built over exactly these events (recserve.ranking.interactions), if any."""
    from recserve.ranking.content import mean_pair_score
    from recserve.ranking.interactions import build_interactions
    from recserve.ranking.ranker import ranking_inputs

    data = data if data is not None else build_interactions(events, events.iloc[:0], items)
    if not (np.array_equal(data.item_ids, item_ids) and np.array_equal(data.user_ids, user_ids)):
        raise ValueError(
            "the embeddings were not trained on all of these events (holdout?): serve a version trained with --holdout 0"
        )
    inputs = ranking_inputs(data, items, item_vectors, cfg.ranker)
    n = save_users(out_dir, user_states(inputs, user_vectors, cfg.ranker.session_len))
    by_id = items.set_index("item_id")
    m = data.matrix.tocoo()
    return save_serving(
        out_dir,
        inputs.stats,
        by_id["category"].reindex(item_ids).fillna("").astype(str).tolist(),
        by_id["title"].reindex(item_ids).fillna("").astype(str).tolist(),
        t_data=int(events["ts"].max()),
        target_score=mean_pair_score(user_vectors, item_vectors, m.row, m.col),
        some_user=int(user_ids[0]),
        n_users=n,
        window_s=int(cfg.ranker.trending_window_s),
    )


def serving_files(cfg, registry, version: str) -> Path:
    """Where an embeddings version's users/ and serving/ arrays are: in the version itself (written by
    the embeddings job), else, for a version trained before they existed, built once from its
    dataset into the data directory."""
    emb_dir = registry.fetch("embeddings", version)
    if has_users(emb_dir):
        return emb_dir
    import hashlib

    from recserve.artifacts import load_embeddings, read_events, read_items, trained_on
    from recserve.privacy import drop_forgotten

    tag = hashlib.sha256(registry.uri.encode()).hexdigest()[:12]
    out = Path(cfg.data_dir) / "serving-state" / f"{tag}-{version}"
    if has_users(out):
        return out
    emb = load_embeddings(registry, version)
    dataset = trained_on(registry, version)
    events, items = read_events(dataset), read_items(dataset)
    lineage = registry.manifest("embeddings", version)["lineage"]
    gone = {int(u): float(t) for u, t in (lineage.get("forgotten") or {}).items()}
    events = drop_forgotten(events, gone).reset_index(drop=True) if gone else events
    tmp = out.with_name(out.name + f".tmp-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    write_serving_state(
        tmp, cfg, events, items, emb["user_ids"], emb["item_ids"], emb["user_vectors"], emb["item_vectors"]
    )
    np.save(tmp / USERS_DIR / "vectors.npy", emb["user_vectors"])
    import shutil

    try:
        tmp.rename(out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
